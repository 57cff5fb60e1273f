"""Hugging Face hub datasets, streamed: `hf` (any id) and `fineweb`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from theseus.data.datasets.base import Document, Source, table_documents
from theseus.data.hub import require_hub
from theseus.errors import UserError, first_line
from theseus.registry import dataset

OFFLINE_FIX = (
    "with no network use data.name=files data.paths=[...] on local files, or data.name=pystdlib"
)


class HubSource(Source):
    """A hub dataset read with streaming, so nothing is downloaded in full."""

    def hub_id(self) -> str:
        raise NotImplementedError

    def subset(self) -> str | None:
        return self.config.subset

    def check(self) -> None:
        require_hub(f"data.name={self.config.name}", OFFLINE_FIX)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "hub_id": self.hub_id(),
            "subset": self.subset(),
            "split": self.config.split,
            "text_column": self.config.text_column,
            "chat_column": self.config.chat_column,
        }

    def documents(self) -> Iterator[Document]:
        from datasets import load_dataset

        where = f"{self.hub_id()}[{self.subset() or 'default'}/{self.config.split}]"
        try:
            table = load_dataset(
                self.hub_id(), self.subset(), split=self.config.split, streaming=True
            )
        except Exception as exc:  # datasets raises many types for bad ids, subsets and splits
            raise UserError(f"cannot open {where}: {first_line(exc)}") from None
        yield from table_documents(table, self.config, where)


@dataset("hf")
class HubDataset(HubSource):
    """Any Hugging Face hub dataset: data.hub_id, data.subset, data.split, data.text_column."""

    def check(self) -> None:
        if not self.config.hub_id:
            raise UserError(
                "data.name=hf needs data.hub_id, e.g. data.hub_id=roneneldan/TinyStories"
            )
        super().check()

    def hub_id(self) -> str:
        return str(self.config.hub_id)


@dataset("fineweb")
class FineWeb(HubSource):
    """FineWeb from the Hugging Face hub, streamed; data.subset picks a sample (default sample-10BT)."""

    def hub_id(self) -> str:
        return self.config.hub_id or "HuggingFaceFW/fineweb"

    def subset(self) -> str | None:
        return self.config.subset or "sample-10BT"
