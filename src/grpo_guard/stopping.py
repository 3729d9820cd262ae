"""One stop mechanism for the whole process: SIGINT (Ctrl-C) and SIGTERM (a scheduler's preemption).

While :func:`installed` is active (the CLI holds it for every command; :func:`grpo_guard.train.loop.train`
holds it for a run started from Python):

* the **first** signal stops the process promptly. Outside a :func:`deferred` section it raises
  :class:`StopRequested` at once, wherever the main thread is (pretraining, training the reward models,
  loading models, the base model's evaluation): nothing of a phase is kept until it is written, and every
  cache entry is written atomically (:mod:`grpo_guard.cache_entry`), so the next run redoes the phase.
  Inside a :func:`deferred` section (a training run's epochs, a pool of worker runs) it only sets the
  flag: the code polls :func:`requested` at its safe points and stops there (a training run at the next
  phase boundary of its epoch, with a checkpoint; see ``train/loop.py``);
* the first signal is also passed on (as SIGTERM) to the worker processes registered with
  :func:`register_children`, which stop the same way;
* a **second** signal exits at once (exit code 128 + signal number), after SIGKILL to the registered
  workers; atomic writes keep the run directories and the cache valid.

:func:`phase` names what the process is doing, for the one-line message of :class:`StopRequested`.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

__all__ = ["StopRequested", "installed", "install_for_process", "deferred", "requested", "request", "stop_signal", "phase", "current_phase",
           "register_children", "raise_if_requested", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(BaseException):
    """The process was asked to stop (a BaseException, like KeyboardInterrupt, so that no ``except Exception``
    swallows it). ``signum``: the signal; ``phase``: what was interrupted."""

    def __init__(self, signum: int, phase: str = ""):
        self.signum, self.phase = int(signum), phase
        name = signal.Signals(self.signum).name
        super().__init__(f"interrupted by {name}" + (f" while {phase}" if phase else ""))

    def __reduce__(self):  # crosses from worker processes to the parent
        return (StopRequested, (self.signum, self.phase))


class _State:
    def __init__(self):
        self.depth = 0  # nesting of installed()
        self.deferred = 0  # nesting of deferred()
        self.requested = False
        self.signum: int | None = None
        self.phases: list[str] = []
        self.previous: dict[int, object] = {}
        self.children: list[Callable[[], Iterable[int]]] = []
        self.signals: tuple[int, ...] = STOP_SIGNALS
        self.permanent = None  # the installed() of install_for_process


_STATE = _State()


def requested() -> bool:
    """True once a stop signal arrived (in an :func:`installed` section)."""
    return _STATE.requested


def request(signum: int = signal.SIGTERM) -> None:
    """Set the stop flag without a signal (another process of a distributed run received one)."""
    if not _STATE.requested:
        _STATE.requested, _STATE.signum = True, int(signum)


def stop_signal() -> int | None:
    """The first stop signal's number (None before any)."""
    return _STATE.signum


def current_phase() -> str:
    """The innermost :func:`phase` name ('' outside any)."""
    return _STATE.phases[-1] if _STATE.phases else ""


def raise_if_requested() -> None:
    """Raise :class:`StopRequested` if a stop signal arrived (the poll of a :func:`deferred` section)."""
    if _STATE.requested:
        raise StopRequested(_STATE.signum or signal.SIGTERM, current_phase())


def _child_pids() -> list[int]:
    pids = []
    for source in _STATE.children:
        try:
            pids.extend(int(p) for p in source())
        except Exception:  # noqa: BLE001 - a pool being torn down has no pid list
            pass
    return pids


def _signal_children(signum: int) -> None:
    for pid in _child_pids():
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _handler(signum, frame) -> None:
    st = _STATE
    if st.requested:  # the second signal: at once
        _signal_children(signal.SIGKILL)
        os._exit(128 + int(signum))
    st.requested, st.signum = True, int(signum)
    _signal_children(signal.SIGTERM)
    if not st.deferred:
        raise StopRequested(signum, current_phase())


@contextmanager
def installed(signals: Iterable[int] | None = None) -> Iterator[None]:
    """Handle stop signals while active (main thread only; elsewhere inert). The outermost entry clears any
    earlier stop and installs the handlers for ``signals`` (default SIGINT and SIGTERM; a worker process
    whose parent forwards the stop takes SIGTERM only); nested entries change nothing."""
    st = _STATE
    main = threading.current_thread() is threading.main_thread()
    outermost = main and st.depth == 0
    if outermost:
        st.requested, st.signum = False, None
        st.signals = tuple(signals) if signals is not None else STOP_SIGNALS
        for sig in st.signals:
            st.previous[sig] = signal.getsignal(sig)
            signal.signal(sig, _handler)
    if main:
        st.depth += 1
    try:
        yield
    finally:
        if main:
            st.depth -= 1
        if outermost:
            for sig, prev in st.previous.items():
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            st.previous.clear()


def install_for_process(signals: Iterable[int]) -> None:
    """Install the handlers for the rest of the process (a worker process of a pool): like an outermost
    :func:`installed` that is never left, so that a stop received during one task still holds for the
    tasks queued after it."""
    cm = installed(signals)
    cm.__enter__()
    _STATE.permanent = cm  # kept: a collected generator would run its exit and restore the old handlers


@contextmanager
def deferred() -> Iterator[None]:
    """Inside, a first stop signal only sets the flag (:func:`requested`); the code polls it at its safe
    points. A signal that arrived before entering is raised on entry."""
    raise_if_requested()
    _STATE.deferred += 1
    try:
        yield
    finally:
        _STATE.deferred -= 1


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Name what the process is doing (the message of a :class:`StopRequested` raised inside)."""
    _STATE.phases.append(name)
    try:
        yield
    finally:
        _STATE.phases.pop()


@contextmanager
def register_children(pids: Callable[[], Iterable[int]]) -> Iterator[None]:
    """While active, the stop is passed on to the processes ``pids()`` returns (called at signal time)."""
    _STATE.children.append(pids)
    try:
        yield
    finally:
        _STATE.children.remove(pids)
