"""Typed configuration: dataclass fields placed in one OmegaConf tree.

A component declares its settings as a dataclass whose fields say where they live::

    @dataclass
    class OptimizerConfig:
        lr: float = field("optimization/lr", default=3e-4, help="peak learning rate")

A job's schema is the union of its components (`Schema(*classes)` / `build(*classes)`); the tree is
an OmegaConf structured config, so assignments are type-checked and unknown keys are refused.
`KEY=VALUE` overrides are read by the type of the field they set, and `configure(Cls, cfg)`
reads a component's typed dataclass out of a tree.
"""

from theseus.config.overrides import (
    Override,
    apply_override,
    apply_overrides,
    changed_settings,
    flatten,
    merge_values,
)
from theseus.config.schema import (
    MISSING,
    Entry,
    Schema,
    build,
    check_complete,
    check_values,
    configure,
    field,
    missing_keys,
)
from theseus.config.yaml_files import read_yaml, to_yaml

__all__ = [
    "MISSING",
    "Entry",
    "Override",
    "Schema",
    "apply_override",
    "apply_overrides",
    "build",
    "changed_settings",
    "check_complete",
    "check_values",
    "configure",
    "field",
    "flatten",
    "merge_values",
    "missing_keys",
    "read_yaml",
    "to_yaml",
]
