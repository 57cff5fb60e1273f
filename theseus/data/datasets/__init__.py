"""Dataset sources: where documents come from. `data.name` picks one (see `open_source`).

Built in: `fineweb`, `hf`, `files`, `tinyshakespeare`, `pystdlib`. Register your own with
`@dataset("name")` on a `Source` subclass.
"""

from theseus.data.datasets.base import Document, Source, SourceConfig, open_source

__all__ = ["Document", "Source", "SourceConfig", "open_source"]
