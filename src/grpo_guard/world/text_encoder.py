"""The toy world's text side: a word-level tokenizer over a fixed vocabulary and a small transformer encoder.

Prompts such as "a handwritten 7" become (B, L) token ids (``TokenBatch``); the encoder gives per-token
embeddings (B, L, E) and a pooled embedding (B, P). It is trained jointly with the velocity network
(:mod:`grpo_guard.world.generator`) and frozen afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VOCAB", "DIGIT_NAMES", "ATTRIBUTE_WORDS", "TokenBatch", "WordTokenizer", "TextEncoder"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ATTRIBUTE_WORDS = ("thick", "thin", "bold", "small", "large")
PAD, CLS, UNK = "<pad>", "<cls>", "<unk>"
#: the fixed vocabulary; a word's id is its index
VOCAB: tuple[str, ...] = (PAD, CLS, UNK, "a", "handwritten", "digit", "number",
                          *[str(d) for d in range(10)], *DIGIT_NAMES, *ATTRIBUTE_WORDS)
_PUNCT = re.compile(r"[.,;:!?\"']")


@dataclass(frozen=True)
class TokenBatch:
    """Tokenized prompts.

    Attributes:
        ids: (B, L) int64 token ids; position 0 is always ``<cls>``, then the words, then ``<pad>``.
        mask: (B, L) bool, True at real tokens (``<cls>`` and words), False at padding.
    """

    ids: Tensor
    mask: Tensor


class WordTokenizer:
    """Word-level tokenizer over :data:`VOCAB`.

    Prompts are lower-cased, stripped of punctuation and split on whitespace; unknown words map to
    ``<unk>``. Every sequence starts with ``<cls>`` (so even the empty prompt has one real token)
    and is truncated / padded to ``max_length`` tokens.
    """

    def __init__(self, max_length: int = 8):
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length: expected an int >= 2, got {max_length!r}")
        self.max_length = max_length
        self.vocab = {w: i for i, w in enumerate(VOCAB)}

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    def words(self, prompt: str) -> list[str]:
        """The (lower-cased, punctuation-free) words of ``prompt``, truncated to ``max_length - 1``."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompts: expected str items, got {type(prompt).__name__}")
        return _PUNCT.sub(" ", prompt.lower()).split()[: self.max_length - 1]

    def __call__(self, prompts: Sequence[str]) -> TokenBatch:
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts: expected a list of str, got {type(prompts).__name__}")
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.int64)
        mask = torch.zeros(len(prompts), self.max_length, dtype=torch.bool)
        unk = self.vocab[UNK]
        for i, p in enumerate(prompts):
            toks = [self.vocab[CLS]] + [self.vocab.get(w, unk) for w in self.words(p)]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = True
        return TokenBatch(ids, mask)


class _EncoderBlock(nn.Module):
    """Pre-norm transformer block with key-padding mask; (B, L, E) -> (B, L, E)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim: must be divisible by heads={heads}, got {dim}")
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.proj(o.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.ln2(x))


class TextEncoder(nn.Module):
    """Token embedding + learned positions + a small transformer encoder.

    ``forward(ids (B, L), mask (B, L)) -> (embeds (B, L, E), pooled (B, P))``: ``embeds`` are the
    final token states (zero at padded positions), ``pooled`` a linear projection of the ``<cls>``
    state. ``encode(prompts)`` tokenizes first.
    """

    def __init__(self, max_length: int = 8, embed_dim: int = 64, pooled_dim: int = 64, layers: int = 2,
                 heads: int = 4):
        super().__init__()
        self.tokenizer = WordTokenizer(max_length)
        self.embed_dim, self.pooled_dim = embed_dim, pooled_dim
        self.tok = nn.Embedding(len(VOCAB), embed_dim)
        self.pos = nn.Parameter(torch.randn(max_length, embed_dim) * 0.02)
        self.blocks = nn.ModuleList([_EncoderBlock(embed_dim, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(embed_dim)
        self.pool = nn.Linear(embed_dim, pooled_dim)

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for blk in self.blocks:
            x = blk(x, mask)
        x = self.ln(x)
        return x * mask[..., None].to(x.dtype), self.pool(x[:, 0])

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokenize and encode a list of prompts -> (embeds (B, L, E), pooled (B, P))."""
        tb = self.tokenizer(prompts)
        dev = self.pos.device
        return self(tb.ids.to(dev), tb.mask.to(dev))
