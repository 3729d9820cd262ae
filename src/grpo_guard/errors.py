"""Errors shared across the package's layers."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A problem with the user's input (a bad path, option or file): the CLI prints it as one line and
    exits with code 2."""
