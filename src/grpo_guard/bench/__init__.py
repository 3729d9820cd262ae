"""``grpo-guard bench``: speed and memory of the training loop, against the model's own compute and a
reference-style loop (:mod:`.measure`), over the settings and targets of :mod:`.settings`, drawn by
:mod:`.figure`."""

from .figure import fig_bench
from .measure import (CHILDREN, FORWARD_MB, after_each_row, bench_device, forward_memory_sweep, run_bench,
                      window_ratio, wrap_network)
from .settings import (EPOCH_FACTOR, LOSS_TOLERANCE, PROMPTS, SETTINGS, BenchError, format_table, make_spec,
                       prepare_out, setting_spec, targets)

__all__ = ["run_bench", "fig_bench", "SETTINGS", "PROMPTS", "EPOCH_FACTOR", "BenchError", "make_spec", "prepare_out",
           "setting_spec", "format_table", "targets", "wrap_network", "after_each_row", "bench_device",
           "forward_memory_sweep", "window_ratio", "FORWARD_MB", "LOSS_TOLERANCE", "CHILDREN"]
