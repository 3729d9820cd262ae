"""Deterministic randomness: every random draw of a run derives from (seed, purpose, indices).

Nothing depends on a global RNG or on the order of earlier draws, so a resumed run, or a run
split over several processes, draws exactly the same noise for the same (epoch, sample).
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "derive_generator"]


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the run seed and any keys (strings, ints)."""
    text = "/".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & ((1 << 63) - 1)


def derive_generator(seed: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, *keys))
