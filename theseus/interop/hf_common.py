"""What every Hugging Face family shares: the rule that moves one tensor, reshaping helpers, and
readers of `config.json` fields that refuse, in one line, what theseus cannot build exactly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from theseus.errors import UserError

Array = np.ndarray
HFConfig = dict[str, Any]


class Rule(NamedTuple):
    """One Hugging Face tensor and the theseus parameters it holds.

    Most tensors hold one parameter; a fused one (GPT-2's `c_attn`, GPT-NeoX's
    `query_key_value`) holds several, so `to_ours` returns one array per name in `ours` and
    `to_theirs` takes them in that order."""

    ours: tuple[str, ...]
    theirs: str
    to_ours: Callable[[Array], tuple[Array, ...]]
    to_theirs: Callable[..., Array]


def same(x: Array) -> Array:
    return x


def transpose(x: Array) -> Array:
    """torch Linear weight [out, in] <-> theseus kernel [in, out]."""
    return np.ascontiguousarray(x.T)


def one(
    ours: str,
    theirs: str,
    to_ours: Callable[[Array], Array] = same,
    to_theirs: Callable[[Array], Array] = same,
) -> Rule:
    """A rule for a tensor holding exactly one parameter."""
    return Rule((ours,), theirs, lambda w: (to_ours(w),), to_theirs)


def heads_in(heads: int, width: int) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """torch Linear [heads * width, d] <-> kernel [d, heads, width] (q, k and v)."""
    return (
        lambda w: np.ascontiguousarray(w.T.reshape(-1, heads, width)),
        lambda x: np.ascontiguousarray(x.reshape(x.shape[0], -1).T),
    )


def heads_out(heads: int, width: int) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """torch Linear [d, heads * width] <-> kernel [heads, width, d] (the output projection)."""
    return (
        lambda w: np.ascontiguousarray(w.T.reshape(heads, width, -1)),
        lambda x: np.ascontiguousarray(x.reshape(heads * width, -1).T),
    )


def split_heads(
    heads: int, width: int
) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
    """bias [heads * width] <-> [heads, width]."""
    return lambda w: w.reshape(heads, width), lambda x: x.reshape(-1)


# reading config.json ------------------------------------------------------------------------------


def need(hf: HFConfig, key: str, path: Path) -> Any:
    if key not in hf:
        raise UserError(
            f"{path}/config.json has no {key!r}; is this a complete Hugging Face model folder?"
        )
    return hf[key]


def refuse(path: Path, field: str, value: Any, why: str) -> UserError:
    """The one-line error for a config.json value theseus cannot build exactly."""
    return UserError(f"{path}/config.json: {field}={value!r} is not supported ({why})")


def rope(hf: HFConfig, path: Path, *, fraction: float = 1.0) -> tuple[float, float]:
    """(theta, rotated fraction of each head) of plain RoPE, from `rope_parameters` (transformers
    5) or the older top-level keys; any scaled RoPE is refused."""
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise refuse(path, "rope_parameters.rope_type", kind, "theseus builds plain RoPE only")
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    fraction = params.get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", fraction))
    )
    return float(theta), float(fraction)


def full_rope(hf: HFConfig, path: Path) -> float:
    """RoPE's theta for a family that rotates whole heads (a partial factor is refused)."""
    theta, fraction = rope(hf, path)
    if fraction != 1.0:
        raise refuse(
            path,
            "partial_rotary_factor",
            fraction,
            f"{hf.get('model_type')} rotates whole heads here; GPT-NeoX layouts rotate part",
        )
    return theta


def act(hf: HFConfig, path: Path, key: str, allowed: dict[str, str]) -> str:
    """theseus's `mlp` for the activation `hf[key]` (e.g. GPT-NeoX's "gelu" -> "gelu_exact")."""
    value = hf.get(key, next(iter(allowed)))
    if value not in allowed:
        raise refuse(path, key, value, f"supported: {', '.join(allowed)}")
    return allowed[value]


def qwen_window(hf: HFConfig, path: Path, n_layers: int) -> tuple[int | None, int]:
    """(sliding_window, window_from_layer) as transformers decides which Qwen layers slide:
    `layer_types` when given, else the layers from `max_window_layers` on, and only with
    `use_sliding_window` (otherwise `sliding_window` is dropped and no layer slides)."""
    size = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    types = hf.get("layer_types") or [
        "sliding_attention"
        if size is not None and i >= hf.get("max_window_layers", 28)
        else "full_attention"
        for i in range(n_layers)
    ]
    if len(types) != n_layers or not set(types) <= {"sliding_attention", "full_attention"}:
        raise refuse(path, "layer_types", types, "one full_attention or sliding_attention a layer")
    sliding = [kind == "sliding_attention" and size is not None for kind in types]
    if not any(sliding):
        return None, 0
    first = sliding.index(True)
    if not all(sliding[first:]):
        raise refuse(
            path, "layer_types", types, "theseus slides a window over the last layers only"
        )
    return int(size), first


def layernorm_unexpressed(c: Any) -> list[str]:
    """What of `c` neither GPT-2's nor GPT-NeoX's layout holds: both have LayerNorms, a GELU
    MLP, biases everywhere, one key/value head per query head of width d_model / n_heads, no
    q/k norms and no sliding window."""
    return [
        why
        for why, bad in (
            (f"norm={c.norm}", c.norm != "layernorm"),
            (f"mlp={c.mlp}", c.mlp == "swiglu"),
            ("bias=False", not c.bias),
            (f"n_kv_heads={c.kv_heads}", c.kv_heads != c.n_heads),
            (f"head_width={c.head_width}", c.head_dim * c.n_heads != c.d_model),
            ("qk_norm", c.qk_norm),
            (f"sliding_window={c.sliding_window}", c.sliding_window is not None),
        )
        if bad
    ]
