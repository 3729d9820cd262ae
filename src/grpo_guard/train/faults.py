"""Fault injection for the reliability tests.

``GRPO_GUARD_FAULT=POINT:N`` makes the process kill itself with SIGKILL the N-th time (1-based) it
reaches ``POINT``; several faults are separated by commas. The points are ``rollout`` (after the
rollout of an epoch), ``update`` (after each optimizer step), ``checkpoint_write`` (between two files
of a checkpoint being written), ``metrics_write`` (before a metrics line is written) and ``eval``.
Without the variable :func:`fault_point` costs one dict lookup. Nothing else reads it.

Stop signals (SIGINT / SIGTERM) are handled by :mod:`grpo_guard.stopping`.
"""

from __future__ import annotations

import os
import signal

__all__ = ["fault_point", "FAULT_ENV"]

FAULT_ENV = "GRPO_GUARD_FAULT"
FAULT_POINTS = ("rollout", "update", "checkpoint_write", "metrics_write", "eval")
_hits: dict[str, int] = {}


def _targets() -> dict[str, int]:
    spec = os.environ.get(FAULT_ENV, "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        point, _, n = item.partition(":")
        if point not in FAULT_POINTS or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{FAULT_ENV}: bad fault {item!r} (expected POINT:N with POINT one of "
                             f"{', '.join(FAULT_POINTS)} and N >= 1)")
        out[point] = int(n)
    return out


def fault_point(point: str) -> None:
    """Count a visit of ``point``; SIGKILL this process at the visit named by ``GRPO_GUARD_FAULT``."""
    if FAULT_ENV not in os.environ:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _targets().get(point) == _hits[point]:
        os.kill(os.getpid(), signal.SIGKILL)
