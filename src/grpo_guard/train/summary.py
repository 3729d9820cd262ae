"""The one-screen summary of a run: what the proxy and the golds did, whether the monitor fired, the
preflight, the gradient spread and the clipping by advantage sign, the wall time.

:func:`summarise_run` reads a run directory (``metrics.jsonl``, ``base_eval.json``, ``best/info.json``) and
returns a JSON-able dict; :func:`format_summary` prints it; :func:`write_summary` writes it atomically to
``RUN_DIR/summary.json``. Every figure is read from those files, so the summary of a finished run, of an
interrupted one and of a copied run directory agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


from ..golds import GoldMetric, read_golds
from .runlog import MetricsLog, atomic_write_text, to_jsonable

__all__ = ["summarise_run", "format_summary", "format_summary_line", "gold_lines", "gold_readings", "write_summary",
           "SUMMARY_FILE"]

SUMMARY_FILE = "summary.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def gold_readings(run: Path, logged: set[str]) -> list[tuple[GoldMetric, str]]:
    """The run's golds (its ``golds.json``, or inferred from ``logged``), each with the key it is read from
    (normalised where declared and logged, else raw), the primary first; golds never logged are left out."""
    return read_golds(run, logged).readings(logged)


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if _finite(v)]
    return sum(vals) / len(vals) if vals else None


def _clip_by_sign(rows: list[dict]) -> dict | None:
    """Mean over epochs and trained steps of the off-policy clip fractions by advantage sign."""
    out = {}
    for key in ("clip_high_pos", "clip_low_pos", "clip_high_neg", "clip_low_neg"):
        per_epoch = [_mean(r["step_stats"][key]) for r in rows if key in (r.get("step_stats") or {})]
        m = _mean(per_epoch)
        if m is not None:
            out[key] = m
    return out or None


def summarise_run(run_dir: str | Path, *, interrupted: bool = False) -> dict:
    """The summary of the run in ``run_dir`` (see the module docstring). ``interrupted``: the run was
    stopped by a signal before its last epoch."""
    run = Path(run_dir)
    rows = [r for r in MetricsLog(run / "metrics.jsonl").rows() if isinstance(r, dict)]
    base = _read_json(run / "base_eval.json")
    best = _read_json(run / "best" / "info.json")
    train_rows = [r for r in rows if _finite(r.get("proxy_reward_mean"))]
    eval_rows = [r for r in rows if _finite(r.get("eval/proxy_reward_mean"))]
    s: dict = {"run_dir": str(run), "interrupted": interrupted, "epochs": len(rows)}
    if train_rows:
        proxies = [r["proxy_reward_mean"] for r in train_rows]
        s["proxy"] = {"first": proxies[0], "last": proxies[-1], "best": max(proxies),
                      "best_epoch": train_rows[proxies.index(max(proxies))]["epoch"]}
    if eval_rows:
        s["eval_proxy"] = {"base": base.get("eval/proxy_reward_mean"), "final": eval_rows[-1]["eval/proxy_reward_mean"],
                           "final_epoch": eval_rows[-1]["epoch"]}
    best_row = next((r for r in rows if r.get("epoch") == best.get("epoch")), None) if best else None
    golds = {}
    logged = {k for r in [base, *eval_rows] for k, v in r.items() if _finite(v)}
    for metric, key in gold_readings(run, logged):
        final = next((r[key] for r in reversed(eval_rows) if _finite(r.get(key))), None)
        golds[key] = {"label": metric.label, "primary": metric.primary, "higher_is_better": metric.better(key),
                      "base": base.get(key, 1.0 if key != metric.key else None), "final": final,
                      "at_best": best_row.get(key) if best_row else None}
    if golds:
        s["golds"] = golds
    if best:
        s["best_checkpoint"] = {"epoch": best.get("epoch"), "dir": str(run / "best")}
    hacking = [r["epoch"] for r in rows if r.get("monitor/hacking")]
    s["monitor"] = {"hacking": bool(hacking), "hacking_epoch": rows[-1].get("monitor/hacking_epoch") if rows else None,
                    "flagged_epochs": hacking}
    pre = next((r["preflight_max_abs_log_ratio"] for r in rows if "preflight_max_abs_log_ratio" in r), None)
    s["preflight"] = {"passed": pre is not None, "max_abs_log_ratio": pre}
    spreads = [r["grad_norm_spread"] for r in rows if _finite(r.get("grad_norm_spread"))]
    if spreads:
        s["grad_norm_spread"] = {"mean": _mean(spreads), "first": spreads[0], "last": spreads[-1]}
    clip = _clip_by_sign(rows)
    if clip:
        s["clip_by_sign"] = clip
    s["skipped_batches"] = max((r.get("skipped_batches", 0) for r in rows), default=0)
    s["wall_seconds"] = rows[-1].get("wall_seconds") if rows else None
    s["report_command"] = f"grpo-guard report {run} --out {run / 'report'}"
    return s


def _fmt(v, digits: int = 4) -> str:
    return f"{v:.{digits}g}" if _finite(v) else "—"


def format_summary(s: dict) -> str:
    """The summary as the lines a terminal shows at the end of a run."""
    head = f"run {s['run_dir']}: {s['epochs']} epochs" + (" (interrupted)" if s.get("interrupted") else "")
    if _finite(s.get("wall_seconds")):
        head += f" in {s['wall_seconds'] / 60:.1f} min"
    lines = [head]
    if "proxy" in s:
        p = s["proxy"]
        lines.append(f"  proxy (training batches)  {_fmt(p['first'])} -> {_fmt(p['last'])}  "
                     f"(best {_fmt(p['best'])} at epoch {p['best_epoch']})")
    if "eval_proxy" in s:
        e = s["eval_proxy"]
        lines.append(f"  proxy (evaluation)        {_fmt(e['base'])} (base) -> {_fmt(e['final'])}")
    lines += gold_lines(s.get("golds", {}), s.get("best_checkpoint", {}).get("epoch"))
    m = s["monitor"]
    lines.append("  monitor                   " + (f"over-optimization flagged at epoch {m['hacking_epoch']}"
                                                  if m["hacking"] else "no over-optimization flagged"))
    pre = s["preflight"]
    lines.append("  preflight                 " + (f"on-policy ratio 1 (max |log r| {pre['max_abs_log_ratio']:.2g})"
                                                  if pre["passed"] else "not run"))
    if "grad_norm_spread" in s:
        g = s["grad_norm_spread"]
        lines.append(f"  per-step grad-norm spread {_fmt(g['mean'], 3)}x (mean over epochs; max / min step)")
    if "clip_by_sign" in s:
        c = s["clip_by_sign"]
        lines.append(f"  clipped, A > 0            above {_fmt(c.get('clip_high_pos'), 3)}, below "
                     f"{_fmt(c.get('clip_low_pos'), 3)}; A < 0: above {_fmt(c.get('clip_high_neg'), 3)}, below "
                     f"{_fmt(c.get('clip_low_neg'), 3)}")
    if s.get("skipped_batches"):
        lines.append(f"  skipped batches           {s['skipped_batches']}")
    lines.append(f"  draw it: {s['report_command']}")
    return "\n".join(lines)


def gold_lines(golds: dict, best_epoch: int | None = None, final: str = "final") -> list[str]:
    """The lines of the gold metrics ``{reading key: {"label", "primary", "higher_is_better", "base",
    "final", "at_best"}}`` (as :func:`summarise_run` makes them): each ``base -> final`` (and its value at the
    best checkpoint), the primary gold marked, a lower-is-better one said so."""
    if not golds:
        return []
    lines = [f"  gold                      base -> {final}" + (f" (at the best checkpoint, epoch {best_epoch})"
                                                            if best_epoch is not None else "")]
    for key, g in golds.items():
        at_best = f" ({_fmt(g['at_best'])})" if g.get("at_best") is not None else ""
        arrow = " (lower is better)" if g.get("higher_is_better") is False else ""
        mark = "* " if g.get("primary") else "  "
        lines.append(f"  {mark}{key:23s} {_fmt(g['base'])} -> {_fmt(g['final'])}{at_best}{arrow}")
    if any(g.get("primary") for g in golds.values()):
        lines.append("    (* the primary gold)")
    return lines


def format_summary_line(s: dict) -> str:
    """The summary in one line (``study`` prints one per run): proxy, the headline gold, monitor, spread."""
    parts = [Path(s["run_dir"]).name]
    if "proxy" in s:
        parts.append(f"proxy {_fmt(s['proxy']['first'], 3)} -> {_fmt(s['proxy']['last'], 3)}")
    golds = s.get("golds", {})
    key = next((k for k, g in golds.items() if g.get("primary")), next(iter(golds), None))
    if key is not None:
        parts.append(f"{key} {_fmt(golds[key]['base'], 3)} -> {_fmt(golds[key]['final'], 3)}")
    if s["monitor"]["hacking"]:
        parts.append(f"over-optimization flagged at epoch {s['monitor']['hacking_epoch']}")
    if "grad_norm_spread" in s:
        parts.append(f"grad-norm spread {_fmt(s['grad_norm_spread']['mean'], 3)}x")
    return ", ".join(parts) + (" (interrupted)" if s.get("interrupted") else "")


def write_summary(run_dir: str | Path, *, interrupted: bool = False) -> dict:
    """Summarise the run in ``run_dir`` and write ``summary.json`` there atomically; returns the summary."""
    s = summarise_run(run_dir, interrupted=interrupted)
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(to_jsonable(s), indent=1))
    return s
