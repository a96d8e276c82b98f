"""Whether the Hugging Face Hub can be reached, asked once by a command before it reads anything by hub id.

Offline, huggingface_hub tries each file it looks up six times over about 23 s, printing a warning for every try,
before it falls back to its cache or fails: minutes for one model. One short request tells instead. When it opens
no connection, the command reads hub files from the local cache only (``HF_HUB_OFFLINE=1`` for its own process and
those it starts), as if the user had set it, and says so. This module imports no Hub client: the setting is read
when huggingface_hub is imported.
"""

from __future__ import annotations

import os

import httpx

from toolkit.errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 5.0
"""Seconds to wait for the endpoint: a firewall that drops packets answers nothing, a DNS failure at once."""
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""The variables that put huggingface_hub and transformers offline (either one)."""
HUB_READING_COMMANDS = frozenset({"train", "eval", "plan", "predict", "merge", "export"})
"""Commands that may load a model, tokenizer or data set by hub id (``push`` needs the hub itself)."""


def endpoint() -> str:
    """The Hub's address: ``HF_ENDPOINT`` (a mirror) or huggingface.co."""
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def offline_set() -> bool:
    """Whether the user already put the Hub client offline: the variables read as huggingface_hub reads them, here
    because importing it would fix its settings before this module could change them."""
    return any(os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE") for name in OFFLINE_VARIABLES)


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S, field: str = "HF_ENDPOINT") -> bool:
    """Whether ``url`` answers at all (any HTTP status counts; no connection, or none within ``timeout``, does not);
    a UserError naming ``field`` (where the address was given) when ``url`` is no http(s) address."""
    try:
        httpx.head(url, timeout=timeout)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise UserError(f"{field}: {url!r} is no http(s) address ({exc})") from None
    except httpx.TransportError:
        return False
    return True


def work_offline() -> None:
    """Read hub files from the local cache only, in this process and those it starts (``HF_HUB_OFFLINE=1``)."""
    os.environ["HF_HUB_OFFLINE"] = "1"


def cache_only_unless_reachable(command: str) -> str | None:
    """Put this process (and the processes it starts) offline when ``command`` reads by hub id and the Hub cannot be
    reached; the line that says so, else ``None``. Call it before huggingface_hub is imported."""
    if command not in HUB_READING_COMMANDS or offline_set() or reachable(endpoint()):
        return None
    work_offline()
    return (f"hub: {endpoint()} cannot be reached, so models and data sets named by hub id are read from the local "
            "cache only (HF_HUB_OFFLINE=1)")
