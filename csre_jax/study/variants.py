"""The variants a study compares: each a name and config overrides of the study's config.

Named: 'baseline' (the backbone alone, no banks), 'csre' (the config as it is: the official
CSRE), the paper's contrast strategies by their banks ('spatial', 'temporal', 'global',
'spatial+temporal', 'spatial+temporal+global'), its sampling cells ('pos_<mode>_neg_<mode>'
with modes hard, random, hard+random) and temperatures ('t0.5', 't0.8', 't1.0'). Any other as
'name:key=value,key=value', e.g. 'light:csre.weight=0.5,csre.temperature=1.0'.
"""

import dataclasses
import re

from ml_collections import ConfigDict

from csre_jax.csre.loss import SAMPLING_MODES
from csre_jax.study import StudyError

STRATEGIES = ("spatial", "temporal", "global", "spatial+temporal", "spatial+temporal+global")
TEMPERATURES = (0.5, 0.8, 1.0)
NAMED: dict[str, dict[str, object]] = {
    "baseline": {"csre.banks": "none"},
    "csre": {},
    **{strategy: {"csre.banks": strategy} for strategy in STRATEGIES},
    **{
        f"pos_{pos}_neg_{neg}": {"csre.positive_sampling": pos, "csre.negative_sampling": neg}
        for pos in SAMPLING_MODES
        for neg in SAMPLING_MODES
    },
    **{f"t{t}": {"csre.temperature": t} for t in TEMPERATURES},
}
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


class VariantError(StudyError):
    """A --variants entry that cannot be built; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, object]

    def apply(self, config: ConfigDict) -> ConfigDict:
        """A copy of `config` with this variant's overrides."""
        config = ConfigDict(config.to_dict())
        config.update_from_flattened_dict(self.overrides)
        return config


def _field(config: ConfigDict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, ConfigDict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _typed(value: str, current, where: str):
    """`value` as the type of the field it replaces."""
    if isinstance(current, bool):
        if value.lower() not in ("true", "false"):
            raise VariantError(f"{where}: {value!r} is not true or false")
        return value.lower() == "true"
    if isinstance(current, int | float | str):
        try:
            return type(current)(value)
        except ValueError:
            raise VariantError(f"{where}: {value!r} is not a {type(current).__name__}") from None
    raise VariantError(
        f"{where}: a variant sets numbers, strings and booleans; set this field in the config"
    )


def _custom(spec: str, config: ConfigDict) -> Variant:
    name, _, assignments = spec.partition(":")
    overrides = {}
    for assignment in filter(None, assignments.split(",")):
        key, equals, value = assignment.partition("=")
        where = f"--variants: {name}:{key}"
        if not equals:
            raise VariantError(f"{where}: write each override as key=value")
        try:
            current = _field(config, key)
        except KeyError:
            raise VariantError(
                f"{where}: the config has no field {key!r}; name a field of the study's "
                "config, e.g. csre.temperature"
            ) from None
        overrides[key] = _typed(value, current, f"{where}={value}")
    if not overrides:
        raise VariantError(f"--variants: {name}: give its overrides as {name}:key=value,...")
    return Variant(name, overrides)


def parse_variants(entries: list[str], config: ConfigDict) -> list[Variant]:
    """--variants as split at its commas: named variants, and 'name:key=value' entries whose
    further key=value items follow them as entries of their own."""
    specs: list[str] = []
    for entry in entries:
        if "=" in entry and ":" not in entry and specs and ":" in specs[-1]:
            specs[-1] += f",{entry}"  # another override of the custom variant before it
        else:
            specs.append(entry)
    variants = []
    for spec in specs:
        if ":" in spec:
            variants.append(_custom(spec, config))
        elif spec in NAMED:
            variants.append(Variant(spec, dict(NAMED[spec])))
        else:
            raise VariantError(
                f"--variants: unknown variant {spec!r}; name one of {', '.join(NAMED)}, or "
                "give your own as name:key=value,key=value"
            )
    names = [v.name for v in variants]
    bad = [n for n in names if not _NAME.match(n)]
    if bad:
        raise VariantError(
            f"--variants: {bad[0]!r} cannot name a folder: use letters, digits, _.+-"
        )
    if len(set(names)) != len(names):
        raise VariantError(
            f"--variants: {sorted(n for n in names if names.count(n) > 1)[0]!r} twice"
        )
    return variants
