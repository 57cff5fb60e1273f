"""nanoGPT's model and training semantics in PyTorch: the reference theseus's trainer is held to.

Written from the maths, not from theseus's code, so that a mistake in one does not hide in both:
a pre-norm decoder (LayerNorm + tanh-GELU MLP for GPT, RMSNorm + SwiGLU + RoPE + grouped-query
attention for Llama), PyTorch's own causal attention and cross-entropy, AdamW from `torch.optim`
with weight decay on every parameter of two or more dimensions (nanoGPT's rule; embeddings can
be left out to match theseus's setting), gradients clipped to a global norm, and the learning
rate of update s (1-based) from the schedule formula below. It trains on whatever batches it is
given: the harness (`bench/parity.py`) and the parity test feed it the batches of theseus's loader.

Two starts: `nanogpt_init` (each linear and embedding N(0, 0.02), biases 0, the projections back
into the residual stream N(0, 0.02 / sqrt(2 * layers))), or `load_theseus` (a theseus model's
weights, for the same-weights comparison).

Ids from `vocab_used` up to `vocab_size` only pad the embedding: their logits are -inf, so they
get no probability (a model over the `vocab_used` real ids, whatever the padding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Reference:
    """Shapes, numerics and optimizer of one run (read from a theseus config by `of_config`)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_ff: int
    block_size: int
    vocab_size: int
    vocab_used: int
    positions: str  # "learned" | "rope"
    rope_theta: float
    mlp: str  # "gelu" | "swiglu"
    norm: str  # "layernorm" | "rmsnorm"
    norm_eps: float
    bias: bool
    tie_embeddings: bool
    lr: float
    min_lr: float
    warmup_steps: int
    steps: int
    schedule: str  # "cosine" | "wsd" | "constant"
    decay_fraction: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    clip_norm: float | None
    decay_embeddings: bool = True

    @classmethod
    def of_config(
        cls, cfg: Any, *, vocab_size: int, vocab_used: int, job_schedule: str, **changes: Any
    ) -> Reference:
        """The reference for a theseus job config (`job_schedule`: the job's schedule when the
        config names none; `changes` replace fields, e.g. nanoGPT's weight-decay rule)."""
        from theseus.config import configure
        from theseus.model.models.transformer import TransformerConfig
        from theseus.training.base import BaseTrainerConfig
        from theseus.training.optimizers import OptimizerConfig

        arch = configure(TransformerConfig, cfg)
        optim = configure(OptimizerConfig, cfg)
        training = configure(BaseTrainerConfig, cfg)
        if arch.dropout:
            raise ValueError("the reference has no dropout; set architecture.dropout=0")
        if optim.optimizer != "adamw":
            raise ValueError("the reference trains with AdamW only")
        values = {
            "n_layers": arch.n_layers,
            "n_heads": arch.n_heads,
            "n_kv_heads": arch.kv_heads,
            "d_model": arch.d_model,
            "d_ff": arch.hidden,
            "block_size": arch.block_size,
            "vocab_size": vocab_size,
            "vocab_used": vocab_used,
            "positions": arch.positions,
            "rope_theta": arch.rope_theta,
            "mlp": arch.mlp,
            "norm": arch.norm,
            "norm_eps": arch.norm_eps,
            "bias": arch.bias,
            "tie_embeddings": arch.tie_embeddings,
            "lr": optim.lr,
            "min_lr": optim.end_lr,
            "warmup_steps": optim.warmup_steps,
            "steps": training.steps,
            "schedule": optim.schedule or job_schedule,
            "decay_fraction": optim.decay_fraction,
            "b1": optim.b1,
            "b2": optim.b2,
            "eps": optim.eps,
            "weight_decay": optim.weight_decay,
            "clip_norm": optim.clip_norm,
            "decay_embeddings": optim.decay_embeddings,
        }
        return cls(**{**values, **changes})

    def learning_rate(self, step: int) -> float:
        """The rate of update `step` (1-based): linear warmup from 0 to `lr`, then constant,
        cosine down to `min_lr` at the last step, or (wsd) constant until the last
        `decay_fraction` of the run and linear down to `min_lr` over it."""
        warmup = min(self.warmup_steps, self.steps)
        if step < warmup:
            return self.lr * step / warmup
        after, rest = step - warmup, max(1, self.steps - warmup)
        if self.schedule == "constant":
            return self.lr
        if self.schedule == "cosine":
            progress = min(1.0, after / rest)
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "wsd":
            decay = min(round(self.steps * self.decay_fraction), rest)
            progress = min(1.0, max(0, after - (rest - decay)) / max(1, decay))
            return self.lr + (self.min_lr - self.lr) * progress
        raise ValueError(f"the reference has no {self.schedule!r} schedule")


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE in the rotate-half layout: x [B, T, heads, head_dim], positions [B, T]."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (torch.arange(0, half, dtype=torch.float32) * 2 / x.shape[-1])
    angles = positions.float()[..., None] * inv_freq
    cos = torch.cat([angles.cos(), angles.cos()], -1)[:, :, None, :]
    sin = torch.cat([angles.sin(), angles.sin()], -1)[:, :, None, :]
    first, second = x[..., :half], x[..., half:]
    return x * cos + torch.cat([-second, first], -1) * sin


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def norm(r: Reference) -> nn.Module:
    if r.norm == "rmsnorm":
        return RMSNorm(r.d_model, r.norm_eps)
    return nn.LayerNorm(r.d_model, eps=r.norm_eps)


class Attention(nn.Module):
    def __init__(self, r: Reference) -> None:
        super().__init__()
        self.r = r
        self.head_dim = r.d_model // r.n_heads
        self.q = nn.Linear(r.d_model, r.n_heads * self.head_dim, bias=r.bias)
        self.k = nn.Linear(r.d_model, r.n_kv_heads * self.head_dim, bias=r.bias)
        self.v = nn.Linear(r.d_model, r.n_kv_heads * self.head_dim, bias=r.bias)
        self.o = nn.Linear(r.n_heads * self.head_dim, r.d_model, bias=r.bias)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        r, (batch, time, _) = self.r, x.shape
        q = self.q(x).view(batch, time, r.n_heads, self.head_dim)
        k = self.k(x).view(batch, time, r.n_kv_heads, self.head_dim)
        v = self.v(x).view(batch, time, r.n_kv_heads, self.head_dim)
        if r.positions == "rope":
            q, k = rotate(q, positions, r.rope_theta), rotate(k, positions, r.rope_theta)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        group = r.n_heads // r.n_kv_heads  # query heads n*group .. n*group+group-1 share kv head n
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(batch, time, r.d_model))


class MLP(nn.Module):
    def __init__(self, r: Reference) -> None:
        super().__init__()
        self.swiglu = r.mlp == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(r.d_model, r.d_ff, bias=r.bias)
            self.up = nn.Linear(r.d_model, r.d_ff, bias=r.bias)
        else:
            self.fc = nn.Linear(r.d_model, r.d_ff, bias=r.bias)
        self.down = nn.Linear(r.d_ff, r.d_model, bias=r.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, r: Reference) -> None:
        super().__init__()
        self.attn_norm, self.attn = norm(r), Attention(r)
        self.mlp_norm, self.mlp = norm(r), MLP(r)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), positions)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, r: Reference) -> None:
        super().__init__()
        self.r = r
        self.embed = nn.Embedding(r.vocab_size, r.d_model)
        self.position_embed = (
            nn.Embedding(r.block_size, r.d_model) if r.positions == "learned" else None
        )
        self.blocks = nn.ModuleList(Block(r) for _ in range(r.n_layers))
        self.final_norm = norm(r)
        self.lm_head = None if r.tie_embeddings else nn.Linear(r.d_model, r.vocab_size, bias=False)

    def forward(self, inputs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed(inputs)
        if self.position_embed is not None:
            x = x + self.position_embed(positions)
        for block in self.blocks:
            x = block(x, positions)
        x = self.final_norm(x)
        logits = x @ self.embed.weight.T if self.lm_head is None else self.lm_head(x)
        if self.r.vocab_used < self.r.vocab_size:
            logits = logits.masked_fill(
                torch.arange(self.r.vocab_size) >= self.r.vocab_used, -math.inf
            )
        return logits

    def loss(self, batch: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(summed token cross-entropy, loss-token count) of a batch of theseus's loader."""
        t = {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}
        logits = self(t["inputs"].long(), t["positions"].long())
        nll = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), t["targets"].long().reshape(-1), reduction="none"
        )
        mask = t["loss_mask"].reshape(-1).float()
        return (nll * mask).sum(), mask.sum()


def nanogpt_std(name: str, n_layers: int) -> float | None:
    """The standard deviation nanoGPT draws parameter `name` from; None for norms (ones) and
    biases (zeros)."""
    if "norm" in name or name.endswith("bias"):
        return None
    if name.endswith(("attn.o.weight", "mlp.down.weight")):  # into the residual stream
        return 0.02 / math.sqrt(2 * n_layers)
    return 0.02


def nanogpt_init(model: GPT, seed: int) -> GPT:
    """nanoGPT's initialization, drawn from torch's generator seeded with `seed`."""
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        std = nanogpt_std(name, model.r.n_layers)
        if std is not None:
            nn.init.normal_(p, 0.0, std)
        elif "norm" in name and name.endswith("weight"):
            nn.init.ones_(p)
        else:
            nn.init.zeros_(p)
    return model


def load_theseus(model: GPT, params: Mapping[str, np.ndarray]) -> GPT:
    """Copy a theseus model's weights (`params`: dotted path -> array, as `flat_params` gives)."""
    r, head_dim = model.r, model.r.d_model // model.r.n_heads
    own = dict(model.named_parameters())
    done = set()
    for path, value in params.items():
        value = np.asarray(value, np.float32)
        *module, leaf = path.split(".")
        name = ".".join(module)
        if leaf in ("weight", "scale"):  # embeddings ([num, dim] both sides) and norm scales
            target = f"{name}.weight"
        elif leaf in (
            "q",
            "k",
            "v",
        ):  # [d_model, heads, head_dim] -> Linear [heads*head_dim, d_model]
            target, value = f"{name}.{leaf}.weight", value.reshape(r.d_model, -1).T
        elif leaf == "o":  # [heads, head_dim, d_model]
            target, value = f"{name}.o.weight", value.reshape(r.n_heads * head_dim, r.d_model).T
        elif leaf.endswith("_bias"):  # attention biases, [heads, head_dim] or [d_model]
            target, value = f"{name}.{leaf[:-5]}.bias", value.reshape(-1)
        elif leaf == "kernel":  # Dense [in, out] -> Linear [out, in]
            target, value = f"{name}.weight", value.T
        else:
            target = path
        if target not in own or own[target].shape != value.shape:
            raise KeyError(f"theseus parameter {path} {value.shape} has no place in the reference")
        with torch.no_grad():
            own[target].copy_(torch.from_numpy(np.array(value)))
        done.add(target)
    missing = set(own) - done
    if missing:
        raise KeyError(f"theseus gave no value for {sorted(missing)}")
    return model


def flat_params(state: Any) -> dict[str, np.ndarray]:
    """A theseus model's parameters (an nnx State) as dotted path -> numpy array."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        out[".".join(str(k) for k in keys if k is not None)] = np.asarray(leaf)
    return out


def optimizer(model: GPT) -> torch.optim.AdamW:
    """AdamW, decaying every parameter of two or more dimensions (embeddings too, unless the
    reference says otherwise); the learning rate is set before each step."""
    r = model.r
    decay, keep = [], []
    for name, p in model.named_parameters():
        embedding = name.startswith(("embed.", "position_embed."))
        wanted = p.dim() >= 2 and (r.decay_embeddings or not embedding)
        (decay if wanted else keep).append(p)
    groups = [
        {"params": decay, "weight_decay": r.weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=r.lr, betas=(r.b1, r.b2), eps=r.eps, foreach=False)


def train(model: GPT, batches: Iterable[Mapping[str, np.ndarray]]) -> list[dict[str, float]]:
    """One AdamW update per batch; returns each step's loss (mean over its loss tokens, before
    the update), gradient norm (before clipping) and learning rate."""
    r, opt = model.r, optimizer(model)
    history = []
    for step, batch in enumerate(batches, start=1):
        total, count = model.loss(batch)
        loss = total / count.clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        if r.clip_norm is not None and grad_norm > r.clip_norm:
            for g in grads:
                g.mul_(r.clip_norm / grad_norm)
        lr = r.learning_rate(step)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        history.append({"loss": loss.item(), "grad_norm": grad_norm, "lr": lr})
    return history


@torch.no_grad()
def evaluate(model: GPT, batches: Iterable[Mapping[str, np.ndarray]]) -> float:
    """Mean token cross-entropy over `batches`."""
    total, count = 0.0, 0.0
    for batch in batches:
        s, n = model.loss(batch)
        total, count = total + float(s), count + float(n)
    return total / max(count, 1.0)


class Run:
    """What the reference takes from a theseus run: its settings, its loader's batches and its
    initial weights (`job`: the registered job name; `cfg`: its config; `root`: its output
    folder, holding the token stores)."""

    def __init__(self, job: str, cfg: Any, root: Path) -> None:
        from theseus.config import configure
        from theseus.data.loader import open_mixture
        from theseus.model.models.transformer import TransformerConfig
        from theseus.registry import JOBS
        from theseus.training.base import BaseTrainerConfig
        from theseus.training.data import padded_vocab

        self.trainer, self.cfg = JOBS[job], cfg
        self.training = configure(BaseTrainerConfig, cfg)
        arch = configure(TransformerConfig, cfg)
        self.stores = open_mixture(Path(root), self.training.dataset)
        store_vocab = self.stores[0].manifest.vocab_size
        self.vocab_size = arch.vocab_size or padded_vocab(store_vocab)
        self.vocab_used = arch.vocab_used or store_vocab
        self.seq_len = self.training.seq_len or arch.block_size

    def reference(self, **changes: Any) -> Reference:
        return Reference.of_config(
            self.cfg,
            vocab_size=self.vocab_size,
            vocab_used=self.vocab_used,
            job_schedule=self.trainer.schedule(),
            **changes,
        )

    def batches(self, split: str, count: int) -> list[dict[str, np.ndarray]]:
        """The global batches of steps 0 .. count-1 (train) or the validation set's first
        `count` batches, as theseus's trainer reads them."""
        from theseus.data.loader import Loader

        t = self.training
        loader = Loader(
            self.stores,
            [mix.rate for mix in t.dataset],
            self.seq_len,
            t.batch_size,
            seed=t.seed,
            split=split,
            reset_at_eot=t.reset_at_eot,
        )
        try:
            return [loader.batch(step) for step in range(count)]
        finally:
            loader.close()

    def initial_params(self) -> dict[str, np.ndarray]:
        """The weights theseus starts this run from (its model factory with the run's seed)."""
        from flax import nnx

        create = self.trainer.model_factory(
            self.cfg,
            vocab_size=self.vocab_size,
            vocab_used=self.vocab_used,
            seed=self.training.seed,
        )
        return flat_params(nnx.state(create(), nnx.Param))

    def same_weights(self, steps: int) -> list[dict[str, float]]:
        """The reference trained for `steps` from theseus's initial weights on its batches."""
        model = load_theseus(GPT(self.reference(steps=self.training.steps)), self.initial_params())
        return train(model, self.batches("train", steps))


def relative_differences(ours: list[float], theirs: list[float]) -> list[float]:
    return [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(ours, theirs, strict=True)]
