"""The ways a training run ends early, as exceptions the CLI turns into one-line messages."""

from __future__ import annotations

from .runlog import RunDirError
from .update import PreflightError

__all__ = ["OutputWriteError", "TrainingStopped", "TrainingInterrupted", "RunDirError", "PreflightError"]


class OutputWriteError(RuntimeError):
    """A checkpoint or a metrics line could not be written (disk full, directory gone or read-only)."""


class TrainingStopped(RuntimeError):
    """The run stopped cleanly before its last epoch (too many bad batches); a checkpoint was written."""


class TrainingInterrupted(TrainingStopped):
    """SIGINT or SIGTERM: the run wrote a checkpoint at the end of the current epoch and stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):  # picklable with its signal number (it crosses from worker processes)
        return type(self), (str(self), self.signum)
