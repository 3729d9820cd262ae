"""Prompt sources: the list of prompts a run draws from, and the seeded draw of each epoch."""

from __future__ import annotations

from pathlib import Path

import torch

from .seeding import derive_generator

__all__ = ["load_prompts", "draw_epoch_prompts"]


def load_prompts(source: str, path: str | None = None, attributes: bool = False) -> list[str]:
    """All prompts of a source: ``digits`` -> "a handwritten 0" .. "a handwritten 9"; ``file`` -> one per
    non-empty line of a UTF-8 text file."""
    if source == "digits":
        from .world.data import NUM_CLASSES, prompt_for_label

        return [prompt_for_label(d) for d in range(NUM_CLASSES)]
    if source == "file":
        if not path:
            raise ValueError("path: required for prompt source 'file'")
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"path: no such prompt file {path}")
        try:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError:
            raise ValueError(f"path: {path} is not UTF-8 text") from None
        prompts = [ln for ln in lines if ln]
        if not prompts:
            raise ValueError(f"path: {path} holds no prompts")
        return prompts
    raise ValueError(f"source: unknown prompt source {source!r}; expected 'digits' or 'file'")


def draw_epoch_prompts(prompts: list[str], num: int, seed: int, epoch: int) -> list[str]:
    """``num`` prompts for an epoch: distinct when possible (a seeded permutation), else with
    repetition. Depends only on (seed, epoch), so every process draws the same list."""
    g = derive_generator(seed, "prompts", epoch)
    if num <= len(prompts):
        idx = torch.randperm(len(prompts), generator=g)[:num]
    else:
        idx = torch.randint(len(prompts), (num,), generator=g)
    return [prompts[i] for i in idx.tolist()]
