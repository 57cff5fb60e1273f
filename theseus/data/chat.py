"""Chats and fixed-length examples: templates, the assistant-only loss mask, and padding."""

from __future__ import annotations

from typing import Any

from theseus.data.datasets.base import Document

TEMPLATES = ("chatml", "plain")


def segments(document: Document, template: str, loss_on: str) -> list[tuple[str, bool, bool]]:
    """The document as (text, counts toward the loss, is template markup) pieces, in order.

    Plain text is one piece. A chat puts each message into `template`; with
    `loss_on="assistant"` only assistant replies (and their end marker) count. Markup is kept
    apart from the messages, and roles are data too, so that only the template's markers can
    become special tokens (a tokenizer splits at those anyway, so the ids are those of the whole).
    """
    if isinstance(document, str):
        return [(document, True, False)]
    pieces: list[tuple[str, bool, bool]] = []
    for message in document:
        role, content = message["role"], message["content"]
        learn = loss_on == "all" or role == "assistant"
        if template == "chatml":
            pieces += [
                ("<|im_start|>", loss_on == "all", True),
                (f"{role}\n", loss_on == "all", False),
                (content, learn, False),
                ("<|im_end|>", learn, True),
                ("\n", learn, False),
            ]
        else:
            pieces += [(f"{role}: ", loss_on == "all", False), (f"{content}\n\n", learn, False)]
    return pieces


def render(document: Document, template: str) -> str:
    """The whole document as one text (chats through `template`)."""
    return "".join(text for text, _, _ in segments(document, template, "all"))


def example(
    ids: list[int], weights: list[bool], seq_len: int, pad_id: int, padding: str
) -> tuple[Any, Any, int, bool]:
    """One fixed-length row: (`seq_len + 1` ids, `seq_len` loss flags per target, length, truncated).

    `weights[i]` says whether token i is learned (predicted). Padding uses `pad_id`, never learned.
    """
    import numpy as np

    truncated = len(ids) > seq_len + 1
    ids, weights = ids[: seq_len + 1], weights[: seq_len + 1]
    n = len(ids)
    tokens = np.full(seq_len + 1, pad_id, dtype=np.int64)
    learned = np.zeros(seq_len + 1, dtype=np.uint8)
    start = 0 if padding == "right" else seq_len + 1 - n
    tokens[start : start + n] = ids
    learned[start : start + n] = weights
    learned[start] = 0  # the first real token has no context to be predicted from
    return tokens, learned[1:], n, truncated
