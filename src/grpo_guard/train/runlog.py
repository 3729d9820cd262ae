"""Run-directory files: metrics.jsonl, image grids, the lock, atomic writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..cache_entry import atomic_write_text
from .faults import fault_point

__all__ = ["atomic_write_text", "to_jsonable", "MetricsLog", "image_grid", "save_image_grid", "RunLock", "RunDirError"]


class RunDirError(RuntimeError):
    """The output directory cannot be used (holds another run, locked, unwritable)."""


def to_jsonable(value: Any) -> Any:
    """Tensors -> lists/numbers, NaN/Inf -> None, recursively."""
    if torch.is_tensor(value):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


class MetricsLog:
    """One JSON object per line and per epoch. Each line is flushed as it is written (a crash of the
    process loses nothing); :meth:`sync` (called before every checkpoint) makes them durable on disk,
    so a power loss cannot leave a checkpoint whose metrics rows are missing. Rows after the last
    checkpoint are dropped on resume anyway."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash: ignore it and everything after
        return out

    def append(self, row: dict) -> None:
        fault_point("metrics_write")
        with open(self.path, "a") as f:
            f.write(json.dumps(to_jsonable(row), allow_nan=False) + "\n")
            f.flush()

    def sync(self) -> None:
        """fsync the file (a no-op when it does not exist yet)."""
        if self.path.is_file():
            with open(self.path, "a") as f:
                os.fsync(f.fileno())

    def truncate_before(self, epoch: int) -> None:
        """Keep only the rows of epochs < ``epoch`` (used when resuming from a checkpoint)."""
        kept = [r for r in self.rows() if r.get("epoch", -1) < epoch]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def image_grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """(N, C, H, W) images in [0, 1] tiled ``nrow`` to a row on a white background with 1-pixel gaps:
    uint8 (H', W', C)."""
    n, c, h, w = images.shape
    ncol = nrow
    nrows = math.ceil(n / ncol)
    pad = 1
    grid = torch.ones((c, nrows * (h + pad) + pad, ncol * (w + pad) + pad))
    for i in range(n):
        r, col = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = images[i]
    return (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def save_image_grid(images: torch.Tensor, path: Path, nrow: int, labels: list[str] | None = None) -> None:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid (:func:`image_grid`, atomically)."""
    h, c = images.shape[2], images.shape[1]
    arr = image_grid(images, nrow)
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr)
    scale = max(1, 256 // max(h, images.shape[3], 1))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    img.save(tmp)
    os.replace(tmp, path)


class RunLock:
    """A lock file holding the owner's pid; a stale lock (dead pid) is taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid) and pid != os.getpid():
                    raise RunDirError(f"output dir {self.path.parent} is in use by another run (pid {pid})") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return
        raise RunDirError(f"could not lock {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
