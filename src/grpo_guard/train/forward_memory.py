"""The activation memory of a training forward, measured as what autograd keeps for the backward.

``train.max_forward_mb`` bounds the training forward by memory instead of by rows: the loop measures,
on the run's first training call, the bytes of the distinct tensor storages that autograd saves for
the backward (the activations, the dominant term of a forward + backward's memory), divides by the
call's rows and from then on groups at most ``max_forward_mb / bytes_per_row`` rows per call. The
measure is device-independent (no allocator statistics), excludes the model's own parameters and
buffers (they do not grow with rows), and does not see transient buffers inside one operation, so
the bound is on the memory held between the forward and the backward. On the toy SD3 the process's
peak grew by about 2.6 times the saved activations (the backward's gradients and temporaries; see
``docs/benchmarks.md``). Under gradient checkpointing only what is kept outside the checkpointed
blocks is seen; with ``train.fsdp`` the gathered weights saved for the backward count as activations
(an over-estimate).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SavedBytes", "count_saved_bytes", "rows_for_budget"]


@dataclass
class SavedBytes:
    """Running total of :func:`count_saved_bytes`: ``bytes`` over ``tensors`` distinct storages."""

    bytes: int = 0
    tensors: int = 0


def _storage_key(t: Tensor) -> int | None:
    t = getattr(t, "_local_tensor", t)  # a DTensor's local shard
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, some subclasses)
        return None


@contextmanager
def count_saved_bytes(exclude: Iterable[Tensor] = ()) -> Iterator[SavedBytes]:
    """Count the bytes of the distinct storages autograd saves for backward inside the context.

    Args:
        exclude: tensors whose storages are not counted (the model's parameters and buffers).

    Yields:
        a :class:`SavedBytes` filled in as operations run; each storage is counted once, whole
        (``untyped_storage().nbytes()``), however many saved tensors view it.
    """
    skip = {k for k in map(_storage_key, exclude) if k is not None}
    seen: set[int] = set()
    total = SavedBytes()

    def pack(t: Tensor) -> Tensor:
        key = _storage_key(t)
        if key is not None and key not in skip and key not in seen:
            seen.add(key)
            total.bytes += getattr(t, "_local_tensor", t).untyped_storage().nbytes()
            total.tensors += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


def rows_for_budget(max_mb: float, bytes_per_row: float) -> int:
    """Rows per training call within ``max_mb`` MiB at ``bytes_per_row`` (at least 1)."""
    if not bytes_per_row > 0:
        raise ValueError(f"bytes_per_row: must be > 0, got {bytes_per_row}")
    return max(1, int(max_mb * 2**20 // bytes_per_row))
