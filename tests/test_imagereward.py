"""ImageReward on transformers' BLIP modules, checked against an independent implementation of BLIP.

The ``image-reward`` package cannot run here (timm, fairscale, torchvision and an old transformers
API), so the reference is BLIP's forward written out below from its architecture (ViT with a fused
qkv projection and eps-1e-6 LayerNorms; BERT layers of self-attention, cross-attention to the image
tokens and a feed-forward block, each followed by a residual LayerNorm; the linear MLP head on the
[CLS] state). A tiny random checkpoint in ImageReward's key layout must score identically through
the ``imagereward`` reward.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grpo_guard.rewards import RewardContext, build_reward
from grpo_guard.rewards.clip_rewards import CLIP_MEAN, CLIP_STD, RewardUnavailable
from grpo_guard.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD, imagereward_to_blip

SIDE, PATCH, VW, TW, VH, TH = 32, 8, 32, 24, 2, 2  # image side, patch, widths and heads of the tiny BLIP
PROMPTS = ["a red cat", "a dog on a sofa", "a red cat", "an old tree on a hill"]
WORDS = ["a", "red", "cat", "dog", "on", "sofa", "an", "old", "tree", "hill"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bert_tokenizer(path, words=WORDS):
    """A word-level BERT tokenizer over ``words``, saved to ``path``."""
    from transformers import BertTokenizer

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
    tok.save_pretrained(path)
    return tok


def _checkpoint(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under ImageReward.pt's names (LayerNorm gains near 1, everything else small)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    ln = lambda n: (1 + r(n, s=0.1), r(n, s=0.1))  # noqa: E731
    sd: dict[str, torch.Tensor] = {}
    v = "blip.visual_encoder."
    grid = SIDE // PATCH
    sd |= {v + "cls_token": r(1, 1, VW), v + "pos_embed": r(1, grid * grid + 1, VW),
           v + "patch_embed.proj.weight": r(VW, 3, PATCH, PATCH, s=0.05), v + "patch_embed.proj.bias": r(VW)}
    for i in range(2):
        b = f"{v}blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = ln(VW)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = ln(VW)
        sd |= {b + "attn.qkv.weight": r(3 * VW, VW), b + "attn.qkv.bias": r(3 * VW), b + "attn.proj.weight": r(VW, VW),
               b + "attn.proj.bias": r(VW), b + "mlp.fc1.weight": r(2 * VW, VW), b + "mlp.fc1.bias": r(2 * VW),
               b + "mlp.fc2.weight": r(VW, 2 * VW), b + "mlp.fc2.bias": r(VW)}
    sd[v + "norm.weight"], sd[v + "norm.bias"] = ln(VW)
    t = "blip.text_encoder."
    sd |= {t + "embeddings.word_embeddings.weight": r(vocab, TW), t + "embeddings.position_embeddings.weight": r(40, TW),
           t + "embeddings.position_ids": torch.arange(40).unsqueeze(0)}
    sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"] = ln(TW)
    for i in range(2):
        b = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", TW), ("crossattention", VW)):
            sd |= {f"{b}{att}.self.query.weight": r(TW, TW), f"{b}{att}.self.query.bias": r(TW),
                   f"{b}{att}.self.key.weight": r(TW, kv_in), f"{b}{att}.self.key.bias": r(TW),
                   f"{b}{att}.self.value.weight": r(TW, kv_in), f"{b}{att}.self.value.bias": r(TW),
                   f"{b}{att}.output.dense.weight": r(TW, TW), f"{b}{att}.output.dense.bias": r(TW)}
            sd[f"{b}{att}.output.LayerNorm.weight"], sd[f"{b}{att}.output.LayerNorm.bias"] = ln(TW)
        sd |= {b + "intermediate.dense.weight": r(2 * TW, TW), b + "intermediate.dense.bias": r(2 * TW),
               b + "output.dense.weight": r(TW, 2 * TW), b + "output.dense.bias": r(TW)}
        sd[b + "output.LayerNorm.weight"], sd[b + "output.LayerNorm.bias"] = ln(TW)
    sd |= {"blip.vision_proj.weight": r(8, VW), "blip.vision_proj.bias": r(8), "blip.text_proj.weight": r(8, TW),
           "blip.text_proj.bias": r(8)}
    dims = [TW, 16, 8, 8, 4, 1]
    for (i, o), pos in zip(zip(dims[:-1], dims[1:]), (0, 2, 4, 6, 7)):
        sd |= {f"mlp.layers.{pos}.weight": r(o, i, s=0.5), f"mlp.layers.{pos}.bias": r(o)}
    return sd


def _attend(q_in, kv_in, w, prefix, heads, key_mask=None):
    """Multi-head attention with separate q/k/v projections (BERT's), returning the context (B, Lq, D)."""
    q = F.linear(q_in, w[prefix + "query.weight"], w[prefix + "query.bias"])
    k = F.linear(kv_in, w[prefix + "key.weight"], w[prefix + "key.bias"])
    v = F.linear(kv_in, w[prefix + "value.weight"], w[prefix + "value.bias"])
    split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], -1)


@torch.no_grad()
def _blip_reference(sd, pixels, ids, mask, vision_heads=VH, text_heads=TH):
    """ImageReward's score from its own weight names, written out from BLIP's architecture."""
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + sd[v + "pos_embed"]
    for i in range(2):
        b = f"{v}blocks.{i}."
        h = F.layer_norm(x, (VW,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        qkv = qkv.view(x.shape[0], x.shape[1], 3, vision_heads, -1).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-1, -2) * (VW // vision_heads) ** -0.5).softmax(-1)
        o = (att @ qkv[2]).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(o, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = F.layer_norm(x, (VW,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
                         sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    image = F.layer_norm(x, (VW,), sd[v + "norm.weight"], sd[v + "norm.bias"], eps=1e-6)

    t = "blip.text_encoder."
    ln = lambda y, name: F.layer_norm(y, (TW,), sd[name + ".weight"], sd[name + ".bias"], eps=1e-12)  # noqa: E731
    e = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][:ids.shape[1]]
    y = ln(e, t + "embeddings.LayerNorm")
    for i in range(2):
        b = f"{t}encoder.layer.{i}."
        for att, kv, key_mask in (("attention", None, mask), ("crossattention", image, None)):
            ctx = _attend(y, y if kv is None else kv, sd, f"{b}{att}.self.", text_heads, key_mask)
            y = ln(F.linear(ctx, sd[f"{b}{att}.output.dense.weight"], sd[f"{b}{att}.output.dense.bias"]) + y,
                   f"{b}{att}.output.LayerNorm")
        ff = F.gelu(F.linear(y, sd[b + "intermediate.dense.weight"], sd[b + "intermediate.dense.bias"]))
        y = ln(F.linear(ff, sd[b + "output.dense.weight"], sd[b + "output.dense.bias"]) + y, b + "output.LayerNorm")
    h = y[:, 0]
    for pos in (0, 2, 4, 6, 7):  # the head is linear: dropouts only between the layers
        h = F.linear(h, sd[f"mlp.layers.{pos}.weight"], sd[f"mlp.layers.{pos}.bias"])
    return ((h - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).squeeze(-1)


@pytest.fixture(scope="module")
def tiny_ir(tmp_path_factory):
    from grpo_guard.rewards.imagereward import blip_tokenizer

    d = tmp_path_factory.mktemp("imagereward")
    tok = blip_tokenizer(_bert_tokenizer(d / "tok"))
    assert len(tok) == 5 + len(WORDS) + 2 and tok.unk_token_id not in tok("a red cat on a sofa")["input_ids"]
    sd = _checkpoint(len(tok))
    torch.save(sd, d / "ImageReward.pt")
    return d, sd, tok


def _images(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(b, 3, 4, 4, generator=g), size=(SIDE, SIDE), mode="bilinear", align_corners=True)


def _params(d, **kw):
    return {"checkpoint": str(d / "ImageReward.pt"), "tokenizer": str(d / "tok"), "vision_heads": VH,
            "text_heads": TH, **kw}


def _ctx(tmp_path):
    return RewardContext(cache_dir=tmp_path, device=torch.device("cpu"))


def _reference_scores(sd, tok, images, prompts, **kw):
    enc = tok(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return _blip_reference(sd, (images - mean) / std, enc["input_ids"], enc["attention_mask"], **kw)


def test_imagereward_equals_the_blip_reference(tiny_ir, tmp_path):
    d, sd, tok = tiny_ir
    images = _images()
    want = _reference_scores(sd, tok, images, PROMPTS)
    r = build_reward("imagereward", _params(d, batch_size=3), _ctx(tmp_path))
    got = r(images, PROMPTS)
    assert got.shape == (4,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert float(want.std()) > 1e-2  # the scores differ between samples
    # the prompt matters (cross-attention is wired in both directions of the comparison)
    other = r(images, ["an old dog"] * 4)
    assert float((other - got).abs().max()) > 1e-3
    torch.testing.assert_close(other, _reference_scores(sd, tok, images, ["an old dog"] * 4), rtol=0, atol=1e-5)
    r2 = build_reward("imagereward", _params(d, scale=2.0), _ctx(tmp_path))
    torch.testing.assert_close(r2(images, PROMPTS), 2 * want, rtol=0, atol=2e-5)


def test_head_counts_matter_and_are_checked(tiny_ir, tmp_path):
    d, sd, tok = tiny_ir
    images = _images()
    want = _reference_scores(sd, tok, images, PROMPTS)
    got = build_reward("imagereward", _params(d, vision_heads=1, text_heads=1), _ctx(tmp_path))(images, PROMPTS)
    assert float((got - want).abs().max()) > 1e-4
    torch.testing.assert_close(got, _reference_scores(sd, tok, images, PROMPTS, vision_heads=1, text_heads=1),
                               rtol=0, atol=1e-5)
    with pytest.raises(RewardUnavailable, match="text_heads: 5 does not divide the text width 24"):
        build_reward("imagereward", _params(d, text_heads=5), _ctx(tmp_path))


def test_conversion_keys_and_errors(tiny_ir, tmp_path):
    d, sd, tok = tiny_ir
    vision_config, vision, text_config, text, mlp = imagereward_to_blip(sd, vision_heads=VH, text_heads=TH)
    assert vision_config.image_size == SIDE and vision_config.patch_size == PATCH and vision_config.num_hidden_layers == 2
    assert text_config.encoder_hidden_size == VW and text_config.vocab_size == len(tok)
    unused = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")
    n_used = sum(v.numel() for k, v in sd.items() if not k.startswith(unused))
    assert sum(v.numel() for part in (vision, text, mlp) for v in part.values()) == n_used
    with pytest.raises(ValueError, match=r"unknown keys \['blip.itm_head.weight'\]"):
        imagereward_to_blip({**sd, "blip.itm_head.weight": torch.zeros(2, TW)})
    with pytest.raises(ValueError, match="missing"):
        imagereward_to_blip({k: v for k, v in sd.items() if not k.startswith("mlp.layers.7")})
    # a tokenizer without BLIP's vocabulary size is refused in one line
    _bert_tokenizer(tmp_path / "tok2", words=["a"])
    with pytest.raises(RewardUnavailable, match="not the tokenizer it was trained with") as e:
        build_reward("imagereward", _params(d, tokenizer=str(tmp_path / "tok2")), _ctx(tmp_path))
    assert "\n" not in str(e.value)


def test_missing_files_are_one_line(tiny_ir, tmp_path, monkeypatch):
    d, _, _ = tiny_ir
    with pytest.raises(RewardUnavailable, match="does not exist") as e:
        build_reward("imagereward", _params(d, checkpoint=str(tmp_path / "none.pt")), _ctx(tmp_path))
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(RewardUnavailable, match="cannot build ImageReward from") as e:
        build_reward("imagereward", _params(d, checkpoint=str(bad)), _ctx(tmp_path))
    assert "\n" not in str(e.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardUnavailable, match="THUDM/ImageReward/ImageReward.pt is not available") as e:
        build_reward("imagereward", {"tokenizer": str(d / "tok")}, _ctx(tmp_path))
    assert "\n" not in str(e.value)


def test_bfloat16_is_close_to_float32(tiny_ir, tmp_path):
    d, _, _ = tiny_ir
    images = _images()
    full = build_reward("imagereward", _params(d), _ctx(tmp_path))(images, PROMPTS)
    half = build_reward("imagereward", _params(d, dtype="bfloat16"), _ctx(tmp_path))(images, PROMPTS)
    assert half.dtype == torch.float32 and float((half - full).abs().max()) < 0.1 * float(full.abs().max()) + 0.05
