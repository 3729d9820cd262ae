"""Tensor operations the training loop runs per epoch outside the network: a count that, unlike a
timing, does not move with the machine's load.

    python benchmarks/loop_ops.py toy-mlp-8px [--epochs 6] [--top 25] [--set KEY=VALUE ...]

Runs a real ``train()`` of one ``grpo-guard bench`` setting under a ``TorchDispatchMode`` that counts
every aten operation dispatched outside the backbone's ``encode_prompts`` / ``forward`` / ``decode``
and ``torch.autograd.backward`` (the same boundary as the bench's in-situ network clock), from the
second epoch on, and prints the count per epoch and the ``grpo_guard`` source lines that issue most of
them. On the small CPU worlds each such operation costs several microseconds of dispatch, whatever
its size.
"""

from __future__ import annotations

import collections
import tempfile
import traceback
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode

from _common import setting_config, setting_parser
from grpo_guard.bench import wrap_network
from grpo_guard.train import loop


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.in_network, self.counting = 0, False
        self.ops: collections.Counter = collections.Counter()
        self.sites: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.counting and not self.in_network:
            self.ops[str(func)] += 1
            for fr in reversed(traceback.extract_stack(limit=30)):
                if "grpo_guard" in fr.filename:
                    self.sites[f"{fr.filename.split('grpo_guard/')[-1]}:{fr.lineno} ({fr.name})"] += 1
                    break
        return func(*args, **(kwargs or {}))

    def network(self, fn):
        def wrapper(*a, **k):
            self.in_network += 1
            try:
                return fn(*a, **k)
            finally:
                self.in_network -= 1
        return wrapper


def main() -> None:
    ap = setting_parser(epochs=6)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    cfg = setting_config(ap, a, min_epochs=2)

    counter = _OpCounter()

    def start_counting(row):  # from the end of the first epoch on
        counter.counting = True

    wrap_network(counter.network, after_append=start_counting)
    with tempfile.TemporaryDirectory() as d, counter:
        loop.train(cfg, Path(d) / "run", log=lambda *_: None)
    epochs = a.epochs - 1
    print(f"{a.setting}: {sum(counter.ops.values()) / epochs:.0f} tensor operations per epoch outside the network "
          f"(mean of {epochs} epochs after the first)")
    print("by source line:")
    for site, n in counter.sites.most_common(a.top):
        print(f"  {n / epochs:8.1f}  {site}")
    print("by operation:")
    for op, n in counter.ops.most_common(10):
        print(f"  {n / epochs:8.1f}  {op}")


if __name__ == "__main__":
    main()
