"""Checkpoints: safetensors for tensors, JSON for everything else, a manifest of checksums.

Layout of ``RUN_DIR/checkpoints/epoch_000010/``::

    trainable.safetensors   the trainable weights (LoRA or full velocity network)
    optimizer.safetensors   the optimizer's tensor state;  optimizer.json  its structure
    ema.safetensors         EMA weights (if EMA is on)
    state.json              epoch, monitor state, base gold values, counters, global RNG states
    manifest.json           sha256 of every file (written last)

A checkpoint directory is built under a temporary name and renamed into place, so a crash never
leaves a half-written checkpoint under a valid name. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .faults import fault_point

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint",
           "optimizer_to_tensors", "optimizer_from_tensors"]

MANIFEST = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def optimizer_to_tensors(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into flat tensors and a JSON-able structure."""
    tensors: dict[str, torch.Tensor] = {}
    structure: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, pstate in state["state"].items():
        entry = {}
        for key, val in pstate.items():
            if torch.is_tensor(val):
                name = f"state.{pid}.{key}"
                tensors[name] = val.detach().cpu().contiguous()
                entry[key] = {"tensor": name}
            else:
                entry[key] = {"value": val}
        structure["state"][str(pid)] = entry
    return tensors, structure


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    state = {}
    for pid, entry in structure["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()}
    return {"state": state, "param_groups": structure["param_groups"]}


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state().tolist(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_checkpoint(run_dir: Path, epoch: int, *, trainable: dict[str, torch.Tensor], optimizer: dict,
                    ema: dict[str, torch.Tensor] | None, state: dict, keep: int) -> Path:
    """Write checkpoint ``epoch`` (the number of completed epochs) atomically; keep the newest ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"epoch_{epoch:06d}"
    tmp = ckpt_root / f".tmp_epoch_{epoch:06d}"
    for stale in ckpt_root.glob(".tmp_epoch_*"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_files(tmp, epoch, trainable=trainable, optimizer=optimizer, ema=ema, state=state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # e.g. disk full: the older checkpoints stay as they were
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_files(tmp: Path, epoch: int, *, trainable, optimizer, ema, state) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, tmp / "trainable.safetensors")
    fault_point("checkpoint_write")
    opt_tensors, opt_structure = optimizer_to_tensors(optimizer)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(opt_structure))
    if ema is not None:
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.items()}, tmp / "ema.safetensors")
    (tmp / "state.json").write_text(json.dumps({**state, "epoch": epoch, "rng": _rng_state()}))
    fault_point("checkpoint_write")
    files = sorted(p.name for p in tmp.iterdir())
    manifest = {"epoch": epoch, "files": {name: _sha256(tmp / name) for name in files}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch_"))


def verify_checkpoint(path: Path) -> dict:
    """Check the manifest's checksums; returns the manifest or raises CheckpointError."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST} (incomplete checkpoint)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: {MANIFEST} is not valid JSON") from None
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} does not match its checksum (corrupted)")
    return manifest


def latest_checkpoint(run_dir: Path, log=print) -> Path | None:
    """The newest checkpoint that verifies; corrupted ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as e:
            log(f"warning: skipping checkpoint: {e}")
    return None


def load_checkpoint(path: Path) -> dict:
    """Load a verified checkpoint: dict with trainable, optimizer (a state dict), ema, state."""
    path = Path(path)
    verify_checkpoint(path)
    out = {
        "trainable": load_file(path / "trainable.safetensors"),
        "optimizer": optimizer_from_tensors(load_file(path / "optimizer.safetensors"),
                                            json.loads((path / "optimizer.json").read_text())),
        "ema": load_file(path / "ema.safetensors") if (path / "ema.safetensors").is_file() else None,
        "state": json.loads((path / "state.json").read_text()),
    }
    _set_rng_state(out["state"].pop("rng"))
    return out
