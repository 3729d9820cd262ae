"""Use a finished run outside the training loop: rebuild its backbone, evaluate or export a checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..backbones import BackboneContext, build_backbone
from ..config import load_config
from ..prompts import load_prompt_set
from ..rewards import RewardContext, build_evaluator, build_reward
from .checkpoint import latest_checkpoint, verify_checkpoint
from .evaluate import evaluate_policy, normalise_gold
from .summary import gold_lines, gold_reward_names

__all__ = ["run_dir_of", "evaluate_checkpoint", "load_checkpoint_backbone", "export_run"]


def run_dir_of(checkpoint: Path) -> Path:
    """RUN/checkpoints/epoch_N -> RUN; RUN/best -> RUN."""
    checkpoint = Path(checkpoint)
    for cand in (checkpoint.parent.parent, checkpoint.parent):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"checkpoint: no config.yaml found above {checkpoint}")


def load_checkpoint_backbone(checkpoint: Path, *, use_ema: bool = True, overrides: list[str] | None = None):
    """``(cfg, backbone, run_dir)``: the run's backbone with the checkpoint's trainable weights (its EMA
    weights when present and ``use_ema``), in eval mode. ``checkpoint`` is RUN/checkpoints/epoch_N or RUN/best;
    a checkpoint with a manifest is verified first."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint: no such directory {checkpoint}")
    run = run_dir_of(checkpoint)
    cfg = load_config(str(run / "config.yaml"), overrides or [])
    if (checkpoint / "manifest.json").is_file():
        verify_checkpoint(checkpoint)
    weights = checkpoint / "trainable.safetensors"
    if use_ema and (checkpoint / "ema.safetensors").is_file():
        weights = checkpoint / "ema.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint: {weights} is missing")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache = Path(cfg.cache_dir).expanduser()
    backbone = build_backbone(cfg.backbone.name, cfg.backbone.params, BackboneContext(cache, device, cfg.seed, False))
    backbone.to(device).eval()
    state = load_file(weights)
    if weights.name == "ema.safetensors":  # EMA tensors are stored by position
        names = list(backbone.trainable_state_dict())
        state = {names[int(k)]: v for k, v in state.items()}
    backbone.load_trainable_state_dict(state)
    return cfg, backbone, run


def evaluate_checkpoint(checkpoint: Path, *, samples_per_prompt: int | None = None, use_ema: bool = True) -> dict:
    overrides = [f"eval.samples_per_prompt={samples_per_prompt}"] if samples_per_prompt else []
    cfg, backbone, run = load_checkpoint_backbone(checkpoint, use_ema=use_ema, overrides=overrides)
    device = next(iter(backbone.parameters())).device
    cache = Path(cfg.cache_dir).expanduser()
    rctx = RewardContext(cache, device, cfg.seed, getattr(backbone, "image_size", None))
    rewards = {spec.name: build_reward(spec.name, spec.params, rctx) for spec in cfg.rewards}
    evaluator = build_evaluator(cfg.eval.evaluator, cfg.eval.evaluator_params, rctx) if cfg.eval.evaluator else None
    res, _ = evaluate_policy(backbone, cfg, load_prompt_set(cfg.prompts.source, cfg.prompts.path), rewards, evaluator,
                             device=device)
    base = None
    ckpts = sorted((run / "checkpoints").glob("epoch_*/state.json"))
    if ckpts:
        base = json.loads(ckpts[-1].read_text()).get("base_gold")
    res.update(normalise_gold(res, base, evaluator, tuple(r.name for r in cfg.rewards if r.role == "gold")))
    res["checkpoint"] = str(checkpoint)
    return res


def checkpoint_gold_lines(result: dict, checkpoint: Path) -> list[str]:
    """``evaluate_checkpoint``'s result as the gold lines of a run's summary: each gold from the base model's
    evaluation (the run's ``base_eval.json``) to this checkpoint's."""
    run = Path(checkpoint).resolve().parent
    run = run.parent if run.name == "checkpoints" else run
    base_path = run / "base_eval.json"
    base = json.loads(base_path.read_text()) if base_path.is_file() else {}
    keys = ["gold_normalized_avg", *sorted(k for k in result if k.startswith(("gold_norm/", "gold/"))),
            *(f"eval/{name}_mean" for name in gold_reward_names(run))]
    golds = {k: {"base": 1.0 if k == "gold_normalized_avg" or k.startswith("gold_norm/") else base.get(k),
                 "final": result[k]} for k in keys if k in result}
    return gold_lines(golds, final=f"{Path(checkpoint).name}")


def export_run(run_dir: Path, out: Path, *, checkpoint: Path | None = None, merge: bool = False,
               use_ema: bool = True) -> list[Path]:
    """Export a run's trained weights for diffusers (see the backbone's ``export``): the newest valid
    checkpoint unless ``checkpoint`` is given (e.g. RUN/best). Written to a temporary directory and renamed
    into ``out`` (which must not exist or be empty), so a failed export leaves nothing half-written."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"RUN_DIR: {run_dir} holds no run (no config.yaml)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out: {out} exists and is not an empty directory")
    if checkpoint is None:
        checkpoint = latest_checkpoint(run_dir, log=lambda *_: None)
        if checkpoint is None:
            raise FileNotFoundError(f"RUN_DIR: {run_dir} has no valid checkpoint")
    cfg, backbone, _ = load_checkpoint_backbone(Path(checkpoint), use_ema=use_ema)
    if not hasattr(backbone, "export"):
        raise ValueError(f"export: the {cfg.backbone.name!r} backbone has no diffusers export (sd3 and flux have)")
    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        backbone.export(tmp, merge=merge)
        (tmp / "export_info.json").write_text(json.dumps({"run": str(run_dir), "checkpoint": str(checkpoint),
                                                          "backbone": cfg.backbone.name, "merged": merge}, indent=1))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sorted(p for p in out.iterdir())
