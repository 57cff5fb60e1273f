"""The step loop: run the compiled step over the loader's batches, fetch metrics once per
logging interval, validate, checkpoint, evaluate, and stop on request."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from theseus.base.stopping import EXIT_STOPPED, StoppedEarly, StopSignals, wait_interruptibly
from theseus.data.loader import Loader
from theseus.errors import UserError
from theseus.parallel.distributed import gathered
from theseus.training.metrics import LoggingConfig, RunLog, summary_line
from theseus.training.mfu import MEASURED
from theseus.training.state import RunState


class TrainingLoop:
    """One pass from the run's current step to its plan's last; `run()` returns the figures
    of the last interval (plus validation and evaluation results)."""

    def __init__(
        self,
        *,
        step_fn: Any,
        eval_fn: Any,
        run: RunState,
        loader: Loader,
        to_device: Callable[[dict[str, np.ndarray], int | None], Any],
        learning_rates: np.ndarray,
        log: RunLog,
        logging: LoggingConfig,
        val_batches: list[dict[str, np.ndarray]],
        evaluate: Callable[[int], dict[str, float]] | None,
        eval_interval: int,
        flops_per_token: float,
        peak_flops: float,
        peak_source: str,
        steps_ahead: int | None,
        stop_at: int | None,
        skip_nonfinite: bool,
        z_loss: bool,
    ) -> None:
        self.step_fn, self.eval_fn, self.run_state, self.loader = step_fn, eval_fn, run, loader
        self.to_device, self.learning_rates = to_device, learning_rates
        self.log, self.logging = log, logging
        self.val_batches, self.evaluate, self.eval_interval = val_batches, evaluate, eval_interval
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.peak_source = peak_source
        self.peak_measured = peak_source == MEASURED  # here, in this process (CPU), not a datasheet
        # steps dispatched past the one the loop waits for (None: once per logging interval)
        self.steps_ahead, self.skip_nonfinite, self.z_loss = steps_ahead, skip_nonfinite, z_loss
        self.stop_at = stop_at  # training.stop_at: below the plan's last step
        self.pending: list[tuple[int, Any]] = []  # (step, metrics) not fetched from devices yet
        self.last_saved = run.step
        self.last: dict[str, Any] = {"step": run.step}
        self.validated: tuple[int, float] | None = None  # (step, val_loss) of the latest validation
        self._restart_interval()

    def _restart_interval(self) -> None:
        self.interval_start = time.perf_counter()

    @contextlib.contextmanager
    def _not_training(self) -> Iterator[None]:
        """Time spent validating or evaluating is left out of the interval's tokens/s; the
        steps already dispatched finish first, their time counted."""
        if self.pending:
            wait_interruptibly(self.pending[-1][1]["loss"].block_until_ready)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.interval_start += time.perf_counter() - started

    def run(self, stop: StopSignals) -> dict[str, Any]:
        s, logging = self.run_state, self.logging
        plan = s.plan
        loader = contextlib.closing(self.loader.iterate(s.step, prefetch=4))
        with loader as batches, self.log.progress(s.step, plan.steps):
            batch = self._to_device(batches)
            for step in range(s.step, plan.steps):
                leaves, metrics = self.step_fn(
                    s.state.leaves, batch, np.int32(step), self.learning_rates[step]
                )
                s.state.advance(leaves)
                if step + 1 < plan.steps:  # the next batch goes to the devices while this step runs
                    batch = self._to_device(batches)
                self.pending.append((step, metrics))
                if self.steps_ahead is not None and len(self.pending) > self.steps_ahead:
                    wait_interruptibly(
                        self.pending[-1 - self.steps_ahead][1]["loss"].block_until_ready
                    )
                s.step = done = step + 1
                if done % logging.interval == 0 or done == plan.steps:
                    self._flush()
                if self.val_batches and (done % logging.val_interval == 0 or done == plan.steps):
                    self._validate(done)
                evaluate_now = self._evaluations_due(done)
                if (done % logging.checkpoint_interval == 0 and done < plan.steps) or (
                    evaluate_now and self.last_saved != done
                ):  # before evaluating: a failing evaluation must not cost the weights
                    self._save(done)
                if evaluate_now:
                    with self._not_training():
                        self.last.update(self.evaluate(done))
                if done == self.stop_at:
                    self._flush()
                    self._stop(done, "training.stop_at", code=0)
                # a signal in the last step finds the run done: it ends as done, not stopped
                if done < plan.steps and self._stop_requested(stop):
                    self._flush()
                    self._stop(done, stop.signal_name or "a signal")
        before = len(s.checkpointer.failures)
        if self.last_saved != s.step:
            self._save(s.step)
        if not s.checkpointer.wait() or len(s.checkpointer.failures) > before:
            raise UserError(f"the final checkpoint was not written: {s.checkpointer.failures[-1]}")
        return self.last

    def _to_device(self, batches: Iterator[tuple[int, dict[str, np.ndarray]]]) -> Any:
        _, host_batch = next(batches)
        return self.to_device(host_batch, self.run_state.plan.accumulation)

    def _save(self, step: int) -> None:
        # logged up to the checkpoint: a resume from it rewrites the lines after it, and steps
        # between the last line and the checkpoint would otherwise be in none
        self._flush()  # and never checkpoint weights gone NaN
        self.run_state.save(step, self.log, self._val_loss_at(step))
        self.last_saved = step

    def _val_loss_at(self, step: int) -> float | None:
        """The validation loss of `step`, recorded with its checkpoint (logging.keep_best)."""
        if self.validated is None or self.validated[0] != step:
            return None
        return self.validated[1]

    def _validate(self, step: int) -> None:
        """Mean loss over the fixed validation batches."""
        total, count = 0.0, 0.0
        with self._not_training():
            for batch in self.val_batches:  # on the host: the set may exceed a step's batch
                loss, n = self.eval_fn(self.run_state.state.params, self.to_device(batch, None))
                total += float(loss)
                count += float(n)
        self.last["val_loss"] = total / max(count, 1.0)
        self.validated = (step, self.last["val_loss"])
        self.log.record({"step": step, "val_loss": self.last["val_loss"]})
        self.log.info(f"step {step}  val_loss {self.last['val_loss']:.4f}")

    def _evaluations_due(self, done: int) -> bool:
        every, total = self.eval_interval, self.run_state.plan.steps
        return self.evaluate is not None and (done == total or (every > 0 and done % every == 0))

    def _flush(self) -> None:
        """Fetch the interval's metrics, stop on a non-finite loss, and log the averages."""
        if not self.pending:
            return
        s, pending, log = self.run_state, self.pending, self.log
        wait_interruptibly(pending[-1][1]["loss"].block_until_ready)
        fetched = jax.device_get([m for _, m in pending])
        # steps run asynchronously: the interval ends when its last result is here, not dispatched
        elapsed = time.perf_counter() - self.interval_start
        self._refuse_nonfinite(fetched)
        for (step, _), m in zip(pending, fetched, strict=True):
            if not bool(m["finite"]):
                log.info(f"warning: non-finite loss or gradient at step {step + 1}; update skipped")
        finite = [m for m in fetched if bool(m["finite"])] or fetched
        tokens_per_s = len(pending) * s.plan.tokens_per_step / max(elapsed, 1e-9)
        flops_per_token = self.flops_per_token
        if self.peak_measured and tokens_per_s * flops_per_token > self.peak_flops:
            self._measure_peak_again()
        values = {
            "step": s.step,
            "loss": float(np.mean([m["loss"] for m in finite])),
            "lr": float(fetched[-1]["lr"]),
            "grad_norm": float(np.mean([m["grad_norm"] for m in finite])),
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / self.peak_flops if self.peak_flops else None,
            "tokens": s.tokens_trained(s.step),
        }
        if self.z_loss:
            values["z_loss"] = float(np.mean([m["z_loss"] for m in finite]))
        log.record(values)
        log.update(s.step, summary_line(values))
        self.last, self.pending = values, []
        self._restart_interval()

    def _measure_peak_again(self) -> None:
        """Training ran above the peak measured at start: the machine was busier then (a
        shared one). The peak is measured again, once, and the higher figure kept."""
        from theseus.training.mfu import measure_matmul_peak

        self.peak_measured = False
        before = self.peak_flops
        self.peak_flops = max(before, measure_matmul_peak() * jax.process_count())
        self.log.info(
            f"note: training ran above the CPU peak measured at start ({before / 1e12:.3f} "
            f"TFLOP/s, a busy moment); measured again: {self.peak_flops / 1e12:.3f} TFLOP/s"
        )

    def _refuse_nonfinite(self, fetched: list[Any]) -> None:
        """Stop the run at the first non-finite step of the pending ones (`fetched`: their
        metrics), unless training.on_nonfinite=skip (whose step left the weights as they were)."""
        s = self.run_state
        if self.skip_nonfinite:
            return
        for (step, _), m in zip(self.pending, fetched, strict=True):
            if bool(m["finite"]):
                continue
            s.checkpointer.wait()  # a checkpoint still being written counts
            latest = s.checkpointer.latest_step()
            raise UserError(
                f"loss became non-finite at step {step + 1} (loss {float(m['loss'])}, grad norm "
                f"{float(m['grad_norm'])}); last checkpoint: "
                f"{'none yet' if latest is None else f'step {latest}'}. Lower optimization.lr, "
                "or set training.on_nonfinite=skip"
            )

    def _stop_requested(self, stop: StopSignals) -> bool:
        """A signal reached this process, or (multi-process) any other: all stop together."""
        return bool(gathered(stop.signal_name is not None).any())

    def _stop(self, step: int, reason: str, code: int = EXIT_STOPPED) -> None:
        s = self.run_state
        before = len(s.checkpointer.failures)
        if self.last_saved != step:
            s.save(step, self.log, self._val_loss_at(step))
        if not s.checkpointer.wait() or len(s.checkpointer.failures) > before:
            raise UserError(
                f"stopped by {reason} at step {step}, but the checkpoint failed: "
                f"{s.checkpointer.failures[-1]}"
            )
        then = (
            f"run again to resume (exit code {EXIT_STOPPED})"
            if code == EXIT_STOPPED
            else f"run again without {reason} (or with a later one) to go on"
        )
        self.log.info(f"stopped by {reason} at step {step}; checkpoint saved; {then}")
        raise StoppedEarly(f"{reason} at step {step}", code)
