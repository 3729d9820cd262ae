"""Use a finished run outside the training loop: rebuild its backbone and evaluate a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..backbones import BackboneContext, build_backbone
from ..config import load_config
from ..prompts import load_prompts
from ..rewards import RewardContext, build_evaluator, build_reward
from .checkpoint import verify_checkpoint
from .evaluate import evaluate_policy, normalise_gold

__all__ = ["run_dir_of", "evaluate_checkpoint"]


def run_dir_of(checkpoint: Path) -> Path:
    """RUN/checkpoints/epoch_N -> RUN; RUN/best -> RUN."""
    checkpoint = Path(checkpoint)
    for cand in (checkpoint.parent.parent, checkpoint.parent):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"checkpoint: no config.yaml found above {checkpoint}")


def evaluate_checkpoint(checkpoint: Path, *, samples_per_prompt: int | None = None, use_ema: bool = True) -> dict:
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint: no such directory {checkpoint}")
    run = run_dir_of(checkpoint)
    overrides = [f"eval.samples_per_prompt={samples_per_prompt}"] if samples_per_prompt else []
    cfg = load_config(str(run / "config.yaml"), overrides)
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
    rctx = RewardContext(cache, device, cfg.seed, getattr(backbone, "image_size", None))
    rewards = {spec.name: build_reward(spec.name, spec.params, rctx) for spec in cfg.rewards}
    evaluator = build_evaluator(cfg.eval.evaluator, cfg.eval.evaluator_params, rctx) if cfg.eval.evaluator else None
    res, _ = evaluate_policy(backbone, cfg, load_prompts(cfg.prompts.source, cfg.prompts.path), rewards, evaluator,
                             device=device)
    base = None
    ckpts = sorted((run / "checkpoints").glob("epoch_*/state.json"))
    if ckpts:
        base = json.loads(ckpts[-1].read_text()).get("base_gold")
    res.update(normalise_gold(res, base, evaluator))
    res["checkpoint"] = str(checkpoint)
    return res
