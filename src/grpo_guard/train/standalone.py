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
from ..prompts import PromptSet, load_prompt_set
from ..rewards import RewardContext, build_evaluator, build_reward
from .checkpoint import latest_checkpoint, verify_checkpoint
from .evaluate import evaluate_policy, normalise_gold, run_golds
from .summary import gold_lines, gold_readings

__all__ = ["run_dir_of", "evaluate_checkpoint", "load_checkpoint_backbone", "export_run", "paper_table",
           "paper_table_markdown", "PAPER_PROTOCOL"]


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


def evaluate_checkpoint(checkpoint: Path, *, samples_per_prompt: int | None = None, use_ema: bool = True,
                        protocol: str = "run", prompts: str | None = None) -> dict:
    """Evaluate a checkpoint on its run's evaluation set (``protocol="run"``: as the run evaluated) or with the
    paper's protocol (``"paper"``: the ODE sampler at 40 steps at the run's evaluation guidance; the result
    then also holds ``paper_table``, see :func:`paper_table`). ``prompts``: another prompt file of the run's
    source kind (e.g. the test split) instead of the run's."""
    if protocol not in ("run", "paper"):
        raise ValueError(f"--protocol: expected run or paper, got {protocol!r}")
    overrides = [f"eval.samples_per_prompt={samples_per_prompt}"] if samples_per_prompt else []
    overrides += PAPER_PROTOCOL if protocol == "paper" else []
    overrides += [f"prompts.path={prompts}"] if prompts else []
    cfg, backbone, run = load_checkpoint_backbone(checkpoint, use_ema=use_ema, overrides=overrides)
    device = next(iter(backbone.parameters())).device
    cache = Path(cfg.cache_dir).expanduser()
    rctx = RewardContext(cache, device, cfg.seed, getattr(backbone, "image_size", None))
    rewards = {spec.name: build_reward(spec.name, spec.params, rctx) for spec in cfg.rewards}
    evaluator = build_evaluator(cfg.eval.evaluator, cfg.eval.evaluator_params, rctx) if cfg.eval.evaluator else None
    prompt_set = load_prompt_set(cfg.prompts.source, cfg.prompts.path)
    res, images = evaluate_policy(backbone, cfg, prompt_set, rewards, evaluator, device=device)
    base = None
    ckpts = sorted((run / "checkpoints").glob("epoch_*/state.json"))
    if ckpts:
        base = json.loads(ckpts[-1].read_text()).get("base_gold")
    res.update(normalise_gold(res, base, run_golds(cfg, backbone, rewards, evaluator)))
    res["checkpoint"] = str(checkpoint)
    if protocol == "paper":
        res["paper_table"] = paper_table(cfg, rewards, images, prompt_set, res)
    return res


#: the tasks the paper reports, by the reward that scores them: (task, metric label)
PAPER_TASKS = {"geneval": "GenEval", "geneval_strict": "GenEval", "ocr": "OCR", "pickscore": "PickScore"}
#: the paper's evaluation sampler: the deterministic ODE at 40 steps
PAPER_PROTOCOL = ["eval.sampler=ode", "eval.num_steps=40"]


def paper_table(cfg, rewards: dict, images: torch.Tensor, prompts: PromptSet, result: dict) -> dict:
    """The table the paper reports for the run's task, from one evaluation's images: GenEval's accuracy per
    task family (the share of images that pass its strict verdict) and overall (the mean over the families,
    as GenEval averages), the OCR accuracy (the mean OCR reward), the PickScore (the mean reward, in the
    reward's scale), and every gold reward's mean. Raises ValueError when the run has none of these tasks."""
    names = [r.name for r in cfg.rewards]
    tasks = sorted({PAPER_TASKS[n] for n in names if n in PAPER_TASKS})
    if not tasks:
        raise ValueError(f"--protocol paper: the run's rewards ({', '.join(names)}) hold none of the paper's tasks "
                         f"(geneval, ocr, pickscore)")
    per_prompt = cfg.eval.samples_per_prompt
    texts, meta = prompts.take([i for i in range(len(prompts)) for _ in range(per_prompt)])
    table: dict = {"tasks": tasks, "images": len(texts)}
    if "GenEval" in tasks:
        strict = rewards.get("geneval_strict")
        if strict is None:  # the same engine as the run's geneval reward (shared when the params are equal)
            spec = next(r for r in cfg.rewards if r.name == "geneval")
            strict = build_reward("geneval_strict", spec.params,
                                  RewardContext(Path(cfg.cache_dir).expanduser(), images.device))
        passed = strict(images, texts, meta)
        families: dict[str, list[float]] = {}
        for m, v in zip(meta, passed.tolist()):
            families.setdefault(str(m.get("tag", "untagged")), []).append(v)
        table["geneval"] = {tag: sum(v) / len(v) for tag, v in sorted(families.items())}
        table["geneval"]["overall"] = sum(table["geneval"].values()) / len(families)
    if "OCR" in tasks:
        table["ocr_accuracy"] = result["eval/ocr_mean"]
    if "PickScore" in tasks:
        table["pickscore"] = result["eval/pickscore_mean"]
    table["golds"] = {r.name: result[f"eval/{r.name}_mean"] for r in cfg.rewards if r.role == "gold"}
    return table


def paper_table_markdown(table: dict, checkpoint: Path) -> str:
    """``paper_table``'s figures as a Markdown table, one row per figure."""
    lines = [f"Paper protocol (ODE sampler, 40 steps) on {checkpoint}, {table['images']} images", "",
             "| metric | value |", "|---|---|"]
    for tag, v in table.get("geneval", {}).items():
        lines.append(f"| GenEval {tag} | {v:.4f} |")
    if "ocr_accuracy" in table:
        lines.append(f"| OCR accuracy | {table['ocr_accuracy']:.4f} |")
    if "pickscore" in table:
        lines.append(f"| PickScore (reward scale) | {table['pickscore']:.4f} |")
    for name, v in table["golds"].items():
        lines.append(f"| {name} (gold) | {v:.4f} |")
    return "\n".join(lines) + "\n"


def checkpoint_gold_lines(result: dict, checkpoint: Path) -> list[str]:
    """``evaluate_checkpoint``'s result as the gold lines of a run's summary: each gold from the base model's
    evaluation (the run's ``base_eval.json``) to this checkpoint's."""
    run = Path(checkpoint).resolve().parent
    run = run.parent if run.name == "checkpoints" else run
    base_path = run / "base_eval.json"
    base = json.loads(base_path.read_text()) if base_path.is_file() else {}
    logged = {k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    golds = {key: {"label": metric.label, "primary": metric.primary, "higher_is_better": metric.better(key),
                   "base": base.get(key, 1.0 if key != metric.key else None), "final": result[key]}
             for metric, key in gold_readings(run, logged)}
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
