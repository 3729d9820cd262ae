"""What the ``benchmarks/`` scripts that measure one ``grpo-guard bench`` setting share: their arguments
and the run config they build (imported as a sibling module: the scripts run as ``python benchmarks/X.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from grpo_guard.bench import SETTINGS, setting_spec


def setting_parser(epochs: int) -> argparse.ArgumentParser:
    """The arguments ``SETTING [--epochs N] [--out DIR] [--set KEY=VALUE ...]``, ``epochs`` the default."""
    ap = argparse.ArgumentParser()
    ap.add_argument("setting", choices=list(SETTINGS))
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--out", type=Path, default=Path("runs/bench"), help="where bench keeps its tiny SD3 pipeline")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    return ap


def setting_config(ap: argparse.ArgumentParser, a: argparse.Namespace, min_epochs: int = 1):
    """The run config of ``a.setting`` for a run in this process (2 torch threads, as the bench's children,
    no checkpoints), after ``--epochs`` is checked against ``min_epochs``."""
    import torch

    from grpo_guard.config import load_config

    if a.epochs < min_epochs:
        ap.error(f"--epochs: at least {min_epochs} (the first epoch is not counted)")
    torch.set_num_threads(2)
    spec = setting_spec(a.setting, a.out, a.epochs, ["log.checkpoint_every=0", *a.set])
    return load_config(spec["config"], spec["overrides"])
