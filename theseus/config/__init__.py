"""Typed configuration: dataclass fields placed in one OmegaConf tree.

A component declares its settings as a dataclass whose fields say where they live::

    @dataclass
    class OptimizerConfig:
        lr: float = field("optimization/lr", default=3e-4, help="peak learning rate")

A job's schema is the union of its components (`Schema(*classes)` / `build(*classes)`); the tree is
an OmegaConf structured config, so assignments are type-checked and unknown keys are refused.
`KEY=VALUE` overrides are read by the type of the field they set. While a job runs,
`configuration(cfg)` makes the tree current and `configure(Cls)` reads a component's typed
dataclass out of it.
"""

from theseus.config.current import configuration, configure, current
from theseus.config.files import (
    atomic_output,
    atomic_write,
    read_yaml,
    require_output_folder,
    to_yaml,
    unwritable,
)
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
    field,
    missing_keys,
)

__all__ = [
    "MISSING",
    "Entry",
    "Override",
    "Schema",
    "apply_override",
    "apply_overrides",
    "atomic_output",
    "atomic_write",
    "build",
    "changed_settings",
    "check_complete",
    "check_values",
    "configuration",
    "configure",
    "current",
    "field",
    "flatten",
    "merge_values",
    "missing_keys",
    "read_yaml",
    "require_output_folder",
    "to_yaml",
    "unwritable",
]
