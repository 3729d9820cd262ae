"""Fault injection for the reliability tests, and the stop-on-signal flag.

``GRPO_GUARD_FAULT=POINT:N`` makes the process kill itself with SIGKILL the N-th time (1-based) it
reaches ``POINT``; several faults are separated by commas. The points are ``rollout`` (after the
rollout of an epoch), ``update`` (after each optimizer step), ``checkpoint_write`` (between two files
of a checkpoint being written), ``metrics_write`` (before a metrics line is written) and ``eval``.
Without the variable :func:`fault_point` costs one dict lookup. Nothing else reads it.

:class:`StopRequest` turns SIGINT / SIGTERM into a flag the training loop checks at the end of each
epoch, where it writes a checkpoint and exits cleanly. A second signal restores the default handler
behaviour (SIGINT raises KeyboardInterrupt at once; the atomic checkpoints stay valid).
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["fault_point", "StopRequest", "FAULT_ENV"]

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


class StopRequest:
    """Context manager: while active, the first SIGINT or SIGTERM sets ``requested`` (and ``signum``)
    instead of interrupting; a second one gets the previous handler's behaviour. Only installs
    handlers in the main thread (elsewhere it is inert)."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame):
        if self.requested:  # second signal: behave as before we were installed
            prev = self._previous.get(signum)
            signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.requested, self.signum = True, signum

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._previous.clear()
