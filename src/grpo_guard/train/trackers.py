"""Experiment trackers: each epoch's metrics row, the per-step ratio and clip statistics and the evaluation
image grids, sent to TensorBoard and / or Weights & Biases as well as ``metrics.jsonl`` (``log.trackers``).

Both are optional extras (``pip install 'grpo-guard[trackers]'``). A tracker that is not installed stops the
run before any model is built (:func:`require_trackers`), one that cannot start (no write access, W&B not
logged in while online) before the first epoch, each with one line. Only the main process logs.

* ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``). A resumed run
  drops the events after its checkpoint's epoch and continues.
* ``wandb``: a run in project ``log.wandb_project`` named after the run directory; offline with
  ``WANDB_MODE=offline`` (then ``wandb sync`` uploads it later). Its id is kept in ``RUN_DIR/wandb_id`` so a
  resumed run continues the same W&B run.

Scalars: every number of the row under its own name (``proxy_reward_mean``, ``eval/...``, ``gold_norm/...``);
the per-step statistics as ``steps/<stat>/step_<k>`` (``k`` the schedule index) and, for W&B, also as a
table per epoch; image grids as ``images/eval``.
"""

from __future__ import annotations

import importlib
import math
import os
import secrets
from pathlib import Path

import numpy as np

from ..config import RunConfig, config_to_dict
from .runlog import image_grid

__all__ = ["TRACKERS", "TrackerError", "Trackers", "require_trackers", "start_trackers", "flatten_row"]

TRACKERS = ("tensorboard", "wandb")


class TrackerError(ValueError):
    """A tracker could not start or log (the message says what to install or set)."""


def _import(module: str, tracker: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TrackerError(f"log.trackers: {tracker} needs the optional package {module.split('.')[0]!r} "
                           f"({e.name or e}): pip install 'grpo-guard[trackers]'") from None


def flatten_row(row: dict) -> dict[str, float]:
    """The row's finite numbers as ``name -> value``; the per-step statistics (``step_stats``, lists over the
    trained steps ``trained_steps``) as ``steps/<stat>/step_<k>``; per-step gradient norms likewise."""
    out: dict[str, float] = {}
    steps = row.get("trained_steps") or []
    for key, value in row.items():
        if isinstance(value, bool) or key in ("epoch", "trained_steps"):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    for stat, values in (row.get("step_stats") or {}).items():
        for k, v in zip(steps, values):
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[f"steps/{stat}/step_{k}"] = float(v)
    for k, v in zip(steps, row.get("grad_norm_step") or []):
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[f"steps/grad_norm/step_{k}"] = float(v)
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, cfg: RunConfig, first_epoch: int):
        tb = _import("torch.utils.tensorboard", "tensorboard")
        try:
            self.writer = tb.SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=first_epoch or None)
        except OSError as e:
            raise TrackerError(f"log.trackers: tensorboard cannot write {run_dir / 'tensorboard'} "
                               f"({e.strerror or e})") from None

    def log(self, row: dict, step: int) -> None:
        for key, value in flatten_row(row).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def image(self, name: str, grid: np.ndarray, step: int) -> None:
        self.writer.add_image(name, grid, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, cfg: RunConfig, first_epoch: int):
        wandb = _import("wandb", "wandb")
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)  # W&B: [a-z0-9]
        try:
            self.run = wandb.init(project=cfg.log.wandb_project, name=run_dir.name, id=run_id, resume="allow",
                                  dir=str(run_dir), config=config_to_dict(cfg), reinit="finish_previous")
        except Exception as e:  # noqa: BLE001 - login, network, permissions: all one line before training
            raise TrackerError(f"log.trackers: wandb could not start ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); log in with `wandb login`, or set "
                               f"WANDB_MODE=offline") from None
        id_file.write_text(run_id)
        self.wandb = wandb

    def log(self, row: dict, step: int) -> None:
        data: dict = dict(flatten_row(row))
        stats = row.get("step_stats")
        if stats:
            cols = ["step", *stats]
            data["steps/table"] = self.wandb.Table(
                columns=cols, data=[[k, *(stats[c][i] for c in stats)] for i, k in enumerate(row["trained_steps"])])
        self.run.log(data, step=step)

    def image(self, name: str, grid: np.ndarray, step: int) -> None:
        self.run.log({name: self.wandb.Image(grid)}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The run's trackers, called by the recipe after each metrics row and image grid (no-ops without any)."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, row: dict) -> None:
        for t in self.trackers:
            t.log(row, int(row["epoch"]))

    def image(self, name: str, images, nrow: int, step: int) -> None:
        """``images`` (N, C, H, W) in [0, 1], tiled ``nrow`` per row as in the saved PNG grid."""
        if not self.trackers:
            return
        grid = image_grid(images.detach().float().cpu(), nrow)  # the saved PNG grid's layout
        if grid.shape[2] == 1:
            grid = np.repeat(grid, 3, axis=2)
        for t in self.trackers:
            t.image(name, grid, step)

    def close(self) -> None:
        for t in self.trackers:
            t.close()
        self.trackers = []


_MAKERS = {"tensorboard": _TensorBoard, "wandb": _WandB}
_MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb"}


def require_trackers(cfg: RunConfig) -> None:
    """Import the packages of the trackers ``cfg.log.trackers`` names, or raise :class:`TrackerError`."""
    for name in cfg.log.trackers:
        _import(_MODULES[name], name)


def start_trackers(cfg: RunConfig, run_dir: Path, first_epoch: int, is_main: bool) -> Trackers:
    """Start the trackers ``cfg.log.trackers`` names (on the main process), or raise :class:`TrackerError`.
    ``first_epoch``: the epoch the run starts at (a resumed run's TensorBoard drops later events)."""
    if not is_main:
        return Trackers([])
    os.environ.setdefault("WANDB_SILENT", "true")
    started = []
    try:
        for name in cfg.log.trackers:
            started.append(_MAKERS[name](Path(run_dir), cfg, first_epoch))
    except BaseException:
        Trackers(started).close()
        raise
    return Trackers(started)
