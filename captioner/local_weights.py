"""Where an in-process model's weights are: a folder on disk, or a Hugging Face
repository in the Hugging Face cache (downloaded by `captioner models pull`,
or by the first `caption` that needs them unless `HF_HUB_OFFLINE=1`).

Everything here imports `huggingface_hub` lazily: it comes with the `local`
extra (`pip install 'captioner[local]'`), and the rest of captioner never needs it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The files a model needs (weights, configs, tokenizer, chat template); a
# repository's ONNX and GGUF copies are left out.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
IGNORE_PATTERNS = ["onnx/*", "*.onnx", "*.gguf"]
EXTRA = "pip install 'captioner[local]'"


class WeightsError(Exception):
    """The weights cannot be found or fetched; the message says how to get them, in one line."""


@dataclass(frozen=True)
class Weights:
    """A model's weights: a Hugging Face repository id, or a folder on disk."""

    repo_id: str | None = None
    folder: Path | None = None

    @property
    def label(self) -> str:
        return self.repo_id or str(self.folder)


def extra_installed() -> bool:
    """Whether the `local` extra's libraries are importable (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers", "huggingface_hub"))


def hub_cache() -> str | None:
    """The Hugging Face cache folder as the environment says now (the hub library reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_folder(weights: Weights) -> Path | None:
    """The folder the model loads from, if its files are on disk (never downloads)."""
    if weights.folder is not None:
        return weights.folder if (weights.folder / "config.json").is_file() else None
    if not extra_installed():
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(weights.repo_id, allow_patterns=ALLOW_PATTERNS, cache_dir=hub_cache(),
                                        ignore_patterns=IGNORE_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "config.json").is_file() else None


def download_size(repo_id: str) -> int | None:
    """Bytes `pull` will fetch, from the hub's file list (None if it cannot say)."""
    from fnmatch import fnmatch

    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
    except Exception:  # any hub or network fault: the size is only announced
        return None
    total = 0
    for sibling in info.siblings or []:
        name = sibling.rfilename
        if any(fnmatch(name, p) for p in ALLOW_PATTERNS) and not any(fnmatch(name, p) for p in IGNORE_PATTERNS):
            total += sibling.size or 0
    return total


def pull(weights: Weights, announce: Callable[[str], None]) -> Path:
    """Download the weights into the Hugging Face cache (with the hub's progress
    bars), saying the size first; the folder is returned."""
    if weights.folder is not None:
        folder = cached_folder(weights)
        if folder is None:
            raise WeightsError(f"{weights.folder} is not a model folder (no config.json in it)")
        return folder
    if not extra_installed():
        raise WeightsError(f"local models need the local extra: {EXTRA}")
    if offline():
        raise WeightsError(f"the weights of {weights.repo_id} are not downloaded and HF_HUB_OFFLINE=1 is set: "
                           f"run `captioner models pull` for it where the network is reachable, "
                           f"or give a model folder with -m local/PATH")
    from huggingface_hub import snapshot_download

    size = download_size(weights.repo_id or "")
    announce(f"downloading {weights.repo_id}" + (f" ({size / 1e9:.2f} GB)" if size else "") +
             " into the Hugging Face cache")
    try:
        return Path(snapshot_download(weights.repo_id, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
                                      cache_dir=hub_cache()))
    except Exception as exc:  # the hub's errors are many; all mean "not downloaded"
        raise WeightsError(f"cannot download {weights.repo_id}: {str(exc).splitlines()[0][:200]}") from exc


def ready_folder(weights: Weights, announce: Callable[[str], None]) -> Path:
    """The weights' folder, downloading them first if they are missing (unless offline)."""
    if not extra_installed():
        raise WeightsError(f"local models need the local extra: {EXTRA}")
    folder = cached_folder(weights)
    if folder is not None:
        return folder
    if weights.folder is not None:
        raise WeightsError(f"{weights.folder} is not a model folder (no config.json in it)")
    return pull(weights, announce)
