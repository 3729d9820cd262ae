"""The one-screen summary of a comparison in one world: what ``grpo-guard demo`` prints for each world and
puts at the top of its reports.

:func:`summarise_world` reads the runs (every figure from their ``metrics.jsonl`` and ``base_eval.json``):
for each method the evaluation proxy from the base model to the last evaluation, the gradient-norm
spread and the monitor's flags; for each method against the baseline the primary gold and the world's
true attribute at matched proxy gain (:func:`~grpo_guard.report.runs.matched_gold`), with Δ paired by
seed. :func:`format_world_summary` renders it in a few lines, ending with one sentence on what the
numbers mean.
"""

from __future__ import annotations


from .html import baseline_method, primary_gold
from .runs import (Method, eval_points, format_paired_diff, format_stat, matched_gold, method_golds, seed_stats,
                   seeds_better)

__all__ = ["summarise_world", "format_world_summary"]


def _gold_entry(metric, key: str, method: Method, base: Method) -> dict | None:
    res = matched_gold(method.runs, base.runs, key)
    if res is None:
        return None
    higher = metric.better(key)
    better, seeds = seeds_better(res, higher)
    return {"label": metric.label, "key": key, "higher_is_better": higher, "matched": res,
            "better_seeds": better, "seeds": seeds}


def summarise_world(methods: list[Method], baseline: str | None = None) -> dict:
    """The summary of the methods' runs (see the module docstring) as a JSON-able dict."""
    base = baseline_method(methods, baseline)
    primary = primary_gold(methods)
    golds = [primary] if primary else []
    golds += [(m, k) for m, k in method_golds(methods) if m.true_attribute and (primary is None or m is not primary[0])]
    out: dict = {"baseline": base.label, "methods": {}, "comparisons": {}}
    for m in methods:
        proxies = [eval_points(r, "eval/proxy_reward_mean")[0] for r in m.runs]
        flagged = [r.hacking_epoch() for r in m.runs]
        out["methods"][m.label] = {
            "seeds": m.seeds,
            "proxy_start": seed_stats([p[0] for p in proxies if p.size]),
            "proxy_final": seed_stats([p[-1] for p in proxies if p.size]),
            "grad_norm_spread": seed_stats([r.mean_grad_norm_spread() for r in m.runs]),
            "hacking_epochs": flagged,
        }
        if m is not base:
            out["comparisons"][m.label] = [e for e in (_gold_entry(g, k, m, base) for g, k in golds) if e]
    return out


#: a paired difference smaller than this fraction of the baseline's value reads as a tie
NEGLIGIBLE = 0.005


def _verdict(entry: dict) -> str:
    """How a matched-proxy difference reads: better or worse when every seed agrees, the mean is beyond twice
    the seeds' spread and at least 0.5% of the baseline's value; else a tie."""
    d, base = entry["matched"]["paired_diff"], entry["matched"]["baseline"]["mean"]
    if not d["n"] or abs(d["mean"]) <= NEGLIGIBLE * abs(base):
        return "tie"
    sign = 1 if entry["higher_is_better"] else -1
    if entry["better_seeds"] == entry["seeds"] and sign * d["mean"] > 2 * d["sd"]:
        return "better"
    if entry["better_seeds"] == 0 and -sign * d["mean"] > 2 * d["sd"]:
        return "worse"
    return "tie"


def format_world_summary(summary: dict, world: str) -> list[str]:
    """The summary as terminal lines: a header, proxy, golds at matched proxy, spread, monitor, a sentence."""
    base = summary["baseline"]
    labels = list(summary["methods"])
    width = max(len(x) for x in labels)
    lines = [f"{world}: " + " vs ".join(f"{m} ({len(v['seeds'])} seeds)" for m, v in summary["methods"].items())]
    for m, v in summary["methods"].items():
        lines.append(f"  {m:<{width}}  eval proxy {format_stat(v['proxy_start'], '.3g')} -> "
                     f"{format_stat(v['proxy_final'], '.3g')}; grad-norm spread "
                     f"{format_stat(v['grad_norm_spread'], '.3g')}x; monitor "
                     + (", ".join(f"flagged epoch {e}" for e in v["hacking_epochs"] if e is not None)
                        or "no over-optimization flagged"))
    sentences = []
    for m, entries in summary["comparisons"].items():
        if not entries:
            lines.append(f"  {m} vs {base}: no proxy gain that every run reached; nothing to compare")
            continue
        for e in entries:
            r = e["matched"]
            lines.append(f"  at matched proxy gain {r['proxy_gain']:.3g}, {e['label']} "
                         f"({'higher' if e['higher_is_better'] else 'lower'} is better): {m} "
                         f"{format_stat(r['arm'])} vs {base} {format_stat(r['baseline'])}, "
                         f"\u0394 {format_paired_diff(r)}, better in {e['better_seeds']}/{e['seeds']} seeds")
        head = entries[0]
        verdict = {v: [e["label"] for e in entries if _verdict(e) == v] for v in ("better", "worse", "tie")}
        if verdict["better"]:
            sentences.append(f"{m} keeps more of the {' and the '.join(verdict['better'])} than {base} at the same "
                             "proxy gain, in every seed: the method helps in this world.")
        elif verdict["worse"]:
            sentences.append(f"{m} ends with less of the {' and the '.join(verdict['worse'])} than {base} at the "
                             "same proxy gain: the method does not help in this world.")
        else:
            sentences.append(f"{m} and {base} are tied on the {head['label']} at the same proxy gain (the "
                             "difference is within the seeds' spread): the method changes little in this world.")
    lines += [f"  => {s}" for s in sentences]
    return lines
