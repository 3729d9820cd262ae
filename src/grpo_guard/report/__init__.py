"""Figures and an HTML report built from run directories (``grpo-guard report RUN_DIR ... --out DIR``).

    from grpo_guard.report import build_report
    build_report(["runs/flow_grpo_s0", "runs/flow_grpo_s1", "runs/grpo_guard_s0"], "report/")

Runs whose configs differ only in ``seed`` are grouped into one method, labelled from the loss
settings ("Flow-GRPO", "GRPO-Guard", "RatioNorm", ...) unless given as ``LABEL=RUN_DIR``. Methods are
compared with a baseline (Flow-GRPO when present) at matched proxy gain, paired by seed, never at matched
epoch, on the golds the runs declare (:mod:`grpo_guard.golds`; the primary gold first).
"""

from .figures import make_figures
from .html import build_report
from .runs import Method, Run, gold_at_proxy, group_methods, load_run, load_runs, matched_gold, method_label

__all__ = ["build_report", "make_figures", "Run", "Method", "load_run", "load_runs", "group_methods",
           "method_label", "gold_at_proxy", "matched_gold"]
