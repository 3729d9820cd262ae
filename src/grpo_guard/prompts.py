"""Prompt sources: the prompts a run draws from, each with its metadata, and the seeded draw of each epoch.

Sources (``prompts.source``):

* ``digits``: the toy world's "a handwritten 0" .. "a handwritten 9" (metadata ``{"label": d}``);
* ``text``: the text world's fixed strings, ``render the text "abc"`` (metadata ``{"text": "abc"}``;
  :func:`grpo_guard.world.text_render.text_prompt_set`);
* ``file``: one prompt per non-empty line of a UTF-8 text file (no metadata);
* ``jsonl``: one JSON object per line with a ``prompt`` string; every other field is that prompt's
  metadata, handed to the rewards with it. This is the layout of GenEval's ``evaluation_metadata.jsonl``
  and of Flow-GRPO's released ``train_metadata.jsonl`` / ``test_metadata.jsonl`` (``tag``, ``include``,
  ``exclude``, ``prompt``), and of ``grpo-guard prompts``' output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import PROMPT_SOURCES
from .seeding import derive_generator
from .world.data import NUM_CLASSES, prompt_for_label

__all__ = ["PromptSet", "PROMPT_SOURCES", "load_prompt_set", "read_prompt_jsonl", "draw_epoch_indices"]


@dataclass(frozen=True)
class PromptSet:
    """The prompts of a source: ``texts[i]`` with its metadata ``metadata[i]`` (a dict; empty when the source
    has none)."""

    texts: list[str]
    metadata: list[dict]

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: list[int]) -> tuple[list[str], list[dict]]:
        """The texts and metadata of ``indices`` (each metadata a shallow copy, so that a reward that
        edits its dict cannot change the next epoch's)."""
        return [self.texts[i] for i in indices], [dict(self.metadata[i]) for i in indices]


def _read_text(path: str | Path | None, source: str) -> tuple[Path, str]:
    if not path:
        raise ValueError(f"prompts.path: required for prompt source {source!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"prompts.path: no such prompt file {path}")
    try:
        return p, p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"prompts.path: {path} is not UTF-8 text") from None


def read_prompt_jsonl(path: str | Path | None) -> PromptSet:
    """Read a JSONL prompt file (see the module docstring). Blank lines are skipped; any other line that is
    not a JSON object with a non-empty ``prompt`` string is an error naming the file and the line."""
    p, text = _read_text(path, "jsonl")
    texts, metadata = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"prompts.path: {p} line {n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with a \"prompt\" field, got {type(row).__name__}")
        prompt = row.pop("prompt", None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: needs a \"prompt\" field holding a non-empty string")
        texts.append(prompt.strip())
        metadata.append(row)
    if not texts:
        raise ValueError(f"prompts.path: {p} holds no prompts")
    return PromptSet(texts, metadata)


def load_prompt_set(source: str, path: str | None = None) -> PromptSet:
    """All prompts of a source, with their metadata (see the module docstring)."""
    if source == "digits":
        return PromptSet([prompt_for_label(d) for d in range(NUM_CLASSES)], [{"label": d} for d in range(NUM_CLASSES)])
    if source == "text":
        from .world.text_render import text_prompt, text_prompt_set

        strings = text_prompt_set()
        return PromptSet([text_prompt(t) for t in strings], [{"text": t} for t in strings])
    if source == "file":
        p, text = _read_text(path, source)
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not prompts:
            raise ValueError(f"prompts.path: {path} holds no prompts")
        return PromptSet(prompts, [{} for _ in prompts])
    if source == "jsonl":
        return read_prompt_jsonl(path)
    raise ValueError(f"prompts.source: unknown prompt source {source!r}; expected one of {', '.join(PROMPT_SOURCES)}")


def draw_epoch_indices(num_prompts: int, num: int, seed: int, epoch: int) -> list[int]:
    """``num`` prompt indices for an epoch: distinct when possible (a seeded permutation), else with
    repetition. Depends only on (seed, epoch), so every process draws the same list."""
    g = derive_generator(seed, "prompts", epoch)
    if num <= num_prompts:
        idx = torch.randperm(num_prompts, generator=g)[:num]
    else:
        idx = torch.randint(num_prompts, (num,), generator=g)
    return idx.tolist()

