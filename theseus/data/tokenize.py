"""The data jobs: tokenize a source into a token store, or train a tokenizer on one.

    theseus configure data/tokenize_variable_dataset tokenize.yaml data.name=pystdlib tokenizer.backend=bytes
    theseus run tokenize-stdlib tokenize.yaml ./output        # -> ./output/data/pystdlib/

Only light modules are imported here: configuring a data job never loads JAX, `datasets`,
`tokenizers` or tiktoken.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from theseus.config import field
from theseus.data.chat import CHOICES
from theseus.data.datasets.base import SourceConfig
from theseus.data.tokenizers import TokenizerConfig
from theseus.errors import UserError
from theseus.job import BasicJob, ExecutionSpec
from theseus.registry import job

if TYPE_CHECKING:
    from theseus.base.tasks import Task
    from theseus.data.encoding import TokenizePlan


@dataclass
class StoreConfig:
    """Where the store goes and what it holds."""

    store: str = field(
        "data/store", default="${data.name}", help="store name: written to OUT/data/<store>/"
    )
    max_tokens: int | None = field(
        "data/max_tokens", minimum=1, default=None, help="stop once this many tokens are written"
    )
    val_pct: float = field(
        "data/val_pct",
        minimum=0,
        below=100,
        default=1.0,
        help="percent of documents held out for validation (chosen by a hash of each document)",
    )
    shard_tokens: int = field(
        "data/shard_tokens", minimum=1, default=1 << 28, help="tokens per shard file"
    )
    batch_docs: int = field(
        "data/batch_docs",
        minimum=1,
        default=1024,
        help="documents tokenized per batch; progress is saved after each batch",
    )
    chat_template: str = field(
        "data/chat_template",
        default="auto",
        choices=CHOICES,
        help="how chat messages become text: model = the Jinja chat_template of the tokenizer's "
        "Hugging Face folder (tokenizer_config.json or chat_template.jinja), as transformers "
        "renders it; chatml; plain; auto = model when the tokenizer folder has a template, else chatml",
    )

    def check(self) -> None:
        """The store name is a folder under OUT/data (run with the config's validation)."""
        from theseus.data.store import check_store_name

        check_store_name("data.store", self.store)


@dataclass
class BlockwiseConfig:
    """Fixed-length examples for fine-tuning."""

    seq_len: int = field(
        "data/seq_len",
        default=1024,
        help="tokens per example seen by the model (rows hold seq_len + 1)",
    )
    padding: str = field(
        "data/padding",
        default="right",
        choices=("right", "left"),
        help="which side short examples are padded on (training reads both as right-padded)",
    )
    loss_on: str = field(
        "data/loss_on",
        default="assistant",
        choices=("assistant", "all"),
        help="chats: learn only the assistant's replies, or everything",
    )


@dataclass
class TokenizerTrainingConfig:
    """A byte-level BPE trained with Hugging Face `tokenizers`."""

    vocab_size: int = field(
        "tokenizer_training/vocab_size",
        minimum=257,  # the 256 bytes and an end-of-text token
        default=8192,
        help="vocabulary size, special tokens included",
    )
    min_frequency: int = field(
        "tokenizer_training/min_frequency",
        minimum=1,
        default=2,
        help="merge only pairs seen this often",
    )


def store_path(spec: ExecutionSpec, store: str) -> Path:
    """`<root>/data/<store>`, without creating anything."""
    from theseus.data.store import check_store_name

    return spec.root / "data" / check_store_name("data.store", store)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TokenizeJob(BasicJob[StoreConfig]):
    """Shared by both tokenize jobs: open, check, resume or skip, run, finish. Several tasks (a
    SLURM job's) each encode a share of the batches, which task 0 writes into the store
    (`theseus.data.parts`)."""

    CONFIG = StoreConfig
    KIND = "variable"
    DISTRIBUTED = True

    @classmethod
    def components(cls) -> list[type]:
        return [SourceConfig, StoreConfig, TokenizerConfig]

    def plan(self) -> TokenizePlan:
        from theseus.data.encoding import TokenizePlan

        c = self.config
        return TokenizePlan(
            self.KIND,
            self.source_config.max_samples,
            c.max_tokens,
            c.val_pct,
            c.batch_docs,
            c.chat_template,
        )

    def settings(self, plan: TokenizePlan) -> dict[str, Any]:
        """Everything that shapes the store's bytes (the batch size does not); the chat template
        in full, so that chatting with a model trained on the store renders as it was trained."""
        from theseus.data.chat import template_settings

        return {
            "max_samples": plan.max_samples,
            "max_tokens": plan.max_tokens,
            "val_pct": plan.val_pct,
            "shard_tokens": self.config.shard_tokens,
            **template_settings(plan.template, plan.chat),
        }

    def shard_rows(self) -> int:
        return self.config.shard_tokens

    def run(self) -> Path:
        from theseus.base.locks import exclusive
        from theseus.base.tasks import this_task
        from theseus.config import configure

        self.source_config = configure(SourceConfig, self.cfg)
        tokenizer_config = configure(TokenizerConfig, self.cfg)
        final = store_path(self.spec, self.config.store)
        task = this_task()
        if task.index:  # the other tasks only save parts, which task 0 writes into the store
            return self._write(final, tokenizer_config, task)
        # two writers would interleave their shards under one manifest
        with exclusive(final, f"token store {final.name}"):
            return self._write(final, tokenizer_config, task)

    def _write(self, final: Path, tokenizer_config: TokenizerConfig, task: Task) -> Path:
        from theseus.data.chat import resolve_template
        from theseus.data.datasets import open_source
        from theseus.data.encoding import Encoder
        from theseus.data.parts import Parts, parts_folder
        from theseus.data.pipeline import tokenize
        from theseus.data.store import Manifest, StoreWriter, TokenStore, token_dtype
        from theseus.data.tokenizers import make_tokenizer

        if final.exists() and not (final / "manifest.json").is_file():
            raise UserError(
                f"{final} exists and is not a token store; move it away, or set data.store=NEW_NAME"
            )
        source = open_source(self.source_config)
        tokenizer = make_tokenizer(tokenizer_config.backend, tokenizer_config.name)
        plan = self.plan()
        plan.template, plan.chat = resolve_template(plan.template, tokenizer)
        dtype = token_dtype(tokenizer.vocab_size)
        manifest = Manifest(
            kind=self.KIND,
            vocab_size=tokenizer.vocab_size,
            eot_id=tokenizer.eot_id,
            dtype=dtype,
            tokenizer=tokenizer.identity,
            source=source.describe(),
            settings=self.settings(plan),
            splits={},
            seq_len=plan.seq_len,
            padding=plan.padding if self.KIND == "blockwise" else None,
        )
        writer = StoreWriter(final, manifest, self.shard_rows())
        if (final / "manifest.json").is_file() and not self.spec.fresh:
            existing = TokenStore.open(final, verify=False)
            if writer.fingerprint == {
                k: getattr(existing.manifest, k)
                for k in ("kind", "tokenizer", "source", "settings")
            }:
                existing.check(checksums=True)  # a re-run is how a store's integrity is checked
                leftover = (
                    f"; {writer.partial.name} is left from an interrupted --fresh rebuild: "
                    "delete it, or run with --fresh to rebuild again"
                    if writer.partial.exists()
                    else ""
                )
                _say(
                    f"store {final} is already complete ({existing.n_tokens('train'):,} train tokens, "
                    f"checksums verified); nothing to do{leftover}"
                )
                return final
            if not writer.can_resume():
                raise UserError(
                    f"{final} already holds a store made with other settings; pass --fresh to replace it, or set data.store=NEW_NAME"
                )
            # only a --fresh run with these settings leaves such a partial store: finish its work
            _say(
                f"finishing the interrupted --fresh rebuild of {final.name}; it replaces the store"
            )
        elif self.spec.fresh and writer.partial.exists() and not task.index:
            shutil.rmtree(writer.partial)
        started = time.perf_counter()
        parts = Parts(final, writer.fingerprint, plan, task) if task.count > 1 else None
        n_batches = None
        if parts is not None:
            parts.write(source, Encoder(tokenizer, plan, dtype), final.name, self.spec.fresh)
            if task.index:
                parts.wait_for_merge(final)
                return final
            n_batches = parts.wait_for_tasks()
        unfinished = writer.partial.exists()
        resumed = writer.resume()
        if parts is not None and parts.first_after(writer.docs_read) is None:
            _say(
                f"merging {final.name} from its start: {writer.partial.name} was begun by a "
                "single process, whose batches end elsewhere than the parts'"
            )
            shutil.rmtree(writer.partial)
            writer = StoreWriter(final, manifest, self.shard_rows())
            writer.resume()
            unfinished = resumed = False
        if resumed:
            _say(
                f"resuming {final.name} after {writer.docs_read:,} documents (from {writer.partial.name})"
            )
        elif unfinished:
            _say(
                f"starting {final.name} over: the unfinished {writer.partial.name} was made with other settings"
            )
        try:
            if parts is None:
                stats = tokenize(source, tokenizer, writer, plan, final.name)
            else:
                stats = parts.merge(writer, source, n_batches, final.name)
        except BaseException:
            if not resumed and writer.docs_read == 0 and writer.partial.exists():
                shutil.rmtree(writer.partial)  # nothing done: leave nothing behind
            raise
        if not stats["tokens"]:
            shutil.rmtree(writer.partial)
            raise UserError(
                f"the source gave no text ({stats['docs_read']:,} documents, all empty); "
                "check data.paths, data.text_column and data.chat_column"
            )
        self._check_learnable(stats, plan, writer.partial)
        if stats.get("empty_chats"):
            _say(f"warning: {stats['empty_chats']:,} chat(s) had no message and were skipped")
        extra = {"tokenizer.json": Path(tokenizer.path)} if hasattr(tokenizer, "path") else {}
        if final.exists():
            shutil.rmtree(final)  # --fresh: the old store goes only once the new one is complete
        store = writer.finish(extra)
        # left by a job of several tasks (this one, or one that was stopped)
        shutil.rmtree(parts_folder(final), ignore_errors=True)
        elapsed = time.perf_counter() - started
        total = store.n_tokens("train") + store.n_tokens("val")
        _say(
            f"wrote {final}: {store.n_tokens('train'):,} train / {store.n_tokens('val'):,} val tokens, "
            f"{stats['docs_read']:,} documents, {sum(len(store.shards(s)) for s in ('train', 'val'))} shards"
            + (f", {stats['truncated']:,} examples truncated" if stats.get("truncated") else "")
            + (
                f", {stats['skipped_empty']:,} empty documents skipped"
                if stats.get("skipped_empty")
                else ""
            )
            + f" ({total / max(elapsed, 1e-9):,.0f} tok/s)"
        )
        return final

    def _check_learnable(self, stats: dict[str, int], plan: TokenizePlan, partial: Path) -> None:
        """Warn about examples with no token to learn, naming the cause; refuse a store that has
        none to learn at all (training on it would report a loss of 0 and learn nothing)."""
        cut_off = stats.get("cut_off", 0)
        no_target = stats.get("unlearned", 0) - cut_off
        causes = []
        if cut_off:
            causes.append(
                f"{cut_off:,} were cut at data.seq_len={plan.seq_len} before their first learned "
                "token (raise data.seq_len)"
            )
        if no_target:
            causes.append(
                f"{no_target:,} have nothing to learn with data.loss_on={plan.loss_on} (chats "
                "without an 'assistant' reply)"
            )
        if not causes:
            return
        examples = stats["docs_read"] - stats["skipped_empty"]
        if cut_off + no_target == examples:
            shutil.rmtree(partial)
            raise UserError(
                f"no example has a token to learn: of {examples:,}, {' and '.join(causes)}; "
                "a model trained on this store would learn nothing"
            )
        _say(
            f"warning: {cut_off + no_target:,} examples have no token to learn and add nothing: "
            + "; ".join(causes)
        )


@job("data/tokenize_variable_dataset")
class TokenizeVariableDataset(TokenizeJob):
    """Tokenize a source into one token stream (documents joined by end-of-text) for pretraining."""


@job("data/tokenize_blockwise_dataset")
class TokenizeBlockwiseDataset(TokenizeJob):
    """Tokenize a source into fixed-length examples with a loss mask (chats: assistant-only) for fine-tuning."""

    KIND = "blockwise"

    @classmethod
    def components(cls) -> list[type]:
        return [*super().components(), BlockwiseConfig]

    def plan(self) -> TokenizePlan:
        from theseus.config import configure

        block = configure(BlockwiseConfig, self.cfg)
        if block.seq_len < 1:
            raise UserError(f"data.seq_len={block.seq_len}: must be >= 1")
        plan = super().plan()
        plan.seq_len, plan.padding, plan.loss_on = block.seq_len, block.padding, block.loss_on
        return plan

    def settings(self, plan: TokenizePlan) -> dict[str, Any]:
        return {
            **super().settings(plan),
            "seq_len": plan.seq_len,
            "padding": plan.padding,
            "loss_on": plan.loss_on,
        }

    def shard_rows(self) -> int:
        plan_seq_len = self.cfg.data.seq_len
        return max(1, self.config.shard_tokens // (plan_seq_len + 1))


@job("data/train_tokenizer")
class TrainTokenizer(BasicJob[TokenizerTrainingConfig]):
    """Train a byte-level BPE tokenizer on any source; writes OUT/tokenizers/<run name>/tokenizer.json."""

    CONFIG = TokenizerTrainingConfig

    @classmethod
    def components(cls) -> list[type]:
        return [SourceConfig, TokenizerTrainingConfig]

    def run(self) -> Path:
        from theseus.base.files import atomic_write
        from theseus.config import configure
        from theseus.data.datasets import open_source
        from theseus.data.tokenizer_training import train_bpe

        source_config = configure(SourceConfig, self.cfg)
        out = self.spec.root / "tokenizers" / self.spec.name / "tokenizer.json"
        source = open_source(source_config)
        settings = {
            "source": source.describe(),
            "max_samples": source_config.max_samples,
            "vocab_size": self.config.vocab_size,
            "min_frequency": self.config.min_frequency,
        }
        record = out.with_name("settings.json")
        if out.exists() and not self.spec.fresh:
            if record.is_file() and json.loads(record.read_text(encoding="utf-8")) == settings:
                _say(f"{out} was trained with these settings already; nothing to do")
                return out
            raise UserError(
                f"{out} holds a tokenizer trained with other settings; pass --fresh to replace it "
                "(stores written with it keep their own copy), or choose another run name"
            )
        record.unlink(missing_ok=True)  # until the new tokenizer is written, no settings match
        train_bpe(
            source,
            source_config.max_samples,
            self.config.vocab_size,
            self.config.min_frequency,
            out,
        )
        atomic_write(record, json.dumps(settings, indent=2, sort_keys=True))
        _say(f"wrote {out}; use it with tokenizer.backend=huggingface tokenizer.name={out}")
        return out
