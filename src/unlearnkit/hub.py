"""Loading a model or dataset the user named on the Hugging Face hub, with one line when the hub is out of reach.

Without a network, ``from_pretrained`` and ``datasets.load_dataset`` retry each request five times with
back-off before giving up: about a minute of retry warnings for a misspelled name. So before going to the
hub we ask once whether it answers at all (``HF_HUB_OFFLINE`` set, or one HEAD request to the endpoint
failing, means no); when it does not, only the local hub cache is read, and a name that is not in it ends in
one ``UserError`` line. With the hub reachable, loading is the libraries' usual (online) path.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Iterator

from unlearnkit.errors import UserError

PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=None)
def hub_reachable() -> bool:
    """Whether the hub endpoint answers (asked once per process); False in offline mode."""
    from huggingface_hub import constants, get_session

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return False
    try:
        # Any HTTP answer (even an error status) means the hub can be reached; the session honours proxies.
        get_session().head(constants.ENDPOINT, timeout=PROBE_TIMEOUT_S)
    except Exception:  # DNS failure, refused connection, timeout, offline mode: all mean "unreachable"
        return False
    return True


def unreachable_error(kind: str, name: str) -> UserError:
    """The one line for a name that is neither local nor in the hub cache while the hub is out of reach."""
    return UserError(f"{kind} '{name}' not found locally and the hub is unreachable: pass a local folder or check the name")


def is_local(name_or_path: str) -> bool:
    """A path that exists on disk: loading it never involves the hub."""
    return Path(name_or_path).expanduser().exists()


def looks_like_path(name: str) -> bool:
    """A name no hub repo id can have ("name" or "owner/name"): absolute, relative to ., ~, or deeper."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def from_pretrained(loader: Any, name_or_path: str, kind: str = "model", **kwargs: Any) -> Any:
    """``loader.from_pretrained(name_or_path, **kwargs)``; with the hub unreachable, from the local hub cache
    only (``local_files_only``), and a name not cached there raises ``unreachable_error`` (other errors pass).
    A path that does not exist is named as such: it was never meant for the hub."""
    if not is_local(name_or_path) and looks_like_path(name_or_path):
        raise UserError(f"{kind} folder '{name_or_path}' not found; check the path")
    if is_local(name_or_path) or hub_reachable():
        return loader.from_pretrained(name_or_path, **kwargs)
    try:
        return loader.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError:  # transformers' "not in the cache" (and no network to fetch it)
        raise unreachable_error(kind, name_or_path) from None


@contextlib.contextmanager
def datasets_offline() -> Iterator[None]:
    """``datasets`` in offline mode for the duration: it reads only its cache and makes no request.

    ``datasets`` and ``huggingface_hub`` read HF_HUB_OFFLINE once, at import, into module constants, so
    setting the environment variable now would change nothing; the constants are set and restored."""
    import datasets.config
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved
