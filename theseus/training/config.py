"""The `training` settings: what to train on, for how long, with which batch."""

from __future__ import annotations

from dataclasses import dataclass

from theseus.config import field
from theseus.data.loader import DatasetMix, check_rates
from theseus.data.store import check_store_name
from theseus.errors import UserError


@dataclass
class BaseTrainerConfig:
    """What to train on, for how long, with which batch; the seed; failure policies."""

    dataset: list[DatasetMix] = field(
        "training/dataset",
        default_factory=lambda: [DatasetMix("fineweb")],
        help="token stores under OUT/data to train on, each with a sampling rate",
    )
    steps: int = field(
        "training/steps",
        minimum=1,
        default=5000,
        help="optimizer steps (ignored when training.tokens is set)",
    )
    stop_at: int | None = field(
        "training/stop_at",
        minimum=1,
        default=None,
        help="stop at this step as a preemption does (checkpoint saved, the schedule still over "
        "all the steps), with exit code 0; run again without it, or with a later one, to go on",
    )
    tokens: int | None = field(
        "training/tokens",
        minimum=1,
        default=None,
        help="token budget; sets the step count when given",
    )
    batch_size: int = field(
        "training/batch_size",
        minimum=1,
        default=512,
        help="global batch in sequences per optimizer step",
    )
    per_device_batch_size: int | None = field(
        "training/per_device_batch_size",
        minimum=1,
        default=None,
        help="sequences per device per micro-batch (null = the most that fits; gradient accumulation covers the rest)",
    )
    seq_len: int | None = field(
        "training/seq_len",
        minimum=1,
        default=None,
        help="training sequence length (null = a blockwise store's, else architecture.block_size, "
        "at most 2048 with architecture.init_from)",
    )
    seed: int = field(
        "training/seed",
        minimum=0,
        maximum=2**32 - 1,
        default=0,
        help="seed of initialization, data order and dropout (0 to 2**32 - 1)",
    )
    z_loss: float = field(
        "training/z_loss",
        minimum=0,
        default=0.0,
        help="weight of the z-loss (log-sum-exp squared); 0 = off",
    )
    reset_at_eot: bool = field(
        "training/reset_at_eot",
        default=False,
        help="restart positions after each end-of-text token, with no loss on the token after it "
        "(attention still spans the whole row)",
    )
    on_nonfinite: str = field(
        "training/on_nonfinite",
        default="stop",
        choices=("stop", "skip"),
        help="a non-finite loss or gradient: stop the run naming the step, or skip that update",
    )
    overwrite: bool = field(
        "training/overwrite",
        default=False,
        help="with --fresh: move this run's existing checkpoints and logs aside (else --fresh refuses)",
    )
    compilation_cache: str | None = field(
        "training/compilation_cache",
        default="~/.cache/theseus/xla",
        help="folder of JAX's persistent compilation cache (a restarted run skips compiling); null = off",
    )
    restore_weights_only: bool = field(
        "training/restore_weights_only",
        default=False,
        help="with --restore: take only the weights (fresh optimizer, step 0) instead of the full state",
    )

    def check(self) -> None:
        """Rules on the dataset list (run with the config's validation, before any work)."""
        if not self.dataset:
            raise UserError(
                "training.dataset is empty; name a token store, e.g. [{name: pystdlib}]"
            )
        check_rates([mix.rate for mix in self.dataset])
        if self.stop_at is not None and self.tokens is None and self.stop_at >= self.steps:
            raise UserError(
                f"training.stop_at={self.stop_at} is not before the last step "
                f"(training.steps={self.steps}); lower it, or leave it unset"
            )
        for k, mix in enumerate(self.dataset):
            check_store_name(f"training.dataset.{k}.name", mix.name)
