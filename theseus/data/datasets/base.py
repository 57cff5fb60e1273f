"""The source interface and its settings (all under `data/`)."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from theseus.config import field
from theseus.errors import UserError

#: A document: plain text, or a chat as a list of {"role", "content"} messages.
Document = str | list[dict[str, str]]


class HeldOut(str):
    """A text document that goes to the validation split whatever `data.val_pct` draws."""

    __slots__ = ()


@dataclass
class SourceConfig:
    """Where the documents come from."""

    name: str = field(
        "data/name",
        default="pystdlib",
        help="dataset source: fineweb | hf | files | tinyshakespeare | pystdlib (or one you registered)",
        registry="dataset",
    )
    hub_id: str | None = field(
        "data/hub_id", default=None, help="hf: the hub dataset id, e.g. allenai/c4"
    )
    subset: str | None = field(
        "data/subset",
        default=None,
        help="hub dataset config; fineweb: sample-10BT, sample-100BT, CC-MAIN-2024-10, ...",
    )
    split: str = field("data/split", default="train", help="hub dataset split to read")
    paths: list[str] = field(
        "data/paths",
        default_factory=list,
        help="files: local paths or globs (.txt .jsonl .json .parquet .csv); tinyshakespeare: a local copy",
    )
    text_column: str = field(
        "data/text_column", default="text", help="column holding the document text"
    )
    chat_column: str = field(
        "data/chat_column",
        default="messages",
        help="column holding a chat (a list of {role, content})",
    )
    val_paths: list[str] = field(
        "data/val_paths",
        default_factory=list,
        help="files: .txt paths or globs held out whole for validation (e.g. the end of a corpus, "
        "as nanoGPT splits); data.val_pct still draws from data.paths",
    )
    separator: str | None = field(
        "data/separator",
        default=None,
        help="split each .txt file into documents at this string (default: one document per file)",
    )
    max_samples: int | None = field(
        "data/max_samples", minimum=1, default=None, help="read at most this many documents"
    )


class Source:
    """Documents in a fixed order. Subclasses implement `documents()`; `check()` fails fast."""

    reads_val_paths: ClassVar[bool] = False  # whether `data.val_paths` means anything to it

    def __init__(self, config: SourceConfig) -> None:
        self.config = config

    def describe(self) -> dict[str, Any]:
        """What the store's manifest records about where its documents came from."""
        return {"name": self.config.name}

    def check(self) -> None:
        """Raise a UserError now if `documents()` cannot work (missing files, no network)."""

    def size_hint(self) -> int | None:
        """The number of documents, when known cheaply (for the ETA)."""
        return None

    def documents(self) -> Iterator[Document]:
        raise NotImplementedError


def table_documents(
    records: Iterable[dict[str, Any]], config: SourceConfig, where: str
) -> Iterator[Document]:
    """The documents of table rows (see `record_document`); a bad row is named by its number."""
    for row, record in enumerate(records, 1):
        try:
            yield record_document(record, config)
        except UserError as exc:
            raise UserError(f"{where}, row {row}: {exc}") from None


def record_document(record: dict[str, Any], config: SourceConfig) -> Document:
    """The document in one table row: its chat column if that holds a chat, else its text column."""
    chat = record.get(config.chat_column)
    if isinstance(chat, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in chat
    ):
        return [
            {
                "role": str(m["role"]),
                "content": message_text(m["content"], f"{config.chat_column}[{i}].content"),
            }
            for i, m in enumerate(chat)
        ]
    text = record.get(config.text_column)
    if isinstance(text, str):
        return text
    if text is None and config.text_column in record:
        return ""  # a null text is an empty document: skipped and counted, as "" is
    columns = ", ".join(sorted(record)) or "none"
    found = (
        f"column {config.text_column!r} is {type(text).__name__}"
        if config.text_column in record
        else f"no column {config.text_column!r}"
    )
    raise UserError(
        f"{found} and no chat in {config.chat_column!r} (columns: {columns}); "
        "set data.text_column or data.chat_column, or drop the row"
    )


def message_text(content: Any, where: str) -> str:
    """A chat message's content as text: a string; null (no text); or a list of text parts,
    joined (strings, or {"type": "text", "text": ...} as in OpenAI-style chats)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise UserError(
            f"{where} is not text ({reprlib.repr(content)}); give a string or a list of text "
            "parts, or drop the row"
        )
    texts = []
    for j, part in enumerate(content):
        text = (
            part.get("text")
            if isinstance(part, dict) and part.get("type", "text") == "text"
            else part
        )
        if not isinstance(text, str):
            raise UserError(
                f"{where}[{j}] is not text ({reprlib.repr(part)}); only text is tokenized: drop "
                "the row, or turn the part into text"
            )
        texts.append(text)
    return "".join(texts)


def open_source(config: SourceConfig) -> Source:
    """The source `data.name` selects, checked so that it fails now rather than mid-run."""
    from theseus.registry import DATASETS

    cls = DATASETS[config.name]
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise UserError(f"dataset {config.name!r} is not a Source subclass")
    source = cls(config)
    if config.val_paths and not source.reads_val_paths:
        raise UserError(
            f"data.val_paths is read by data.name=files only, not {config.name!r}; drop it, or "
            "hold out a share with data.val_pct"
        )
    source.check()
    return source
