"""Reaching the Hugging Face hub: a fast check first, so that no network means a quick, clear error."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request

from theseus.errors import UserError

_TIMEOUT_S = 5.0


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(timeout: float = _TIMEOUT_S) -> str | None:
    """None when the hub answers within `timeout` seconds, else the reason it does not."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return url_reachable(hub_endpoint() + "/api/whoami-v2", timeout)


def url_reachable(url: str, timeout: float = _TIMEOUT_S) -> str | None:
    """None when the server of `url` answers within `timeout` seconds, else the reason it does not.

    Asked from a helper thread: urlopen's timeout does not cover the name lookup, which a
    broken resolver can hold for minutes.
    """
    server = url.split("/")[2] if "://" in url else url
    answer: list[str | None] = []

    def ask() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # any HTTP answer means the server is there
        except Exception as exc:  # whatever stopped the request, the server did not answer
            answer.append(f"{server} unreachable: {getattr(exc, 'reason', exc)}")
            return
        answer.append(None)

    asking = threading.Thread(target=ask, name="theseus-reachable", daemon=True)
    asking.start()
    asking.join(timeout)
    return answer[0] if answer else f"{server} unreachable: no answer in {timeout:.0f} s"


def require_hub(what: str, fix: str) -> None:
    """Raise a one-line UserError naming `fix` when the hub cannot be reached."""
    reason = hub_reachable()
    if reason is not None:
        raise UserError(f"{what} needs the Hugging Face hub ({reason}); {fix}")
