"""The data package's imports run one way, as csre_jax/data/__init__.py draws them: every
module sits in one layer of LAYERS and imports only the layers LAYERS lists beneath it, at
module level, so no import waits inside a function to dodge a cycle."""

import ast
import graphlib
from pathlib import Path

from csre_jax import data

PACKAGE = "csre_jax.data"
FOLDER = Path(data.__file__).parent
MODULES = sorted(p.stem for p in FOLDER.glob("*.py") if p.stem != "__init__")
LAYER_OF = {module: layer for layer, modules, _ in data.LAYERS for module in modules}
MAY_IMPORT = {layer: set(beneath) for layer, _, beneath in data.LAYERS}


def data_imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported data module, line, at module level) for every import of `module` that names
    a module of the package, inside functions too."""
    tree = ast.parse((FOLDER / f"{module}.py").read_text(), filename=f"{module}.py")
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from .x import y
                base = f"{PACKAGE}.{base}".rstrip(".")
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name.startswith(f"{PACKAGE}.") and name.split(".")[2] in MODULES:
                found.append((name.split(".")[2], node.lineno, id(node) in top_level))
    return sorted(set(found))


def test_every_module_sits_in_exactly_one_layer():
    listed = [module for _, modules, _ in data.LAYERS for module in modules]
    assert sorted(listed) == MODULES


def test_layers_import_only_layers_beneath_them():
    seen = set()
    for layer, _, beneath in data.LAYERS:
        assert set(beneath) <= seen, f"layer {layer!r} may import a layer not beneath it"
        seen.add(layer)


def test_modules_import_only_from_the_layers_beneath_theirs():
    wrong = []
    for module in MODULES:
        layer = LAYER_OF[module]
        for imported, line, _ in data_imports(module):
            if LAYER_OF[imported] not in MAY_IMPORT[layer]:
                wrong.append(
                    f"{module}.py:{line} ({layer}) imports {imported} ({LAYER_OF[imported]})"
                )
    assert not wrong, "\n".join(wrong)


def test_data_imports_are_at_module_level():
    inside = [
        f"{module}.py:{line} imports {imported} inside a function or block"
        for module in MODULES
        for imported, line, top_level in data_imports(module)
        if not top_level
    ]
    assert not inside, "\n".join(inside)


def test_the_import_graph_has_no_cycle():
    graph = {module: {imported for imported, _, _ in data_imports(module)} for module in MODULES}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle
