"""HPS v2 on transformers' CLIPModel, checked against OpenCLIP's own model code.

OpenCLIP (``open_clip_torch``, installed with ``--no-deps`` by the Makefile as a test reference) is
imported without running its package ``__init__`` (which pulls torchvision's transforms): only
``open_clip.model`` is loaded, with a placeholder for the one torchvision class its ``utils`` imports
(a batch-norm freezer that ViT models never use). A tiny random OpenCLIP ViT is saved as an HPS
checkpoint; the ``hpsv2`` reward must give exactly OpenCLIP's cosine of the normalised embeddings.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from helpers import tiny_clip_tokenizer

from grpo_guard.rewards import RewardContext, build_reward
from grpo_guard.rewards.clip_rewards import CLIP_MEAN, CLIP_STD, RewardUnavailable
from grpo_guard.rewards.hpsv2 import openclip_to_clip

SIDE = 32
PROMPTS = ["a red cat", "a photo of a dog", "a red cat", "an old tree on a hill at dusk"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _open_clip_model_module():
    """``open_clip.model`` without ``open_clip/__init__`` (see the module docstring)."""
    import transformers  # noqa: F401 - imported first: it probes for torchvision itself
    from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig  # noqa: F401

    spec = importlib.util.find_spec("open_clip")
    assert spec is not None, "open_clip_torch is a test dependency: make installs it (pip install --no-deps)"
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.ops", "torchvision.ops.misc")}
    tv, ops, misc = (types.ModuleType(n) for n in saved)
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (torch.nn.Module,), {})
    tv.ops, ops.misc = ops, misc
    if "open_clip" not in sys.modules:
        pkg = types.ModuleType("open_clip")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["open_clip"] = pkg
    sys.modules.update(dict(zip(saved, (tv, ops, misc))))
    try:
        return importlib.import_module("open_clip.model")
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


@pytest.fixture(scope="module")
def tiny_hps(tmp_path_factory):
    oc = _open_clip_model_module()
    tok = tiny_clip_tokenizer()
    torch.manual_seed(0)
    model = oc.CLIP(embed_dim=16,
                    vision_cfg=oc.CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=SIDE,
                                                mlp_ratio=2.0),
                    text_cfg=oc.CLIPTextCfg(context_length=77, vocab_size=len(tok), width=32, heads=2, layers=2,
                                            mlp_ratio=2.0)).eval()
    with torch.no_grad():  # OpenCLIP initialises some tensors to zero or one: make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    d = tmp_path_factory.mktemp("hps")
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, d / "hps.pt")
    tok.save_pretrained(d / "tok")
    return d, model, tok


def _params(d, **kw):
    return {"checkpoint": str(d / "hps.pt"), "tokenizer": str(d / "tok"), "vision_heads": 2, "text_heads": 2, **kw}


def _images(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.interpolate(torch.rand(b, 3, 4, 4, generator=g), size=(SIDE, SIDE), mode="bilinear",
                                           align_corners=True)


@torch.no_grad()
def _open_clip_score(model, tok, images, prompts):
    """OpenCLIP's HPS score: normalised image and text features, their dot product. Text ids as OpenCLIP's
    tokenizer lays them out: start, tokens, end, then zeros up to the context length."""
    enc = tok(prompts, padding="max_length", max_length=77, return_tensors="pt")
    ids = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, 0)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    img = model.encode_image((images - mean) / std, normalize=True)
    txt = model.encode_text(ids, normalize=True)
    return (img * txt).sum(-1)


def test_hpsv2_equals_open_clip(tiny_hps, tmp_path):
    d, model, tok = tiny_hps
    images = _images()
    want = _open_clip_score(model, tok, images, PROMPTS)
    r = build_reward("hpsv2", _params(d, batch_size=3), RewardContext(cache_dir=tmp_path, device=torch.device("cpu")))
    got = r(images, PROMPTS)
    assert got.shape == (4,) and got.dtype == torch.float32
    torch.testing.assert_close(got, want.float(), rtol=0, atol=2e-6)
    assert float(want.std()) > 1e-3  # the scores differ between samples: the check has teeth
    other = ["zebra"] * 4  # and the text matters
    assert float((r(images, other) - got).abs().max()) > 1e-3
    torch.testing.assert_close(r(images, other), _open_clip_score(model, tok, images, other).float(), rtol=0, atol=2e-6)
    # scale multiplies; grey images are the RGB-repeated ones
    r2 = build_reward("hpsv2", _params(d, scale=10.0), RewardContext(cache_dir=tmp_path, device=torch.device("cpu")))
    torch.testing.assert_close(r2(images, PROMPTS), 10 * want.float(), rtol=0, atol=2e-5)
    grey = images[:, :1]
    torch.testing.assert_close(r(grey, PROMPTS), r(grey.expand(-1, 3, -1, -1), PROMPTS))


def test_wrong_head_count_changes_the_scores(tiny_hps, tmp_path):
    """The head counts are not in the weights: a wrong one gives a different function (so the test above
    really checks the attention layout), and one that does not divide the width is refused."""
    d, model, tok = tiny_hps
    images = _images()
    want = _open_clip_score(model, tok, images, PROMPTS)
    ctx = RewardContext(cache_dir=tmp_path, device=torch.device("cpu"))
    got = build_reward("hpsv2", _params(d, vision_heads=1, text_heads=1), ctx)(images, PROMPTS)
    assert float((got - want).abs().max()) > 1e-4
    with pytest.raises(RewardUnavailable, match="vision_heads: 3 does not divide the vision width 32"):
        build_reward("hpsv2", _params(d, vision_heads=3), ctx)


def test_conversion_keys_and_errors(tiny_hps):
    d, model, tok = tiny_hps
    state = model.state_dict()
    config, weights = openclip_to_clip({f"module.{k}": v for k, v in state.items()}, vision_heads=2, text_heads=2,
                                       eos_token_id=tok.eos_token_id)
    assert config.vision_config.image_size == SIDE and config.vision_config.patch_size == 8
    assert config.text_config.num_hidden_layers == 2 and config.projection_dim == 16
    n_in = sum(v.numel() for v in state.values())
    assert sum(v.numel() for v in weights.values()) == n_in  # every weight carried over, nothing duplicated
    with pytest.raises(ValueError, match=r"unknown keys \['visual.transformer.resblocks.0.ls_1.gamma'\]"):
        openclip_to_clip({**state, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32)}, vision_heads=2,
                         text_heads=2, eos_token_id=1)
    with pytest.raises(ValueError, match="missing"):
        openclip_to_clip({k: v for k, v in state.items() if k != "visual.proj"}, vision_heads=2, text_heads=2,
                         eos_token_id=1)


def test_missing_and_unreadable_checkpoints_are_one_line(tiny_hps, tmp_path, monkeypatch):
    d, _, _ = tiny_hps
    ctx = RewardContext(cache_dir=tmp_path, device=torch.device("cpu"))
    with pytest.raises(RewardUnavailable, match="does not exist") as e:
        build_reward("hpsv2", _params(d, checkpoint=str(tmp_path / "none.pt")), ctx)
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RewardUnavailable, match="cannot build HPS from") as e:
        build_reward("hpsv2", _params(d, checkpoint=str(bad)), ctx)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RewardUnavailable, match=r"xswu/HPSv2/HPS_v2.1_compressed.pt is not available") as e:
        build_reward("hpsv2", {"tokenizer": str(d / "tok")}, ctx)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="version"):
        build_reward("hpsv2", {"version": "v3"}, ctx)


def test_bfloat16_is_close_to_float32(tiny_hps, tmp_path):
    d, _, _ = tiny_hps
    ctx = RewardContext(cache_dir=tmp_path, device=torch.device("cpu"))
    images = _images()
    full = build_reward("hpsv2", _params(d), ctx)(images, PROMPTS)
    half = build_reward("hpsv2", _params(d, dtype="bfloat16"), ctx)(images, PROMPTS)
    assert half.dtype == torch.float32 and float((half - full).abs().max()) < 0.02
