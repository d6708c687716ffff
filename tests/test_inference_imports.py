"""Prediction and evaluation stand without the training code: the predictor, every module of
csre_jax.evaluate, eval.py and predict.py import with csre_jax.training made unimportable,
so that reading them, or exporting and serving a model, never pulls in the train loop, the
optimizer or the banks."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Each in a fresh interpreter, and the scripts one per interpreter: both define --workdir.
IMPORTS = {
    "library": """
        import csre_jax.evaluate
        import csre_jax.predictor
        for module in pkgutil.iter_modules(csre_jax.evaluate.__path__, "csre_jax.evaluate."):
            importlib.import_module(module.name)
    """,
    # the predictor also stands without CSRE's head, banks and loss: serving needs none of them
    "predictor without csre": """
        sys.modules['csre_jax.csre'] = None
        import csre_jax.predictor
    """,
    "eval.py": "runpy.run_path('eval.py')",
    "predict.py": "runpy.run_path('predict.py')",
    "export.py": "runpy.run_path('export.py')",
}


@pytest.mark.parametrize("target", IMPORTS)
def test_imports_without_the_training_code(target):
    code = "import importlib, pkgutil, runpy, sys\n"
    code += "sys.modules['csre_jax.training'] = None  # importing it, even indirectly, fails\n"
    code += textwrap.dedent(IMPORTS[target])
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{target} needs csre_jax.training:\n{done.stderr[-3000:]}"
