"""Chats and fixed-length examples: templates, the assistant-only loss mask, and padding.

Two kinds of template. Ours (`chatml`, `plain`) are written as pieces, so that the loss mask
and the markup follow from the pieces. A model's own (`model`: the Jinja `chat_template` of a
Hugging Face tokenizer folder) is rendered as transformers' `apply_chat_template` renders it,
and its assistant spans are found by rendering each prefix of the chat.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from theseus.data.datasets.base import Document
from theseus.errors import UserError, first_line

TEMPLATES = ("chatml", "plain")
#: `data.chat_template`: auto = `model` when the tokenizer folder has a template, else chatml
CHOICES = ("auto", "model", *TEMPLATES)


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


def generation_prompt(template: str) -> list[tuple[str, bool, bool]]:
    """The pieces that open an assistant reply in `template` (what a chat prompt ends with)."""
    if template == "chatml":
        return [("<|im_start|>", False, True), ("assistant\n", False, False)]
    return [("assistant: ", False, False)]


@dataclass
class ModelTemplate:
    """A model's Jinja chat template and the named special tokens it may use (`bos_token`,
    `eos_token`, ...), rendered exactly as transformers' `apply_chat_template` renders it."""

    source: str
    tokens: dict[str, str] = field(default_factory=dict)

    def render(
        self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
    ) -> str:
        import jinja2

        chat = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            return _compiled(self.source).render(
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.tokens,
            )
        except jinja2.TemplateError as exc:
            raise UserError(
                f"the model's chat template fails on a chat of {len(chat)} message(s) "
                f"({type(exc).__name__}: {first_line(exc)}); fix the data or use "
                "data.chat_template=chatml"
            ) from None

    def learned_spans(
        self, messages: Sequence[dict[str, str]], loss_on: str
    ) -> tuple[str, list[tuple[int, int]]]:
        """The rendered chat and the (start, end) characters that count toward the loss: with
        `loss_on="assistant"` each assistant reply with what the template writes after it (its
        end-of-turn marker). A reply's span is what rendering the chat through it adds to the
        chat before it with the generation prompt, so the template must render each prefix of
        the chat as the start of the whole."""
        text = self.render(messages)
        if loss_on == "all":
            return text, [(0, len(text))]
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], add_generation_prompt=True)
            through = self.render(messages[: i + 1])
            if not through.startswith(prompt) or not text.startswith(through):
                raise UserError(
                    f"the model's chat template is not prefix-stable: message {i} (assistant) "
                    "renders differently once later messages follow or without the generation "
                    "prompt, so its reply cannot be found for the assistant-only loss; use "
                    "data.loss_on=all or data.chat_template=chatml"
                )
            spans.append((len(prompt), len(through)))
        return text, spans

    def turn_end(self) -> str:
        """The text the template writes after an assistant reply (e.g. "<|im_end|>\n")."""
        probe = "theseusprobereply"
        chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": probe}]
        through = self.render(chat)
        return through[through.rfind(probe) + len(probe) :] if probe in through else ""


def learned_flags(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[bool]:
    """Per token (its characters `offsets`), whether it overlaps a span (both in order), as
    transformers' `return_assistant_tokens_mask` decides it."""
    flags, k = [], 0
    for start, end in offsets:
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        flags.append(k < len(spans) and max(end, start + 1) > spans[k][0])
    return flags


class _Dict:
    """`dict(...)` for templates without the class itself (its attributes reach type internals)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def resolve_template(choice: str, tokenizer: Any) -> tuple[str, ModelTemplate | None]:
    """`data.chat_template` made concrete for `tokenizer`: (name, the model template for
    `model`). `auto` is the tokenizer folder's own template when it has one, else chatml."""
    source = getattr(tokenizer, "chat_template", None)
    if choice == "auto":
        choice = "model" if source else "chatml"
    if choice != "model":
        return choice, None
    if not source:
        where = getattr(tokenizer, "path", None)
        raise UserError(
            "data.chat_template=model: the tokenizer has no chat template ("
            + (
                f"no chat_template.jinja and no chat_template in tokenizer_config.json in {where.parent}"
                if where is not None
                else f"tokenizer.backend={tokenizer.identity['backend']} has none"
            )
            + "); point tokenizer.name at a Hugging Face model folder, or use data.chat_template=chatml"
        )
    return "model", ModelTemplate(source, dict(getattr(tokenizer, "special_tokens", {})))


def template_settings(name: str, template: ModelTemplate | None) -> dict[str, Any]:
    """What a store's settings record of its chat template (all `template_of_settings` needs)."""
    if template is None:
        return {"chat_template": name}
    return {
        "chat_template": name,
        "chat_template_jinja": template.source,
        "chat_template_tokens": template.tokens,
    }


def template_of_settings(settings: dict[str, Any]) -> tuple[str, ModelTemplate | None]:
    """The chat template a store's settings record: (name, the model template for `model`)."""
    name = settings.get("chat_template") or "chatml"
    if name == "model":
        return name, ModelTemplate(
            settings["chat_template_jinja"], dict(settings.get("chat_template_tokens") or {})
        )
    return name, None


@lru_cache(maxsize=8)
def _compiled(source: str) -> Any:
    """`source` compiled in the sandboxed Jinja environment transformers renders chat templates
    in (templates come from the hub: untrusted code), with the same helpers."""
    from datetime import datetime

    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text: render its body."""

        tags: ClassVar[set[str]] = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = self.call_method("_body")
            return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore names (no way to CPython internals)."""

        def __init__(*args: Any, **kwargs: Any) -> None:
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} refused")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes HTML characters, which a prompt must keep
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    env.globals["dict"] = _Dict()
    env.globals["namespace"] = Namespace
    try:
        return env.from_string(source)
    except jinja2.TemplateError as exc:
        raise UserError(
            f"the model's chat template is not valid Jinja ({first_line(exc)})"
        ) from None


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
