"""Tokenizers behind one small interface: tiktoken encodings, Hugging Face `tokenizers`, or bytes.

A tokenizer is known by its identity `{backend, name, hash}`; the hash covers the vocabulary (and
everything else that changes the ids), so a token store can tell which tokenizer produced it.
Anything that would need a download and cannot get one fails at once with the setting to change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

from theseus.base.chips import usable_cores
from theseus.base.files import sha256_hex
from theseus.config import field
from theseus.errors import UserError, first_line

BACKENDS = ("tiktoken", "huggingface", "bytes")
TIKTOKEN_ENCODINGS = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")
EOT_TEXT = "<|endoftext|>"
_HF_EOT_CANDIDATES = (EOT_TEXT, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


@dataclass
class TokenizerConfig:
    """Which tokenizer turns text into ids."""

    backend: str = field(
        "tokenizer/backend",
        default="tiktoken",
        choices=BACKENDS,
        help="tiktoken | huggingface (a tokenizer.json, a folder holding one, or a hub id) | bytes (no download)",
    )
    name: str = field(
        "tokenizer/name",
        default="gpt2",
        help="tiktoken encoding (gpt2, r50k_base, cl100k_base, o200k_base) or Hugging Face tokenizer path/hub id; ignored for bytes",
    )


class Tokenizer:
    """Text <-> ids. `encode_batch` uses every core the backend can use and keeps input order."""

    eot_id: int
    vocab_size: int
    identity: dict[str, str]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids, special-token strings included as plain text."""
        raise NotImplementedError

    def encode_markup_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode_batch` for template markup (`<|im_start|>` ...): special-token strings become
        their ids where the tokenizer has them."""
        return self.encode_batch(texts)

    def encode_markup_offsets(
        self, texts: list[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """`encode_markup_batch` with each id's (start, end) characters (Hugging Face only)."""
        raise NotImplementedError

    def encode_batch_flat(self, texts: list[str]) -> tuple[Any, Any]:
        """`encode_batch` as (all ids in one int64 array, each text's length)."""
        import numpy as np

        encoded = self.encode_batch(texts)
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(chain.from_iterable(encoded), dtype=np.int64, count=int(lengths.sum()))
        return flat, lengths

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def use_one_thread(self) -> None:
        """Encode on the calling thread only (for worker processes that are the parallelism)."""


class BytesTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0..255, plus 256 for end-of-text."""

    def __init__(self) -> None:
        self.eot_id = 256
        self.vocab_size = 257
        self.identity = {
            "backend": "bytes",
            "name": "utf-8",
            "hash": sha256_hex(b"bytes:utf-8:eot=256"),
        }

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def encode_batch_flat(self, texts: list[str]) -> tuple[Any, Any]:
        import numpy as np

        encoded = [text.encode("utf-8") for text in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int64), lengths

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding; `encode_batch` runs on a thread per core (tiktoken releases the GIL)."""

    def __init__(self, name: str) -> None:
        self.encoding = _tiktoken_encoding(name)
        self.eot_id = self.encoding.eot_token
        self.vocab_size = self.encoding.n_vocab
        ranks = self.encoding._mergeable_ranks
        digest = hashlib.sha256()
        for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
            digest.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
        digest.update(json.dumps(self.encoding._special_tokens, sort_keys=True).encode())
        digest.update(self.encoding._pat_str.encode())
        self.identity = {"backend": "tiktoken", "name": name, "hash": digest.hexdigest()}
        self._threads = usable_cores()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._threads == 1:
            return [self.encoding.encode_ordinary(text) for text in texts]
        return self.encoding.encode_ordinary_batch(texts, num_threads=self._threads)

    def encode_markup_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encoding.encode(text, allowed_special="all") for text in texts]

    def use_one_thread(self) -> None:
        self._threads = 1

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)


class HuggingFaceTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer; `encode_batch` runs in its Rust thread pool."""

    def __init__(self, name: str) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.path = _huggingface_file(name)
        try:
            text = self.path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
            raise UserError(
                f"tokenizer.name={name}: cannot read {self.path} ({reason}); give a Hugging Face "
                "tokenizer.json (a sentencepiece .model file is not one)"
            ) from None
        try:
            self.tokenizer = HFTokenizer.from_str(text)
            self.markup = HFTokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises a plain Exception for bad files
            raise UserError(f"tokenizer.name={name}: not a valid tokenizer.json ({exc})") from None
        # A document that quotes "<|endoftext|>" must not end there (tiktoken's encode_ordinary).
        self.tokenizer.encode_special_tokens = True
        # Offsets then cover each token's whole text (ByteLevel would trim its spaces), so that
        # the tokens of a chat's assistant spans are found exactly; the ids do not change.
        self.markup.post_processor = None
        # a model folder's own template and named tokens (bos_token, eos_token, ...)
        self.chat_template, self.special_tokens = folder_chat_settings(self.path.parent)
        vocab = self.tokenizer.get_vocab(with_added_tokens=True)
        eos = self.special_tokens.get("eos_token")
        self.eos_id: int | None = vocab.get(eos) if eos else None
        self.special_ids = frozenset(
            i for i, t in self.markup.get_added_tokens_decoder().items() if t.special
        )
        eot = next((vocab[t] for t in _HF_EOT_CANDIDATES if t in vocab), None)
        if eot is None and self.eos_id is None:
            raise UserError(
                f"tokenizer.name={name}: no end-of-text token (looked for {', '.join(_HF_EOT_CANDIDATES)} "
                "and an eos_token in tokenizer_config.json); train one with data/train_tokenizer or "
                "add one of these special tokens"
            )
        self.eot_id = eot if eot is not None else self.eos_id
        self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
        if eot is None:
            canonical += f"\0eot={eos}"  # the id comes from the folder's config, not the file
        ident = name if not Path(name).expanduser().exists() else str(self.path)
        self.identity = {
            "backend": "huggingface",
            "name": ident,
            "hash": sha256_hex(canonical.encode()),
        }

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_markup_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.markup.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_markup_offsets(
        self, texts: list[str]
    ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Each text's ids as `encode_markup_batch` gives them, with each id's (start, end)
        characters in the text."""
        return [
            (e.ids, e.offsets) for e in self.markup.encode_batch(texts, add_special_tokens=False)
        ]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


#: the named special tokens a chat template may use (transformers' special_tokens_map)
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _folder_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise UserError(
            f"{path} cannot be read as JSON ({first_line(exc)}); fix or remove it"
        ) from None
    return data if isinstance(data, dict) else {}


def folder_chat_settings(folder: Path) -> tuple[str | None, dict[str, str]]:
    """The chat template and named special tokens of a Hugging Face tokenizer folder, read as
    transformers reads them: `chat_template.jinja` before tokenizer_config.json's
    `chat_template` (a string, or named templates of which "default"); the tokens of
    tokenizer_config.json, and of special_tokens_map.json when the config predates
    `added_tokens_decoder`."""
    config = _folder_json(folder / "tokenizer_config.json")
    tokens = {k: v for k, v in config.items() if k in SPECIAL_TOKEN_NAMES}
    if "added_tokens_decoder" not in config:
        tokens.update(
            {
                k: v
                for k, v in _folder_json(folder / "special_tokens_map.json").items()
                if k in SPECIAL_TOKEN_NAMES
            }
        )
    named = {k: v.get("content") if isinstance(v, dict) else v for k, v in tokens.items()}
    special = {k: v for k, v in named.items() if isinstance(v, str)}
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), special
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(template, dict):
        template = template.get("default")
    return (template if isinstance(template, str) and template else None), special


_TIKTOKEN_LOCK = threading.Lock()


class _NeedsDownload(Exception):
    pass


def _tiktoken_encoding(name: str) -> Any:
    """Load a tiktoken encoding from its cache, downloading it (once, checked by tiktoken against
    its known hash) only when its server answers: with no network, a quick one-line error."""
    if name not in TIKTOKEN_ENCODINGS:
        raise UserError(
            f"tokenizer.name={name!r} is not a tiktoken encoding; use one of {', '.join(TIKTOKEN_ENCODINGS)}"
        )
    import tiktoken
    import tiktoken.load

    with _TIKTOKEN_LOCK:
        original = tiktoken.load.read_file

        def local_only(blobpath: str) -> bytes:
            if "://" in blobpath:
                from theseus.data.hub import url_reachable

                reason = url_reachable(blobpath)
                if reason is not None:
                    raise _NeedsDownload(blobpath, reason)
            return original(blobpath)

        tiktoken.load.read_file = local_only
        try:
            return tiktoken.get_encoding(name)
        except _NeedsDownload as missing:
            cache = (
                os.environ.get("TIKTOKEN_CACHE_DIR")
                or os.environ.get("DATA_GYM_CACHE_DIR")
                or "the default cache"
            )
            url, reason = missing.args
            raise UserError(
                f"tiktoken {name} is not in {cache} and cannot be downloaded ({reason}; {url}); "
                "set TIKTOKEN_CACHE_DIR to a folder holding it, or use tokenizer.backend=bytes, "
                "or tokenizer.backend=huggingface tokenizer.name=/path/to/tokenizer.json"
            ) from None
        finally:
            tiktoken.load.read_file = original


def _huggingface_file(name: str) -> Path:
    """The local tokenizer.json for a path, a folder, or a hub id found in the local hub cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"tokenizer.name={name}: the folder holds no tokenizer.json")
        return path.resolve()
    if path.is_file():
        return path.resolve()
    if name.endswith(".json") or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(
            f"tokenizer.name={name}: no such file; give a tokenizer.json, a folder holding one, or a hub id"
        )
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(name, "tokenizer.json", local_files_only=True))
    except Exception:
        pass
    from theseus.data.hub import require_hub

    require_hub(
        f"tokenizer.name={name}",
        "give a local tokenizer.json or folder, or use tokenizer.backend=bytes",
    )
    try:
        found = Path(hf_hub_download(name, "tokenizer.json"))
    except Exception as exc:
        raise UserError(
            f"tokenizer.name={name}: cannot fetch tokenizer.json from the hub ({type(exc).__name__})"
        ) from None
    # the chat template and named tokens, next to it in the cache; a repository may lack them
    for extra in ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        with contextlib.suppress(Exception):
            hf_hub_download(name, extra)
    return found


def make_tokenizer(backend: str, name: str) -> Tokenizer:
    """The tokenizer a config names."""
    if backend == "bytes":
        return BytesTokenizer()
    if backend == "tiktoken":
        return TiktokenTokenizer(name)
    if backend == "huggingface":
        return HuggingFaceTokenizer(name)
    raise UserError(f"tokenizer.backend={backend!r}: use one of {', '.join(BACKENDS)}")


def load_tokenizer(identity: dict[str, Any], fallback: Path | None = None) -> Tokenizer:
    """The tokenizer a store's manifest names; refuses one whose vocabulary hash differs.

    `fallback` is a tokenizer.json to use when the original Hugging Face file is gone
    (stores keep a copy of theirs).
    """
    backend, name = identity.get("backend", ""), identity.get("name", "")
    try:
        tokenizer = make_tokenizer(backend, name)
    except UserError:
        if backend != "huggingface" or fallback is None or not fallback.is_file():
            raise
        tokenizer = make_tokenizer(backend, str(fallback))
    if identity.get("hash") and tokenizer.identity["hash"] != identity["hash"]:
        if backend == "huggingface" and fallback is not None and fallback.is_file():
            copy = make_tokenizer(backend, str(fallback))
            if copy.identity["hash"] == identity["hash"]:
                return copy
        raise UserError(
            f"tokenizer {backend}:{name} has changed since the store was written (vocabulary hash differs); "
            "re-tokenize, or point tokenizer.name at the original file"
        )
    return tokenizer


def same_tokenizer(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two tokenizer identities name the same vocabulary (by hash where both have one)."""
    if a.get("hash") and b.get("hash"):
        return a["hash"] == b["hash"]
    return (a.get("backend"), a.get("name")) == (b.get("backend"), b.get("name"))


def describe_tokenizer(identity: dict[str, Any]) -> str:
    """`backend:name (hash 0123456789ab)`, for messages."""
    return (
        f"{identity.get('backend')}:{identity.get('name')} (hash {str(identity.get('hash'))[:12]})"
    )
