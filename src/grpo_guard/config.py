"""Typed run configuration: dataclasses loaded from YAML, with ``--set a.b=c`` overrides.

Every field has a default; a YAML file only states what differs. A YAML file may name another
config to start from with ``inherit: NAME``. Unknown keys and values of the wrong type are
rejected with a :class:`ConfigError` naming the key, before any work starts. The resolved config is
written next to every run's outputs (``config.yaml``) and is what ``--resume`` reads back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .core import RATIO_MODES, REDUCTIONS, SDE_TYPES, STD_MODES, STEP_WEIGHTS, parse_clip_range
__all__ = [
    "ConfigError", "BackboneConfig", "PromptConfig", "SampleConfig", "LossConfig", "TrainConfig",
    "RewardSpec", "EvalConfig", "MonitorConfig", "LogConfig", "RunConfig", "CONFIG_DIR",
    "available_configs", "load_config", "config_to_dict", "config_from_dict", "apply_overrides",
    "dump_config", "config_file_overrides", "PROMPT_SOURCES",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type, bad value, missing file."""


@dataclass
class BackboneConfig:
    """Which generator to train. ``params`` are validated by the backbone's own options dataclass."""

    name: str = "toy"
    params: dict[str, Any] = field(default_factory=dict)


#: the prompt sources (:mod:`grpo_guard.prompts`)
PROMPT_SOURCES = ("digits", "text", "file", "jsonl")


@dataclass
class PromptConfig:
    """Where prompts come from: ``digits`` (the toy world's "a handwritten 7"), ``text`` (the text world's
    ``render the text "abc"``), ``file`` (one per line) or
    ``jsonl`` (one JSON object per line: ``prompt`` and that prompt's metadata; :mod:`grpo_guard.prompts`)."""

    source: str = "digits"
    path: str | None = None
    attributes: bool = False


@dataclass
class SampleConfig:
    """Rollout: the SDE sampler and the batch (``prompts_per_epoch`` x ``group_size`` samples per epoch)."""

    num_steps: int = 10
    shift: float = 3.0
    noise_level: float = 0.7
    sde_type: str = "flow_grpo"
    guidance_scale: float = 4.5
    group_size: int = 8
    prompts_per_epoch: int = 8
    batch_size: int = 32  # samples per rollout forward call
    sde_window: list[int] | None = None  # [start, end): only these steps are stochastic and trained
    same_initial_noise: bool = False  # the samples of a group start from one initial noise (DanceGRPO)
    # Flow-GRPO-Fast: a window of this many SDE steps, drawn anew every epoch within sde_window_range
    # ([lo, hi), default the first half of the steps); the other steps take the ODE step. 0: off
    sde_window_size: int = 0
    sde_window_range: list[int] | None = None

    def window_range(self) -> tuple[int, int]:
        """``[lo, hi)`` within which a random SDE window lies: ``sde_window_range``, default the first half."""
        lo, hi = self.sde_window_range or [0, self.num_steps // 2]
        return lo, hi


@dataclass
class LossConfig:
    """The policy loss switches (see :func:`grpo_guard.policy_loss`)."""

    ratio_mode: str = "plain"
    step_weight: str = "none"
    clip_range: float | list[float] = 1e-4
    kl_coef: float = 0.0
    reduction: str = "mean"
    official_compat: bool = False


@dataclass
class TrainConfig:
    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 1e-4
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    updates_per_epoch: int = 2  # optimizer updates per rollout batch (one per minibatch)
    inner_epochs: int = 1  # passes over the rollout batch
    # memory bound of the training forward: at most this many rows (samples x steps x CFG copies) per
    # network call; several steps go together when the minibatch is small, a large minibatch is split
    # into slices of samples; 0 = one step of the whole minibatch per call
    max_forward_rows: int = 0
    # memory bound of the training forward in MiB of activations saved for the backward, measured per
    # row on the run's first training call (grpo_guard.train.forward_memory); 0 = off. With
    # max_forward_rows also set, the smaller bound holds.
    max_forward_mb: float = 0.0
    timestep_fraction: float = 0.99  # train int(K * fraction) steps of the SDE window's K ...
    # ... the first ones ("first", Flow-GRPO), or a random subset drawn per sample and epoch ("random", DanceGRPO)
    timestep_sampling: str = "first"
    adv_std: str = "group"
    adv_eps: float = 1e-4
    adv_clip_max: float = 5.0
    ema_decay: float = 0.0  # 0 disables EMA of the trainable weights (evaluation and export then use them)
    ema_every: int = 1  # optimizer steps between EMA updates (Flow-GRPO: 0.9 every 8)
    # drop the samples of groups whose rewards have no spread (advantages all 0) from the update, as Flow-GRPO
    # does: the loss is the mean over the others (the KL too); some are kept back when needed so that every
    # process trains the same number of samples, a multiple of updates_per_epoch
    drop_zero_advantage: bool = False
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    # torch's deterministic algorithms (and, on CUDA, cuBLAS's fixed workspace): the same seed gives the same
    # run on a GPU too, at a speed cost; on the CPU runs are reproducible without it (docs/reliability.md)
    deterministic: bool = False
    preflight_tol: float = 1e-5  # max |log ratio| allowed on-policy before the first update
    grad_norm_every: int = 1  # measure per-step gradient norms every N epochs (0: never)
    grad_norm_samples: int = 8  # samples used for that measurement
    max_bad_batches: int = 5  # stop after this many consecutive skipped batches (bad rewards)
    # shard the backbone's transformer (frozen and trainable weights, gradients, optimizer state) over
    # the processes with torch FSDP2 (fully_shard); needs a multi-process launch, no effect with one
    fsdp: bool = False


@dataclass
class RewardSpec:
    """One reward: ``role: proxy`` rewards are optimised (weighted sum); ``gold`` ones only logged."""

    name: str = "toy_classifier"
    weight: float = 1.0
    role: str = "proxy"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    """Evaluation on a fixed prompt set with fixed noise: the training SDE sampler by default (an exploit
    learned through the SDE need not transfer to the ODE), or the deterministic ODE sampler with its own
    steps and guidance (the paper's protocol: ODE, 40 steps, CFG 4.5)."""

    every: int = 1  # epochs; 0 disables
    sampler: str = "sde"  # "sde" (sample.noise_level on the SDE window) or "ode"
    num_steps: int = 0  # 0: sample.num_steps
    guidance_scale: float | None = None  # None: sample.guidance_scale
    samples_per_prompt: int = 16
    evaluator: str | None = "toy_gold"  # set-level gold metrics (e.g. Frechet distance)
    evaluator_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MonitorConfig:
    """The over-optimization monitor: flag when normalised gold falls ``drop`` below its best while the
    proxy still rises."""

    enabled: bool = True
    drop: float = 0.1
    patience: int = 2
    stop_on_hacking: bool = False


@dataclass
class LogConfig:
    image_every: int = 10  # epochs between image grids (0: never)
    checkpoint_every: int = 10  # epochs between checkpoints (the last epoch is always saved)
    keep_checkpoints: int = 2
    progress: bool = True
    # experiment trackers besides metrics.jsonl: "tensorboard", "wandb" (grpo_guard.train.trackers)
    trackers: list[str] = field(default_factory=list)
    wandb_project: str = "grpo-guard"


@dataclass
class RunConfig:
    seed: int = 0
    cache_dir: str = "~/.cache/grpo-guard"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rewards: list[RewardSpec] = field(default_factory=lambda: [RewardSpec()])
    eval: EvalConfig = field(default_factory=EvalConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self, check_files: bool = True) -> None:
        """Cross-field checks; raises ConfigError naming the key. ``check_files=False`` skips the check that the
        prompt file exists (for commands that read no prompt, such as ``plan``)."""
        def need(cond: bool, key: str, msg: str) -> None:
            if not cond:
                raise ConfigError(f"{key}: {msg}")

        s, t, lo = self.sample, self.train, self.loss
        need(s.group_size >= 2, "sample.group_size", f"must be >= 2 (GRPO compares samples within a group), got {s.group_size}")
        need(s.prompts_per_epoch >= 1, "sample.prompts_per_epoch", "must be >= 1")
        need(s.num_steps >= 1, "sample.num_steps", "must be >= 1")
        need(s.batch_size >= 1, "sample.batch_size", "must be >= 1")
        need(s.noise_level > 0, "sample.noise_level", "must be > 0 (the policy needs noise)")
        need(s.shift > 0, "sample.shift", "must be > 0")
        need(s.guidance_scale >= 0, "sample.guidance_scale", "must be >= 0")
        need(s.sde_type in SDE_TYPES, "sample.sde_type", f"must be one of {SDE_TYPES}")
        if s.sde_window is not None:
            need(len(s.sde_window) == 2 and 0 <= s.sde_window[0] < s.sde_window[1] <= s.num_steps,
                 "sample.sde_window", f"must be [start, end) with 0 <= start < end <= num_steps, got {s.sde_window}")
        if s.sde_window_size:
            need(s.sde_window is None, "sample.sde_window_size", "a random window excludes a fixed sample.sde_window")
            bad = (f"must be [lo, hi) within the {s.num_steps} steps and hold sde_window_size = "
                   f"{s.sde_window_size} steps")
            need(s.sde_window_range is None or len(s.sde_window_range) == 2, "sample.sde_window_range",
                 f"{bad}, got {s.sde_window_range}")
            w_lo, w_hi = s.window_range()
            need(0 <= w_lo and w_lo + s.sde_window_size <= w_hi <= s.num_steps, "sample.sde_window_range",
                 f"{bad}, got {[w_lo, w_hi]}")
        need(s.sde_window_size >= 0, "sample.sde_window_size", "must be >= 0 (0: off)")
        need(lo.ratio_mode in RATIO_MODES, "loss.ratio_mode", f"must be one of {RATIO_MODES}")
        need(lo.step_weight in STEP_WEIGHTS, "loss.step_weight", f"must be one of {STEP_WEIGHTS}")
        need(lo.reduction in REDUCTIONS, "loss.reduction", f"must be one of {REDUCTIONS}")
        need(lo.kl_coef >= 0, "loss.kl_coef", "must be >= 0")
        try:
            parse_clip_range(lo.clip_range)
        except ValueError as e:
            raise ConfigError(f"loss.{e}") from None
        need(t.epochs >= 1, "train.epochs", "must be >= 1")
        need(t.lr > 0, "train.lr", "must be > 0")
        need(t.updates_per_epoch >= 1, "train.updates_per_epoch", "must be >= 1")
        need(t.inner_epochs >= 1, "train.inner_epochs", "must be >= 1")
        need(t.max_forward_rows >= 0, "train.max_forward_rows", "must be >= 0 (0: one step per call)")
        need(t.max_forward_mb >= 0 and math.isfinite(t.max_forward_mb), "train.max_forward_mb",
             "must be a finite number >= 0 (0: no memory bound)")
        need(0 < t.timestep_fraction <= 1, "train.timestep_fraction", "must be in (0, 1]")
        need(t.timestep_sampling in ("first", "random"), "train.timestep_sampling", "must be 'first' or 'random'")
        need(not (lo.official_compat and t.timestep_sampling == "random"), "loss.official_compat",
             "averages over calls of one step: it needs train.timestep_sampling 'first'")
        need(t.adv_std in STD_MODES, "train.adv_std", f"must be one of {STD_MODES}")
        need(t.adv_clip_max > 0, "train.adv_clip_max", "must be > 0")
        need(0 <= t.ema_decay < 1, "train.ema_decay", "must be in [0, 1)")
        need(t.mixed_precision in ("no", "bf16", "fp16"), "train.mixed_precision", "must be no, bf16 or fp16")
        need(t.max_grad_norm > 0, "train.max_grad_norm", "must be > 0")
        need(len(t.adam_betas) == 2, "train.adam_betas", "must be a pair")
        batch = s.prompts_per_epoch * s.group_size
        need(batch % t.updates_per_epoch == 0, "train.updates_per_epoch",
             f"must divide the rollout batch prompts_per_epoch x group_size = {batch}")
        need(t.preflight_tol > 0, "train.preflight_tol", "must be > 0")
        for i, r in enumerate(self.rewards):
            need(r.role in ("proxy", "gold"), f"rewards[{i}].role", "must be 'proxy' or 'gold'")
            need(math.isfinite(r.weight), f"rewards[{i}].weight", "must be finite")
        need(any(r.role == "proxy" for r in self.rewards), "rewards", "at least one reward must have role 'proxy'")
        need(len({r.name for r in self.rewards}) == len(self.rewards), "rewards", "reward names must be unique")
        need(self.prompts.source in PROMPT_SOURCES, "prompts.source", f"must be one of {', '.join(PROMPT_SOURCES)}")
        if self.prompts.source in ("file", "jsonl") and check_files:
            need(bool(self.prompts.path), "prompts.path", f"required when prompts.source is '{self.prompts.source}'")
            need(Path(self.prompts.path).expanduser().is_file(), "prompts.path", f"no such file: {self.prompts.path}")
        need(self.eval.every >= 0, "eval.every", "must be >= 0")
        need(self.eval.samples_per_prompt >= 1, "eval.samples_per_prompt", "must be >= 1")
        need(self.eval.sampler in ("sde", "ode"), "eval.sampler", "must be 'sde' or 'ode'")
        need(self.eval.num_steps >= 0, "eval.num_steps", "must be >= 0 (0: sample.num_steps)")
        need(self.eval.guidance_scale is None or self.eval.guidance_scale >= 0, "eval.guidance_scale", "must be >= 0")
        need(self.eval.sampler == "ode" or self.eval.num_steps in (0, s.num_steps), "eval.num_steps",
             "the SDE sampler evaluates on the training grid: set eval.sampler=ode for another step count")
        need(t.ema_every >= 1, "train.ema_every", "must be >= 1")
        need(0 < self.monitor.drop < 1, "monitor.drop", "must be in (0, 1)")
        need(self.log.keep_checkpoints >= 1, "log.keep_checkpoints", "must be >= 1")
        for t in self.log.trackers:
            need(t in ("tensorboard", "wandb"), "log.trackers", f"unknown tracker {t!r}; expected tensorboard or wandb")

    def sde_window_bounds(self) -> tuple[int, int]:
        """``[start, end)`` of the stochastic steps: the whole grid, the fixed ``sample.sde_window``, or with
        ``sample.sde_window_size`` the first window of ``sample.sde_window_range`` (each epoch draws its own:
        :meth:`grpo_guard.train.schedule.StepSchedule.for_epoch`)."""
        s = self.sample
        if s.sde_window_size:
            lo = s.window_range()[0]
            return lo, lo + s.sde_window_size
        return (0, s.num_steps) if s.sde_window is None else (s.sde_window[0], s.sde_window[1])

    def trained_step_indices(self, window: tuple[int, int] | None = None) -> list[int]:
        """Schedule indices k that are sampled stochastically and stored for training in ``window`` (default
        :meth:`sde_window_bounds`): its first :meth:`steps_per_sample` steps, or all of them when each sample
        trains its own random subset (``train.timestep_sampling: random``)."""
        start, end = window or self.sde_window_bounds()
        n = end - start if self.train.timestep_sampling == "random" else self.steps_per_sample()
        return list(range(start, start + n))

    def steps_per_sample(self) -> int:
        """How many steps each sample trains: ``int(window * timestep_fraction)``, at least 1."""
        start, end = self.sde_window_bounds()
        return max(1, int((end - start) * self.train.timestep_fraction))


# ---- (de)serialisation with type checking ---------------------------------------------------------

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return config_from_dict(tp, value, prefix=key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def config_from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from a (partial) dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown config key (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("params", "evaluator_params"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def available_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def _read_yaml(name_or_path: str, seen: tuple[str, ...] = ()) -> dict:
    path = Path(name_or_path).expanduser()
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"config: no such config file or name {name_or_path!r} (built-in: {', '.join(available_configs())})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    parents = data.pop("inherit", None)
    if parents is None:
        return data
    # one parent, or a list merged in order (a later one overrides an earlier one; this file overrides all)
    merged: dict = {}
    for parent in parents if isinstance(parents, list) else [parents]:
        if str(parent) in seen:
            raise ConfigError(f"inherit: cycle through {parent!r}")
        merged = _deep_merge(merged, _read_yaml(str(parent), seen + (str(parent),)))
    return _deep_merge(merged, data)


#: sections a world file sets whole (their keys differ from world to world)
_WHOLE_SECTIONS = ("backbone", "prompts")


def config_file_overrides(name_or_path: str) -> list[str]:
    """A config file's settings (its parents merged in) as ``--set`` overrides, so that a world file can be
    laid over any method config: the sections of :data:`_WHOLE_SECTIONS` and every list (e.g. ``rewards``)
    are replaced whole, the other sections key by key. Values are written as JSON (which YAML reads back)."""
    data = _read_yaml(name_or_path)
    out = []
    for section, value in data.items():
        if isinstance(value, dict) and section not in _WHOLE_SECTIONS:
            out += [f"{section}.{key}={json.dumps(v)}" for key, v in value.items()]
        else:
            out.append(f"{section}={json.dumps(value)}")
    return out


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")) or not all(c.isprintable() and not c.isspace() for c in key):
        raise ConfigError(f"--set {item!r}: bad key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a config dict. ``rewards.0.weight=2`` indexes lists."""
    data = dict(data)
    for item in overrides:
        parts, value = _parse_override(item)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a valid list index")
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i])} is a value, not a section")
            nxt = node.get(part)
            if nxt is None:
                nxt = {}
            elif isinstance(nxt, dict):
                nxt = dict(nxt)
            node[part] = nxt
            node = nxt
        last = parts[-1]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {item!r}: {'.'.join(parts[:-1])} is a value, not a section")
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(f"--set {item!r}: {last} is not a valid list index")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def _defaults_dict() -> dict:
    return config_to_dict(RunConfig())


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None, *,
                check_files: bool = True) -> RunConfig:
    """Load a built-in config by name (``configs/NAME.yaml``) or a YAML path, apply overrides, validate
    (``check_files=False``: without requiring the prompt file)."""
    data = _read_yaml(name_or_path) if name_or_path else {}
    merged = _deep_merge(_defaults_dict(), data)
    # lists of dataclasses (rewards) are given whole in YAML; fill each entry's defaults
    merged = apply_overrides(merged, overrides or [])
    cfg = config_from_dict(RunConfig, merged)
    cfg.validate(check_files)
    return cfg


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
