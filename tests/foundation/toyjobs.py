"""Small jobs for the foundation tests, loaded with `--load` (they are not part of the package)."""

import json
from dataclasses import dataclass

from theseus.config import field
from theseus.errors import UserError
from theseus.job import BasicJob
from theseus.registry import job


@dataclass
class Mix:
    name: str = "pystdlib"
    rate: float = 1.0


@dataclass
class ToyConfig:
    per_device_batch_size: int = field(
        "training/per_device_batch_size", default=8, help="sequences per device", minimum=1
    )
    dataset: list[Mix] = field(
        "training/dataset", default_factory=lambda: [Mix()], help="data mixture"
    )
    checkpoint_interval: int = field(
        "logging/checkpoint_interval", default=100, help="steps between checkpoints"
    )
    lr: float = field("optimization/lr", default=3e-4, help="peak learning rate\nafter warm-up")
    tag: str = field("toy/tag", help="a required value")
    mode: str = field("toy/mode", default="fast", choices=["fast", "slow"], help="how to run")


@job("toy/echo")
class Echo(BasicJob[ToyConfig]):
    """Write the typed config it received to the run folder."""

    CONFIG = ToyConfig

    def run(self) -> dict:
        result = {
            "per_device_batch_size": self.config.per_device_batch_size,
            "dataset": [[m.name, m.rate] for m in self.config.dataset],
            "checkpoint_interval": self.config.checkpoint_interval,
            "lr": self.config.lr,
            "tag": self.config.tag,
            "mode": self.config.mode,
            "request": self.spec.request.as_dict(),
        }
        self.spec.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.spec.run_dir / "result.jsonl").open("a") as f:
            f.write(json.dumps(result) + "\n")
        return result


@dataclass
class FailConfig:
    tag: str = field("toy/tag", help="a required value")


@job("toy/fail")
class Fail(BasicJob[FailConfig]):
    """Always fail with a user error."""

    CONFIG = FailConfig

    def run(self) -> None:
        raise UserError(f"toy/fail was asked to fail ({self.config.tag})")
