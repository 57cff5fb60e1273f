"""Chatting with a model: the conversation rendered through its chat template, each reply
generated with the KV cache (`generate`) until the template's end-of-turn or end-of-text.

The template is the one the model learned: a theseus run's training store records it (the
tokenizer folder's Jinja template, or `chatml` / `plain`); a Hugging Face folder brings its own.
`open_chat` builds a `Chat` from either; `Chat.respond` is one turn, `converse` a whole session.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from pathlib import Path
from typing import Any

from theseus.data.chat import (
    ModelTemplate,
    generation_prompt,
    resolve_template,
    segments,
    template_of_settings,
)
from theseus.data.encoding import encode_pieces
from theseus.data.tokenizers import Tokenizer
from theseus.errors import UserError
from theseus.inference.generate import MAX_SEED, generate

Message = dict[str, str]
COMMANDS = ("/reset", "/exit")
#: prompt widths are rounded up to this, so that most turns reuse the compiled decode loop
PROMPT_BUCKET = 64


@dataclass
class Sampling:
    """How replies are drawn: `temperature` 0 is greedy."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 512
    seed: int = 0


@dataclass
class ChatFormat:
    """How a conversation becomes prompt ids, and which ids end a reply.

    `name` is `model` (the Jinja `template`) or one of theseus's own templates (`chatml`,
    `plain`), whose pieces are encoded as the tokenize jobs encode them.
    """

    tokenizer: Tokenizer
    name: str
    template: ModelTemplate | None = None
    extra_stops: tuple[int, ...] = ()  # e.g. a Hugging Face folder's generation_config eos ids

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The ids of `messages` followed by the opening of an assistant reply."""
        if self.template is not None:
            text = self.template.render(messages, add_generation_prompt=True)
            return self.tokenizer.encode_markup_batch([text])[0]
        pieces = segments(messages, self.name, "all") + generation_prompt(self.name)
        return list(chain.from_iterable(encode_pieces(self.tokenizer, [pieces])[0]))

    @cached_property
    def turn_end(self) -> str:
        """The text that ends an assistant turn (cut from a reply that reaches it as text)."""
        if self.template is not None:
            return self.template.turn_end().strip()
        return "<|im_end|>" if self.name == "chatml" else "\n\nuser: "

    @cached_property
    def stop_ids(self) -> tuple[int, ...]:
        """End-of-text, the end-of-turn when it is one special token, the folder's eos ids."""
        tok = self.tokenizer
        stops = {tok.eot_id, *self.extra_stops}
        if getattr(tok, "eos_id", None) is not None:
            stops.add(tok.eos_id)
        if self.turn_end:
            markup = tok.encode_markup_batch([self.turn_end])[0]
            special = getattr(tok, "special_ids", None)
            if special is not None:
                stops |= {i for i in markup if i in special}
            elif len(markup) == 1 and markup != tok.encode(self.turn_end):
                stops.add(markup[0])  # tiktoken's <|im_end|>, say: one id only as markup
        return tuple(sorted(stops))

    def reply_text(self, ids: list[int]) -> str:
        """A reply's text, without what follows its end of turn."""
        text = self.tokenizer.decode(ids)
        if self.turn_end and self.turn_end in text:
            text = text[: text.index(self.turn_end)]
        return text.strip()


@dataclass
class Chat:
    """A conversation with `model`: the history, rendered anew through `format` every turn."""

    model: Any
    format: ChatFormat
    system: str | None = None
    history: list[Message] = field(default_factory=list)

    def messages(self, user: str) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history, {"role": "user", "content": user}]

    def reply_ids(self, user: str, sampling: Sampling) -> list[int]:
        """The ids of the model's reply to `user` after the history (the history is unchanged)."""
        prompt = self.format.prompt_ids(self.messages(user))
        context = int(self.model.config.block_size)
        # the last new token is never fed back: it may sit one past the context
        room = context - len(prompt) + 1
        if room < 1:
            raise UserError(
                f"the conversation ({len(prompt)} tokens) fills the model's context of {context}; "
                "/reset to start over"
            )
        tokenizer = self.tokenizer
        limit = min(int(self.model.config.vocab_size), tokenizer.vocab_size)
        turn = len(self.history) // 2  # each turn draws anew, reproducibly
        return generate(
            self.model,
            [prompt],
            min(sampling.max_tokens, room),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=(sampling.seed + turn) % (MAX_SEED + 1),
            stop_ids=self.format.stop_ids,
            vocab_limit=limit,
            pad_to=PROMPT_BUCKET,
        )[0]

    @property
    def tokenizer(self) -> Tokenizer:
        return self.format.tokenizer

    def respond(self, user: str, sampling: Sampling) -> str:
        """The model's reply to `user`; both join the history."""
        reply = self.format.reply_text(self.reply_ids(user, sampling))
        self.history += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": reply},
        ]
        return reply

    def reset(self) -> None:
        self.history.clear()


def converse(
    chat: Chat,
    lines: Iterable[str],
    sampling: Sampling,
    say: Callable[[str], None],
    note: Callable[[str], None],
    *,
    keep_going: bool = False,
) -> None:
    """Each line is a user turn whose reply goes to `say`; `/reset` forgets the conversation and
    `/exit` ends it. With `keep_going` (a terminal), a turn's error goes to `note` and the
    session goes on."""
    for line in lines:
        text = line.rstrip("\r\n")
        command = text.strip()
        if not command:
            continue
        if command == "/exit":
            return
        if command == "/reset":
            chat.reset()
            note("(conversation reset)")
            continue
        try:
            say(chat.respond(text, sampling))
        except UserError as exc:
            if not keep_going:
                raise
            note(f"error: {exc}")


def open_chat(
    path: str | Path, *, system: str | None = None, note: Callable[[str], None] = print
) -> Chat:
    """A chat with the model in `path`: a theseus run or checkpoint folder, or a Hugging Face
    model folder (config.json, safetensors and the tokenizer beside them)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise UserError(
            f"{path}: no such folder; give a run folder, a checkpoint folder or a Hugging Face model folder"
        )
    if (folder / "config.json").is_file():
        model, chat_format = _hugging_face(folder, note)
        return Chat(model, chat_format, system)
    from theseus.checkpoint import locate

    try:
        locate(folder)
    except UserError:
        raise UserError(
            f"{path} holds neither a theseus checkpoint nor a Hugging Face config.json; give a run "
            "folder, a checkpoint folder or a Hugging Face model folder"
        ) from None
    from theseus.inference.load import load_trained

    model, _, tokenizer = load_trained(folder)
    return Chat(model, _run_format(folder, tokenizer, note), system)


def _hugging_face(folder: Path, note: Callable[[str], None]) -> tuple[Any, ChatFormat]:
    """The model, tokenizer and chat template of a Hugging Face folder."""
    from theseus.inference.hf_folder import load_hf_folder

    model, tokenizer = load_hf_folder(folder)
    name, template = resolve_template("auto", tokenizer)
    if template is None:
        note(f"(no chat template in {folder}: using chatml)")
    generation = folder / "generation_config.json"
    eos: Any = None
    if generation.is_file():
        try:
            eos = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id")
        except (ValueError, AttributeError):
            eos = None  # an unreadable generation config only loses its extra stops
    stops = tuple(int(i) for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int))
    return model, ChatFormat(tokenizer, name, template, stops)


def _run_format(folder: Path, tokenizer: Tokenizer, note: Callable[[str], None]) -> ChatFormat:
    """The chat template a run was trained with, as its first training store records it; with
    the store gone, the tokenizer folder's own template, else chatml."""
    from theseus.inference.load import training_store_settings

    settings = training_store_settings(folder)
    if settings is None:
        name, template = resolve_template("auto", tokenizer)
        note(f"(the run's training store is gone: using the {name} chat template)")
    else:
        name, template = template_of_settings(settings)
    return ChatFormat(tokenizer, name, template)
