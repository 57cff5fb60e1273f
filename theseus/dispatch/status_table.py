"""`theseus status` for people: one aligned row per run (step/total, losses, speed, time left),
and the figures behind it, which the dashboard shows too.

`--json` keeps the older machine-readable lines (`json_line`): the run, its state, its host and
the raw last line of its `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from theseus.dispatch.backends import Observation
from theseus.dispatch.records import Record

# "NAME: 2000 steps x 8 seqs x 1024 tokens (...)": the line a trainer logs as it starts
_PLAN = re.compile(rb"(?:^|\n)[^\n]*?: (\d+) steps? x (\d+) seqs x (\d+) tokens ")
# the job log's step lines ("step 3  loss 0.3333  12,345 tok/s  MFU 1.2%"), where no metrics
# file can be read
# a SLURM job's log labels each line with its task's rank ("0: step 5  loss ...")
_LOG_STEP = re.compile(
    r"^(?:\d+: )?step (\d+)\s+loss (\S+)(?:\s+([\d,.]+) tok/s)?(?:\s+MFU ([\d.]+)%)?"
)

HEADER = ("name", "state", "host", "step", "loss", "val_loss", "tok/s", "MFU", "ETA", "")
RIGHT_ALIGNED = {"step", "loss", "val_loss", "tok/s", "MFU", "ETA"}


@dataclass(frozen=True)
class Plan:
    """What a trainer said it would do: its step count and the tokens of one step."""

    steps: int
    tokens_per_step: int


def parse_plan(text: str | bytes) -> Plan | None:
    """The last plan line in a log (a resumed run states its plan again)."""
    data = text.encode() if isinstance(text, str) else text
    found = list(_PLAN.finditer(data))
    if not found:
        return None
    steps, seqs, tokens = (int(g) for g in found[-1].groups())
    return Plan(steps, seqs * tokens)


def parse_line(line: str | bytes) -> dict[str, Any]:
    """A metrics.jsonl line as a dict; the job log's `step N  loss L ...` line as the same keys;
    {} for anything else."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict):
        return record
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    match = _LOG_STEP.match(text.strip())
    if match is None:
        return {}
    step, loss, speed, mfu = match.groups()
    found: dict[str, Any] = {"step": int(step), "loss": _number(loss)}
    if speed:
        found["tokens_per_s"] = float(speed.replace(",", ""))
    if mfu:
        found["mfu"] = float(mfu) / 100
    return found


@dataclass(frozen=True)
class Figures:
    """A run's latest figures, from its last training and validation lines and its plan."""

    step: int | None = None
    total: int | None = None
    loss: Any = None
    val_loss: Any = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    eta_s: float | None = None

    @classmethod
    def of(
        cls, train: dict[str, Any], val: dict[str, Any], plan: Plan | None, running: bool
    ) -> Figures:
        steps = [s for s in (train.get("step"), val.get("step")) if isinstance(s, int | float)]
        step = int(max(steps)) if steps else None
        speed = _number(train.get("tokens_per_s"))
        eta = None
        if running and plan is not None and step is not None and speed and speed > 0:
            eta = max(plan.steps - step, 0) * plan.tokens_per_step / speed
        return cls(
            step=step,
            total=plan.steps if plan else None,
            loss=train.get("loss"),
            val_loss=val.get("val_loss"),
            tokens_per_s=speed,
            mfu=_number(train.get("mfu")),
            eta_s=eta,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe: a non-finite loss is its text ("nan")."""
        return {k: _json_safe(v) for k, v in self.__dict__.items()}


def observed_figures(seen: Observation) -> Figures:
    """The figures of a submitted run from what `observe` read on its host."""
    train = parse_line(seen.train) if seen.train else {}
    val = parse_line(seen.val) if seen.val else {}
    if not train and not val:  # no metrics file here: the job log's step line
        last = parse_line(seen.metrics)
        train, val = (last, {}) if "loss" in last else ({}, last)
    plan = parse_plan(seen.plan) if seen.plan else None
    return Figures.of(train, val, plan, seen.state == "running")


def json_line(record: Record, seen: Observation) -> str:
    """The machine-readable line `theseus status --json` has always printed."""
    state = f"{seen.state} ({seen.detail})" if seen.detail else seen.state
    return f"{record.name}  {state}  {record.host_name} ({record.backend} {record.backend_id})  {seen.metrics}".rstrip()


def status_table(chosen: list[Record], seen: list[Observation]) -> str:
    """Aligned columns, one row per run; why a run failed or waits closes its row."""
    rows = [HEADER]
    for record, observation in zip(chosen, seen, strict=True):
        f = observed_figures(observation)
        rows.append(
            (
                record.name,
                observation.state,
                record.host_name,
                step_text(f.step, f.total),
                loss_text(f.loss),
                loss_text(f.val_loss),
                "-" if f.tokens_per_s is None else f"{f.tokens_per_s:,.0f}",
                "-" if f.mfu is None else f"{100 * f.mfu:.1f}%",
                duration_text(f.eta_s),
                observation.detail,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if name in RIGHT_ALIGNED else cell.ljust(width)
            for name, cell, width in zip(HEADER, row, widths, strict=True)
        ).rstrip()
        for row in rows
    )


def step_text(step: int | None, total: int | None) -> str:
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


def loss_text(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


def duration_text(seconds: float | None) -> str:
    """3h05m, 4m10s, 12s; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # "nan", "inf" as metrics.jsonl keeps them
        except ValueError:
            return None
    return None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
