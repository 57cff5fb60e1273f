"""The configuration of the running job, and typed components read out of it."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    MissingMandatoryValue,
)

from theseus.config.schema import FIELD_PATH
from theseus.errors import ConfigError

T = TypeVar("T")

_CURRENT: contextvars.ContextVar[DictConfig | None] = contextvars.ContextVar(
    "theseus_config", default=None
)


@contextlib.contextmanager
def configuration(cfg: DictConfig) -> Iterator[DictConfig]:
    """Make `cfg` the configuration `configure()` reads from, for the duration of the block."""
    token = _CURRENT.set(cfg)
    try:
        yield cfg
    finally:
        _CURRENT.reset(token)


def current() -> DictConfig:
    cfg = _CURRENT.get()
    if cfg is None:
        raise RuntimeError(
            "no active configuration: call configure() inside `with configuration(cfg):`"
        )
    return cfg


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_object(value)
    return value


def configure(component: type[T], cfg: DictConfig | None = None) -> T:
    """Read the typed dataclass `component` from `cfg` (default: the active configuration)."""
    cfg = current() if cfg is None else cfg
    values = {}
    for f in dataclasses.fields(component):  # type: ignore[arg-type]
        key = f.metadata[FIELD_PATH].strip("/").replace("/", ".")
        try:
            values[f.name] = _plain(OmegaConf.select(cfg, key, throw_on_missing=True))
        except MissingMandatoryValue:
            raise ConfigError(f"required config value missing: {key}") from None
    return component(**values)
