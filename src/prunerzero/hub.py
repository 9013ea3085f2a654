"""One quick question to the Hugging Face hub before a download that would retry for half a minute.

Offline, ``from_pretrained`` and ``load_dataset`` retry each request five times with back-off (about
25 s, printing a line per retry) before they fail. One metadata request with a short timeout, through
huggingface_hub (its endpoint, proxies and token), tells first whether the hub answers at all.
"""
from __future__ import annotations

import os
from typing import Literal

Answer = Literal["found", "missing", "unreachable", "unknown"]


def offline_mode(data: bool = False) -> bool:
    """Whether the user asked for offline mode (HF_HUB_OFFLINE; for `data`, HF_DATASETS_OFFLINE too):
    then the downloads read the local cache and never ask the hub."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    datasets_offline = os.environ.get("HF_DATASETS_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE) or (data and datasets_offline)


def ask(repo_id: str, repo_type: Literal["model", "dataset"] = "model", timeout: float = 10) -> tuple[Answer, str]:
    """(answer, the exception's type name when unreachable) for a repo on the hub: found (or gated),
    missing (no such repo, or private), unreachable (no answer), unknown (huggingface_hub missing)."""
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover - an unexpected huggingface_hub: leave the reporting to the download
        return "unknown", ""
    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=timeout)
    except GatedRepoError:
        return "found", ""  # it exists; the download says what access it needs
    except RepositoryNotFoundError:
        return "missing", ""
    except Exception as exc:  # noqa: BLE001 -- connection errors come in many kinds
        return "unreachable", type(exc).__name__
    return "found", ""
