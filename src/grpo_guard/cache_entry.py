"""Cache entries that are never half-written: ``<stem>.safetensors`` (the tensors) and ``<stem>.json`` (the
metadata and the manifest: the tensors file's size and SHA-256).

:func:`write_entry` writes the tensors to a temporary name, renames it into place, then writes the JSON
the same way: the JSON is the entry's commit, so a process killed at any point leaves either the old
state or a complete entry (or a tensors file without a manifest, which is not an entry).
:func:`read_entry` verifies the manifest before it trusts the tensors: an entry that is partial,
truncated, corrupt or from before manifests is reported in one line, removed and rebuilt by the caller,
never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["write_entry", "read_entry", "entry_exists", "file_sha256", "atomic_write_text"]


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, flushed to disk, then renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def entry_exists(stem: str | Path) -> bool:
    """Both files of the entry are there (not yet verified: :func:`read_entry` does that)."""
    stem = Path(stem)
    return stem.with_suffix(".safetensors").is_file() and stem.with_suffix(".json").is_file()


def write_entry(stem: str | Path, tensors: dict[str, Tensor], meta: dict) -> None:
    """Write the entry ``stem``: the tensors, then ``meta`` plus the manifest (``"manifest": {"bytes",
    "sha256"}``) as JSON, each atomically (see the module docstring)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_suffix(".safetensors")
    tmp = weights.with_name(f".{weights.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    _fsync(tmp)
    os.replace(tmp, weights)
    manifest = {"bytes": weights.stat().st_size, "sha256": file_sha256(weights)}
    atomic_write_text(stem.with_suffix(".json"), json.dumps({**meta, "manifest": manifest}, indent=2, sort_keys=True))


def _problem(stem: Path) -> tuple[str | None, dict | None]:
    """(what is wrong with the entry or None, its metadata)."""
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not meta_path.is_file():
        return "no manifest (written only in part)", None
    if not weights.is_file():
        return "its tensors file is missing", None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return "its manifest is unreadable", None
    manifest = meta.get("manifest") if isinstance(meta, dict) else None
    if not isinstance(manifest, dict):
        return "its manifest has no checksum (written by an older version)", None
    size = weights.stat().st_size
    if size != manifest.get("bytes"):
        return f"its tensors file has {size} bytes, the manifest says {manifest.get('bytes')}", None
    if file_sha256(weights) != manifest.get("sha256"):
        return "its tensors file does not match the manifest's checksum", None
    return None, meta


def read_entry(stem: str | Path, log: Callable[[str], None] = print) -> tuple[dict[str, Tensor], dict] | None:
    """The entry's ``(tensors, metadata)`` when it is complete and matches its manifest; None when there is no
    entry. An entry that fails the check is removed, with a one-line notice through ``log``, and None is
    returned, so that the caller rebuilds it."""
    stem = Path(stem)
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not weights.exists() and not meta_path.exists():
        return None
    problem, meta = _problem(stem)
    tensors = None
    if problem is None:
        try:
            tensors = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            problem = f"its tensors file does not load ({e})"
    if problem is not None:
        log(f"cache entry {stem} is incomplete or corrupt ({problem}): rebuilding it")
        meta_path.unlink(missing_ok=True)  # the manifest first: what is left is never taken for an entry
        weights.unlink(missing_ok=True)
        return None
    meta = dict(meta)
    meta.pop("manifest", None)
    return tensors, meta
