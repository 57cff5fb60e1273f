"""Name -> class registries for jobs, datasets and evaluations.

Entries are added by decorators (`@job("gpt/train/pretrain")`). Listing must stay fast and must
not import JAX, so the built-in modules are indexed by reading their source (the decorator calls
and the first docstring line) and imported only when an entry is actually used.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import sys
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from theseus.errors import UserError, first_line

T = TypeVar("T")
_PACKAGE_ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Listing:
    """What `theseus jobs` shows for one name, known without importing its module."""

    name: str
    module: str
    description: str
    where: str = ""  # FILE:LINE of the registering decorator


def _summary(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ").strip()


def _indexed(decorator: str) -> list[Listing]:
    """Find `@decorator("name")` in the package's sources without importing them."""
    found = []
    for path in sorted(_PACKAGE_ROOT.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if f"@{decorator}(" not in text:
            continue
        module = ".".join(path.relative_to(_PACKAGE_ROOT.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.ClassDef | ast.FunctionDef):
                continue
            for dec in node.decorator_list:
                if (
                    isinstance(dec, ast.Call)
                    and isinstance(dec.func, ast.Name)
                    and dec.func.id == decorator
                    and dec.args
                    and isinstance(dec.args[0], ast.Constant)
                    and isinstance(dec.args[0].value, str)
                ):
                    found.append(
                        Listing(
                            dec.args[0].value,
                            module,
                            _summary(ast.get_docstring(node)),
                            f"{path}:{dec.lineno}",
                        )
                    )
    return found


class Registry(Generic[T]):
    """A name -> object table filled by a decorator; registering a name twice is an error."""

    def __init__(self, kind: str, decorator: str) -> None:
        self.kind = kind
        self.decorator = decorator
        self._entries: dict[str, T] = {}
        self._index: dict[str, Listing] | None = None

    def _builtin(self) -> dict[str, Listing]:
        if self._index is None:
            self._index = {}
            for listing in _indexed(self.decorator):
                if listing.name in self._index:
                    other = self._index[listing.name].module
                    raise RuntimeError(
                        f"{self.kind} {listing.name!r} is registered twice: in {other} and {listing.module}"
                    )
                self._index[listing.name] = listing
        return self._index

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name`."""

        def add(obj: T) -> T:
            known = self._entries.get(name)
            if known is not None and _qualname(known) != _qualname(obj):
                raise self._twice(name, _where(known), _where(obj))
            listing = self._builtin().get(name)
            module = getattr(obj, "__module__", "")
            if listing is not None and listing.module != module and module != "__main__":
                raise self._twice(name, listing.where, _where(obj))
            self._entries[name] = obj
            return obj

        return add

    def _twice(self, name: str, first: str, second: str) -> UserError:
        return UserError(
            f"{self.kind} {name!r} is defined twice: at {first} and at {second}; rename one of them"
        )

    def names(self) -> list[str]:
        return sorted(set(self._builtin()) | set(self._entries))

    def name_of(self, obj: object) -> str:
        """The name `obj` is registered under ("" when it is not)."""
        return next((name for name, entry in self._entries.items() if entry is obj), "")

    def listings(self) -> list[Listing]:
        """Every name with its one-line description; imports nothing that is not loaded yet."""
        rows = dict(self._builtin())
        for name, obj in self._entries.items():
            rows[name] = Listing(name, getattr(obj, "__module__", ""), _summary(obj.__doc__))
        return [rows[name] for name in sorted(rows)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._builtin()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            listing = self._builtin().get(name)
            if listing is None:
                raise UserError(self.unknown(name))
            importlib.import_module(listing.module)
        return self._entries[name]

    def unknown(self, name: str) -> str:
        return unknown_name(self.kind, name, self.names())


def unknown_name(kind: str, name: str, names: list[str]) -> str:
    """The error for `name`, which is not among the `names` registered as `kind`."""
    import difflib

    near = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(near)}?" if near else f"known: {', '.join(names)}."
    return (
        f"unknown {kind} {name!r}; {hint} "
        "If your own code defines it, add --load FILE.py (or --load MODULE)"
    )


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _where(obj: Any) -> str:
    """FILE:LINE where `obj` is defined (its first decorator), else its qualified name."""
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (OSError, TypeError):
        return _qualname(obj)


JOBS: Registry[Any] = Registry("job", "job")
DATASETS: Registry[Any] = Registry("dataset", "dataset")
EVALUATIONS: Registry[Any] = Registry("evaluation", "evaluation")

# by kind: what a setting declared with `field(..., registry=KIND)` names
REGISTRIES: dict[str, Registry[Any]] = {r.kind: r for r in (JOBS, DATASETS, EVALUATIONS)}

job = JOBS.register
dataset = DATASETS.register
evaluation = EVALUATIONS.register


def _import_failure(target: str, exc: Exception) -> UserError:
    """One line for user code that does not import: the error, where, and the -v hint.

    The line is the failing line of the user's own code: the SyntaxError's, else the last
    frame of the traceback outside Python's import machinery.
    """
    file = Path(target).expanduser().resolve()

    def at(filename: str | None, line: int | None) -> str:
        where = f" in {filename}" if filename and Path(filename) != file else ""
        return f"{where} at line {line}" if line else where

    if isinstance(exc, SyntaxError):
        return UserError(
            f"--load {target}: SyntaxError{at(exc.filename, exc.lineno)}: {exc.msg} "
            "(-v shows the traceback)"
        )
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen") and frame.filename != __file__
    ]
    where = at(frames[-1].filename, frames[-1].lineno) if frames else ""
    return UserError(
        f"--load {target}: {type(exc).__name__}{where}: {first_line(exc)} (-v shows the traceback)"
    )


def load(target: str) -> None:
    """Import user code (a module name or a .py file) so that its registrations take effect."""
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"--load {target}: no such file")
        # the same name in every process: a cached schema names the module its classes are in
        name = f"theseus_user_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise UserError(f"--load {target}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except UserError:  # said in theseus's words already (a job registered twice, say)
            sys.modules.pop(name, None)
            raise
        except Exception as exc:  # the user's code, failing as it runs: any error it raises
            sys.modules.pop(name, None)
            raise _import_failure(target, exc) from exc
        return
    if not target.strip() or target.startswith("."):
        raise UserError(f"--load {target!r}: give a module name (my_project.models) or a .py file")
    try:
        importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise UserError(
                f"--load {target}: no module named {exc.name!r} (give a module on sys.path or a .py file)"
            ) from None
        raise _import_failure(target, exc) from exc
    except UserError:
        raise
    except Exception as exc:  # the user's code, failing as it runs: any error it raises
        raise _import_failure(target, exc) from exc
