"""Deterministic randomness: every random draw of a run derives from (seed, purpose, indices).

Nothing depends on a global RNG or on the order of earlier draws, so a resumed run, or a run
split over several processes, draws exactly the same noise for the same (epoch, sample).
"""

from __future__ import annotations

import contextlib
import hashlib
import os

import torch

__all__ = ["derive_seed", "derive_generator", "deterministic_algorithms", "reproducibility_record"]


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any keys (strings, ints)."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


def derive_generator(seed: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """While active (``enabled``): torch's deterministic algorithms (an op without one raises), cuDNN's
    autotuner off, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (cuBLAS's deterministic workspace) unless the
    user set it; restored on exit. Needed for same-seed runs on CUDA, not on the CPU (docs/reliability.md).
    The cuBLAS setting takes effect only if cuBLAS has not started yet in this process."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        if before[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def reproducibility_record() -> dict:
    """What a bit-for-bit repetition of a run depends on besides its config: torch's version and thread
    count, MKL's reproducibility mode and the deterministic-algorithms flag."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "MKL_CBWR": os.environ.get("MKL_CBWR"),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None}
