"""Load run directories (made by ``grpo-guard train``) and group them into methods.

A run directory holds ``config.yaml`` (the resolved config) and ``metrics.jsonl`` (one JSON object
per epoch), and usually ``base_eval.json`` (the base model's evaluation), ``golds.json`` (how its golds
are read: :mod:`grpo_guard.golds`), ``images/epoch_NNNN.png`` and ``best/info.json``. Metric values may be
``null`` (NaN/inf were written as null), keys may be missing on some epochs and skipped epochs
(``"skipped": true``) lack most keys: every accessor here returns NaN for what is not there.

A *method* is a set of runs whose configs differ only in ``seed`` (and in fields that do not change
the method: ``cache_dir``, ``log.*``, ``train.epochs``). Its label comes from the loss settings
(:func:`method_label`) unless the caller gives one (``LABEL=RUN_DIR`` or ``labels=``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..config import RunConfig, config_to_dict
from ..golds import AVERAGE_KEY, GoldDeclaration, GoldMetric, read_golds

__all__ = [
    "Run", "Method", "load_run", "load_runs", "group_methods", "method_label", "parse_run_spec",
    "flatten_config", "NON_METHOD_KEYS", "GOLD_KEY", "seed_stats", "eval_points", "gain_points", "gold_at_proxy",
    "matched_gain", "matched_gold", "method_golds", "seeds_better", "format_stat", "format_paired_diff", "as_number", "read_metrics",
]

#: the normalised gold average (the digits world's headline gold)
GOLD_KEY = AVERAGE_KEY

# Config keys that do not make two runs different methods (besides the seed).
NON_METHOD_KEYS = ("seed", "cache_dir", "log.", "train.epochs")

_IMAGE_RE = re.compile(r"^epoch_(\d+)\.png$")


def as_number(value: Any) -> float:
    """A metric value as a float; NaN for null, missing, non-numeric and non-finite values."""
    if isinstance(value, bool) or value is None:
        return float("nan")
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) else float("nan")
    return float("nan")


def _num_list(value: Any) -> list[float] | None:
    """A per-step list as floats (NaN for bad entries); None when ``value`` is not a list."""
    if not isinstance(value, (list, tuple)):
        return None
    return [as_number(v) for v in value]


@dataclass
class Run:
    """One run directory: its raw config, its metrics rows (sorted by epoch) and its artefacts."""

    path: Path
    config: dict
    rows: list[dict]
    label_override: str | None = None
    best_info: dict | None = None
    images: list[tuple[int, Path]] = field(default_factory=list)  # (image file number, path), sorted
    bad_lines: int = 0  # metrics lines that did not parse (e.g. a torn last line)
    base_row: dict | None = None  # the base model's evaluation (base_eval.json), when the run wrote one
    golds: GoldDeclaration = field(default_factory=GoldDeclaration)  # how its golds are read (golds.json)

    @cached_property
    def logged_keys(self) -> set[str]:
        """Every key with a finite scalar value on some row (the base evaluation included)."""
        keys = set()
        for r in ([self.base_row] if self.base_row else []) + self.epoch_rows:
            keys.update(k for k, v in r.items() if math.isfinite(as_number(v)))
        return keys

    @property
    def name(self) -> str:
        """The directory name."""
        return self.path.name

    @property
    def seed(self) -> int | None:
        """The run's seed (None if the config lacks it)."""
        s = self.config.get("seed")
        return s if isinstance(s, int) and not isinstance(s, bool) else None

    @property
    def loss(self) -> dict:
        """The ``loss`` section of the config (empty dict if absent)."""
        lo = self.config.get("loss")
        return lo if isinstance(lo, dict) else {}

    @property
    def epoch_rows(self) -> list[dict]:
        """Rows of epochs that were not skipped."""
        return [r for r in self.rows if not r.get("skipped")]

    @property
    def num_epochs(self) -> int:
        """Epochs logged (skipped ones included)."""
        return len(self.rows)

    @property
    def num_skipped(self) -> int:
        """Epochs whose batch was skipped."""
        return sum(1 for r in self.rows if r.get("skipped"))

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of a scalar metric over the non-skipped epochs, NaN where missing."""
        rows = self.epoch_rows
        ep = np.array([as_number(r.get("epoch")) for r in rows], dtype=float)
        val = np.array([as_number(r.get(key)) for r in rows], dtype=float)
        return ep, val

    def finite_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`series` but only the epochs where the value is finite."""
        ep, val = self.series(key)
        ok = np.isfinite(ep) & np.isfinite(val)
        return ep[ok], val[ok]

    def last(self, key: str) -> float:
        """The last finite value of a scalar metric (NaN if it never had one)."""
        _, val = self.finite_series(key)
        return float(val[-1]) if val.size else float("nan")

    def last_raw(self, key: str) -> Any:
        """The value of ``key`` in the last row that has the key (None if no row has it)."""
        for r in reversed(self.rows):
            if key in r:
                return r[key]
        return None

    def metric_keys(self, prefix: str) -> list[str]:
        """All scalar keys starting with ``prefix`` that appear on some row, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.epoch_rows:
            for k, v in r.items():
                if k.startswith(prefix) and not isinstance(v, (list, dict)):
                    seen.setdefault(k, None)
        return list(seen)

    def trained_steps(self) -> list[int]:
        """The union of the schedule indices trained in any epoch, sorted."""
        steps: set[int] = set()
        for r in self.epoch_rows:
            ts = r.get("trained_steps")
            if isinstance(ts, list):
                steps.update(int(s) for s in ts if isinstance(s, (int, float)) and not isinstance(s, bool))
        return sorted(steps)

    def step_matrix(self, stat: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(steps, epochs, M)`` for a per-step statistic: ``M[i, j]`` is the value at epoch ``epochs[i]``
        and schedule step ``steps[j]``. ``stat`` is a ``step_stats`` key, or ``grad_norm_step``.
        Only epochs that logged the statistic are rows (for ``step_stats``: the off-policy epochs)."""
        steps = self.trained_steps()
        eps, vals = [], []
        for r in self.epoch_rows:
            if stat == "grad_norm_step":
                values = _num_list(r.get("grad_norm_step"))
            else:
                ss = r.get("step_stats")
                values = _num_list(ss.get(stat)) if isinstance(ss, dict) else None
            if not values:
                continue
            ts = r.get("trained_steps")
            if not (isinstance(ts, list) and len(ts) == len(values)):
                ts = steps[: len(values)] if len(steps) >= len(values) else list(range(len(values)))
            eps.append(as_number(r.get("epoch")))
            vals.append(dict(zip((int(s) for s in ts), values)))
        all_steps = sorted(set(steps).union(*[v.keys() for v in vals])) if vals else steps
        m = np.full((len(vals), len(all_steps)), np.nan)
        for i, v in enumerate(vals):
            for j, s in enumerate(all_steps):
                m[i, j] = v.get(s, np.nan)
        return np.array(all_steps, dtype=int), np.array(eps, dtype=float), m

    def step_profile(self, stat: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, mean over epochs)`` of a per-step statistic (NaN where no epoch had a value)."""
        steps, _, m = self.step_matrix(stat)
        return steps, _nanmean_rows(m)

    def hacking_epoch(self) -> int | None:
        """The epoch the over-optimization monitor flagged (None if it never did or did not run)."""
        ep = self.last_raw("monitor/hacking_epoch")
        if isinstance(ep, (int, float)) and not isinstance(ep, bool) and math.isfinite(ep):
            return int(ep)
        return None

    def best_gold(self) -> float:
        """Best normalised gold: the monitor's record, else the maximum of ``gold_normalized_avg``."""
        v = as_number(self.last_raw("monitor/best_gold"))
        if math.isfinite(v):
            return v
        _, g = self.finite_series("gold_normalized_avg")
        return float(g.max()) if g.size else float("nan")

    def mean_step_stat(self, stat: str) -> float:
        """A per-step statistic averaged over trained steps and off-policy epochs (NaN when never logged)."""
        _, _, m = self.step_matrix(stat)
        return _nanmean_all(m)

    def last_step_stat(self, stat: str) -> float:
        """A per-step statistic at the last trained step with a value, averaged over off-policy epochs."""
        _, prof = self.step_profile(stat)
        finite = prof[np.isfinite(prof)]
        return float(finite[-1]) if finite.size else float("nan")

    def mean_clip_high_pos(self) -> float:
        """P(r > 1 + eps | A > 0), averaged over trained steps and off-policy epochs."""
        return self.mean_step_stat("clip_high_pos")

    def last_step_raw_ratio_offset(self) -> float:
        """Mean raw ratio - 1 at the last trained step, averaged over off-policy epochs."""
        return self.last_step_stat("raw_ratio_mean") - 1.0

    def mean_grad_norm_spread(self) -> float:
        """The per-epoch gradient-norm spread (max/min over steps), averaged over epochs."""
        _, v = self.finite_series("grad_norm_spread")
        return float(v.mean()) if v.size else float("nan")


@dataclass
class Method:
    """Runs of one method (one per seed), with the method's display label."""

    label: str
    runs: list[Run]

    @property
    def seeds(self) -> list[int | None]:
        """The seeds of the runs, in run order."""
        return [r.seed for r in self.runs]

    @property
    def first(self) -> Run:
        """The run with the lowest seed (the one whose images are shown)."""
        return self.runs[0]

    @property
    def slug(self) -> str:
        """A file-name-safe version of the label."""
        s = re.sub(r"[^A-Za-z0-9]+", "_", self.label).strip("_").lower()
        return s or "method"


def _nanmean_rows(m: np.ndarray) -> np.ndarray:
    """Column means ignoring NaN; NaN for all-NaN columns (without warnings)."""
    if m.size == 0:
        return np.full(m.shape[1] if m.ndim == 2 else 0, np.nan)
    ok = np.isfinite(m)
    n = ok.sum(0)
    s = np.where(ok, m, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _nanmean_all(m: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there are none."""
    v = np.asarray(m, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


# ---- loading -----------------------------------------------------------------------------------------

def parse_run_spec(spec: str | Path) -> tuple[Path, str | None]:
    """``RUN_DIR`` or ``LABEL=RUN_DIR`` -> (path, label or None). An existing path always wins, so a
    directory whose name contains ``=`` is still read as a plain path."""
    p = Path(spec)
    if p.exists() or "=" not in str(spec):
        return p, None
    label, _, rest = str(spec).partition("=")
    label = label.strip()
    if not label:
        raise ValueError(f"{spec!r}: empty label before '=' (use LABEL=RUN_DIR)")
    return Path(rest), label


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """Rows of ``metrics.jsonl`` (last row wins per epoch), sorted by epoch; and the count of bad lines."""
    by_epoch: dict[float, dict] = {}
    order: list[dict] = []
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(row, dict):
            bad += 1
            continue
        ep = as_number(row.get("epoch"))
        if math.isfinite(ep):
            by_epoch[ep] = row
        else:
            order.append(row)
    rows = [by_epoch[k] for k in sorted(by_epoch)] + order
    return rows, bad


def _default_config() -> dict:
    """The config defaults (so an older, sparser ``config.yaml`` still has every key)."""
    return config_to_dict(RunConfig())


def _merge(base: dict, over: dict) -> dict:
    """Recursive dict merge (``over`` wins); lists and scalars are replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Load one run directory. Raises ValueError naming the directory if it is not a run."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"{p}: not a run directory (no such directory)")
    cfg_path, met_path = p / "config.yaml", p / "metrics.jsonl"
    missing = [f.name for f in (cfg_path, met_path) if not f.is_file()]
    if missing:
        raise ValueError(f"{p}: not a run directory (missing {', '.join(missing)}; "
                         "expected the output folder of `grpo-guard train`)")
    try:
        raw = yaml.safe_load(cfg_path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{cfg_path}: unreadable config ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg_path}: expected a mapping, got {type(raw).__name__}")
    rows, bad = read_metrics(met_path)
    if not rows:
        raise ValueError(f"{met_path}: no epochs logged yet")
    best = None
    info = p / "best" / "info.json"
    if info.is_file():
        try:
            best = json.loads(info.read_text())
        except (json.JSONDecodeError, OSError):
            best = None
    images = []
    if (p / "images").is_dir():
        for f in (p / "images").iterdir():
            m = _IMAGE_RE.match(f.name)
            if m and f.is_file() and f.stat().st_size > 0:
                images.append((int(m.group(1)), f))
    images.sort()
    base_row = None
    if (p / "base_eval.json").is_file():
        try:
            base_row = json.loads((p / "base_eval.json").read_text())
        except (json.JSONDecodeError, OSError):
            base_row = None
    run = Run(path=p, config=_merge(_default_config(), raw), rows=rows, label_override=label,
              best_info=best if isinstance(best, dict) else None, images=images, bad_lines=bad,
              base_row=base_row if isinstance(base_row, dict) else None)
    run.golds = read_golds(p, run.logged_keys)
    return run


# ---- methods -----------------------------------------------------------------------------------------

def flatten_config(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": value}`` (lists and ``params`` dicts are kept as values)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("params", "evaluator_params") and v:
            out.update(flatten_config(v, key + "."))
        else:
            out[key] = v
    return out


def _method_signature(run: Run) -> str:
    """The config without the keys that do not define a method (a stable, hashable string)."""
    flat = {k: v for k, v in flatten_config(run.config).items()
            if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NON_METHOD_KEYS)}
    return json.dumps(flat, sort_keys=True, default=str)


def _fmt_value(v: Any) -> str:
    """A short rendering of a config value for labels."""
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def method_label(config: dict) -> str:
    """A readable method name from the loss settings (the names used in the paper's ablation)."""
    lo = config.get("loss") if isinstance(config.get("loss"), dict) else {}
    mode = lo.get("ratio_mode", "plain")
    weight = lo.get("step_weight", "none")
    kl = as_number(lo.get("kl_coef", 0.0))
    kl = kl if math.isfinite(kl) else 0.0
    named = {
        ("plain", "none"): "Flow-GRPO",
        ("mean_revised", "none"): "mean-revised",
        ("ratio_norm", "none"): "RatioNorm",
        ("ratio_norm", "inv_dt"): "GRPO-Guard",
        ("plain", "temp"): "TempFlow reweight",
    }
    base = named.get((mode, weight))
    if base is None:
        base = f"{mode} ratio, {weight} step weight"
    return f"{base} + KL" if kl > 0 else base


def _disambiguate(groups: list[list[Run]], labels: list[str]) -> list[str]:
    """Append the distinguishing config keys to labels that several groups share."""
    out = list(labels)
    for lab in set(labels):
        idx = [i for i, l in enumerate(labels) if l == lab]
        if len(idx) < 2:
            continue
        flats = [{k: v for k, v in flatten_config(groups[i][0].config).items()
                  if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in NON_METHOD_KEYS)}
                 for i in idx]
        keys = sorted({k for f in flats for k in f if any(f.get(k) != g.get(k) for g in flats)})
        for i, f in zip(idx, flats):
            desc = ", ".join(f"{k}={_fmt_value(f.get(k))}" for k in keys[:3])
            out[i] = f"{lab} [{desc}{', ...' if len(keys) > 3 else ''}]" if desc else lab
        if len({out[i] for i in idx}) < len(idx):  # still ambiguous: number them
            for n, i in enumerate(idx, 1):
                out[i] = f"{out[i]} #{n}"
    return out


def group_methods(runs: list[Run]) -> list[Method]:
    """Group runs into methods, in order of first appearance; runs within a method sorted by seed.

    Runs with an explicit label are grouped by that label; the others by their config without the seed
    (and without :data:`NON_METHOD_KEYS`), labelled by :func:`method_label`."""
    keys: list[str] = []
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = ("label:" + run.label_override) if run.label_override else ("cfg:" + _method_signature(run))
        if key not in groups:
            keys.append(key)
            groups[key] = []
        groups[key].append(run)
    ordered = [groups[k] for k in keys]
    labels = [g[0].label_override or method_label(g[0].config) for g in ordered]
    auto = [i for i, g in enumerate(ordered) if not g[0].label_override]
    fixed = _disambiguate([ordered[i] for i in auto], [labels[i] for i in auto])
    for i, lab in zip(auto, fixed):
        labels[i] = lab
    methods = []
    for lab, g in zip(labels, ordered):
        g = sorted(g, key=lambda r: (r.seed is None, r.seed if r.seed is not None else 0, str(r.path)))
        methods.append(Method(label=lab, runs=g))
    return methods


def load_runs(run_dirs, labels: dict | None = None) -> list[Method]:
    """Load run directories (``RUN_DIR`` or ``LABEL=RUN_DIR``) and group them into methods.

    ``labels`` optionally maps a run directory (as given, or resolved) to a label; it overrides both the
    config-derived label and a ``LABEL=`` prefix. The same directory given twice is read once."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("run_dirs: give at least one run directory")
    lab_map = {}
    for k, v in (labels or {}).items():
        lab_map[str(k)] = v
        lab_map[str(Path(k).resolve())] = v
    runs, seen = [], set()
    for spec in run_dirs:
        path, label = parse_run_spec(spec)
        label = lab_map.get(str(spec), lab_map.get(str(path.resolve()), label))
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        runs.append(load_run(path, label))
    return group_methods(runs)


# ---- gold at matched proxy ---------------------------------------------------------------------------


def seed_stats(values) -> dict:
    """``{"mean", "sd", "n"}`` of the finite values (population sd; 0 for one value; NaN when none)."""
    v = [float(x) for x in values if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]
    if not v:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    return {"mean": float(np.mean(v)), "sd": float(np.std(v)) if len(v) > 1 else 0.0, "n": len(v)}


def eval_points(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(evaluation proxy, key)`` of a run in epoch order, where both are finite, starting with the base
    model's evaluation (``base_eval.json``) when the run wrote one. The proxy is the evaluation proxy
    (``eval/proxy_reward_mean``): the same images as the gold metrics."""
    rows = ([run.base_row] if run.base_row else []) + run.epoch_rows
    px, gd = [], []
    for r in rows:
        p, g = as_number(r.get("eval/proxy_reward_mean")), as_number(r.get(key))
        if math.isfinite(p) and math.isfinite(g):
            px.append(p)
            gd.append(g)
    return np.array(px, dtype=float), np.array(gd, dtype=float)


def gain_points(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`eval_points` with the proxy as the GAIN over the run's first point (its start)."""
    px, gd = eval_points(run, key)
    return (px - px[0] if px.size else px), gd


def gold_at_proxy(proxy, gold, level: float) -> float:
    """Gold when the run *first reached* proxy ``level``, linearly interpolated between the last
    evaluation below ``level`` and the first at or above it. The points are in epoch order (the proxy
    need not be monotone). The run's starting point counts as reached for levels at or below it;
    NaN when the run never reaches ``level``."""
    x = np.asarray(proxy, dtype=float)
    y = np.asarray(gold, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"proxy and gold: need the same length, got {x.shape} and {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    hit = np.nonzero(x >= level)[0]
    if not hit.size:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(y[0])
    x0, x1, y0, y1 = x[i - 1], x[i], y[i - 1], y[i]
    return float(y0 + (level - x0) / (x1 - x0) * (y1 - y0))


def matched_gain(runs: list[Run], key: str) -> float | None:
    """The largest proxy gain every run in ``runs`` reached with ``key`` logged (None when some run has
    no point, or no run gained)."""
    gains = [gain_points(r, key)[0] for r in runs]
    if not gains or not all(g.size for g in gains):
        return None
    level = min(float(g.max()) for g in gains)
    return level if level > 0 else None


def _pairs(arm_runs: list[Run], base_runs: list[Run]) -> list[tuple[Run, Run]]:
    """Runs of the arm and of the baseline with the same seed (by position when seeds are missing)."""
    if all(r.seed is not None for r in [*arm_runs, *base_runs]):
        base = {r.seed: r for r in base_runs}
        return [(r, base[r.seed]) for r in arm_runs if r.seed in base]
    return list(zip(arm_runs, base_runs))


def format_stat(s: dict | None, spec: str = ".3f", missing: str = "n/a") -> str:
    """``mean ± sd`` of a :func:`seed_stats` dict (just the mean for one value); ``missing`` when empty."""
    if not s or s.get("n", 0) == 0 or not math.isfinite(s["mean"]):
        return missing
    return f"{s['mean']:{spec}} ± {s['sd']:{spec.lstrip('+')}}" if s["n"] > 1 else f"{s['mean']:{spec}}"


def format_paired_diff(m: dict) -> str:
    """A :func:`matched_gold` result's paired difference, ``+0.110 ± 0.010 (+78.0%)`` (the relative change
    against the baseline's mean when that is not 0): the one rendering of study.md and the report."""
    d = m["paired_diff"]
    base = m["baseline"]["mean"]
    rel = f" ({100 * d['mean'] / abs(base):+.1f}%)" if d["n"] and math.isfinite(base) and abs(base) > 1e-9 else ""
    return format_stat(d, "+.3f") + rel


def matched_gold(arm_runs: list[Run], base_runs: list[Run], key: str) -> dict | None:
    """Gold ``key`` of an arm and of the baseline at a matched proxy GAIN: the largest gain over the
    run's own start (the base model's evaluation) that every run of both reached (first crossing,
    interpolated). Runs with the same seed share the evaluation noise and the start, so the difference is
    paired by seed. Returns ``proxy_gain``; ``arm``, ``baseline`` and ``paired_diff`` (arm - baseline) as
    :func:`seed_stats`; ``arm_per_seed``, ``baseline_per_seed``, ``paired_per_seed`` and the paired
    ``seeds``. None when there is no common gain."""
    level = matched_gain([*arm_runs, *base_runs], key)
    if level is None:
        return None

    def at(run: Run) -> float:
        return gold_at_proxy(*gain_points(run, key), level)

    pairs = _pairs(arm_runs, base_runs)
    arm_v, base_v = [at(r) for r in arm_runs], [at(r) for r in base_runs]
    diffs = [at(a) - at(b) for a, b in pairs]
    return {"proxy_gain": level, "arm": seed_stats(arm_v), "baseline": seed_stats(base_v),
            "paired_diff": seed_stats(diffs), "arm_per_seed": arm_v, "baseline_per_seed": base_v,
            "paired_per_seed": diffs, "seeds": [a.seed for a, _ in pairs]}


def method_golds(methods: list[Method]) -> list[tuple[GoldMetric, str]]:
    """The golds the methods are compared on: ``(metric, reading key)`` in the declaration of the first
    run (the primary gold first), each read normalised where declared and logged, else raw; metrics that
    no run logged are left out."""
    if not methods:
        return []
    logged: set[str] = set()
    for m in methods:
        for r in m.runs:
            logged |= r.logged_keys
    return methods[0].first.golds.readings(logged)


def seeds_better(res: dict, higher_is_better: bool) -> tuple[int, int]:
    """``(k, n)``: of the ``n`` seeds a :func:`matched_gold` result pairs, the ``k`` where the arm is better
    than the baseline in the gold's direction."""
    diffs = [d for d in res["paired_per_seed"] if math.isfinite(d)]
    sign = 1 if higher_is_better else -1
    return sum(sign * d > 0 for d in diffs), len(diffs)
