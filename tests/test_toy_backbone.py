"""ToyBackbone: CFG in one batched call, LoRA / full fine-tuning, reference(), decode, factory, caching."""

import dataclasses

import pytest
import torch

from grpo_guard.backbones.base import Backbone, Conditioning
from grpo_guard.backbones.toy import ToyBackbone, ToyBackboneConfig, build_toy_backbone
from grpo_guard.world import generator as G
from grpo_guard.world import latents as LAT
from grpo_guard.world.data import make_splits, prompt_for_label

QUICK = G.GeneratorConfig(net="mlp", resolution=8, layout="pixels", steps=150, batch_size=128)  # as test_world_generator
TINY = dict(steps=2, batch_size=8, text_dim=16, text_pooled_dim=16, mlp_width=32, mlp_depth=1, conv_channels=(8, 16),
            sd3_layers=1, sd3_heads=2, sd3_head_dim=8)


@pytest.fixture(scope="session")
def quick_state(tmp_path_factory):
    torch.set_num_threads(1)
    state, _ = G.pretrain(QUICK, tmp_path_factory.getbasetemp() / "toy_generator_cache")
    return state


def tiny_state(net="mlp", resolution=8, layout="pixels"):
    return G.pretrain(G.GeneratorConfig(net=net, resolution=resolution, layout=layout, **TINY))[0]


def _inputs(bb, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *bb.latent_shape, generator=g)
    s = torch.rand(n, generator=g) * 0.98 + 0.01
    cond = bb.encode_prompts([prompt_for_label(i % 10) for i in range(n)])
    return x, s, cond


def _randomise_lora_b(bb, scale=0.05):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in bb.net.named_parameters():
            if "lora_B" in name:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def test_is_a_backbone_with_latent_shape(quick_state):
    bb = ToyBackbone(quick_state, lora_rank=4)
    assert isinstance(bb, Backbone) and bb.latent_shape == (1, 8, 8)


def test_encode_prompts_includes_the_empty_prompt_as_null(quick_state):
    bb = ToyBackbone(quick_state, lora_rank=4)
    c = bb.encode_prompts(["a handwritten 1", "a handwritten 2", "a handwritten 1"])
    assert isinstance(c, Conditioning) and len(c) == 3
    assert c.embeds.shape == (3, QUICK.text_max_length, QUICK.text_dim) and c.pooled.shape == (3, QUICK.text_pooled_dim)
    e0, p0 = quick_state.text_encoder.encode([""])
    assert torch.equal(c.null_embeds, e0.expand(3, -1, -1)) and torch.equal(c.null_pooled, p0.expand(3, -1))
    assert torch.equal(c.pooled[0], c.pooled[2]) and not torch.equal(c.pooled[0], c.pooled[1])
    assert not c.embeds.requires_grad and not c.pooled.requires_grad
    with pytest.raises(ValueError, match="prompts"):
        bb.encode_prompts("a handwritten 1")


@pytest.mark.parametrize("w", [0.0, 2.0, 4.5])
def test_cfg_combine_formula_in_one_batched_call(quick_state, w):
    bb = ToyBackbone(quick_state, lora_rank=4)
    _randomise_lora_b(bb)
    x, s, cond = _inputs(bb)
    calls = []
    hook = bb.net.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    with torch.no_grad():
        v = bb(x, s, cond, w)
    hook.remove()
    assert calls == [2 * len(x)]  # ONE call with cond and uncond rows
    with torch.no_grad():
        v_c = bb.net(x, s, cond.embeds, cond.pooled)
        v_u = bb.net(x, s, cond.null_embeds, cond.null_pooled)
    torch.testing.assert_close(v, v_u + w * (v_c - v_u), rtol=1e-5, atol=1e-5)


def test_guidance_one_is_the_conditional_prediction_in_one_unbatched_call(quick_state):
    bb = ToyBackbone(quick_state, lora_rank=4)
    x, s, cond = _inputs(bb)
    calls = []
    hook = bb.net.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    with torch.no_grad():
        v = bb(x, s, cond, 1.0)
        ref = bb.net(x, s, cond.embeds, cond.pooled)
    hook.remove()
    assert calls == [len(x), len(x)]
    assert torch.equal(v, ref)
    with pytest.raises(ValueError, match="cond"):
        bb(x, s, Conditioning(cond.embeds, cond.pooled), 2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        bb(x, s, cond, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        bb(x, s[:2], cond, 2.0)


def test_lora_starts_as_a_no_op_and_only_lora_params_train(quick_state):
    bb = ToyBackbone(quick_state, lora_rank=8, lora_alpha=16)
    base = ToyBackbone(quick_state, lora_rank=None)
    x, s, cond = _inputs(bb)
    lora_b = [p for n, p in bb.net.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() == 0 for p in lora_b)
    with torch.no_grad():
        assert torch.equal(bb(x, s, cond, 3.0), base(x, s, cond, 3.0))
    names = {id(p): n for n, p in bb.named_parameters()}
    trainable = bb.trainable_parameters()
    assert trainable and all("lora_" in names[id(p)] for p in trainable)
    n_lora = sum(p.numel() for p in trainable)
    assert n_lora < 0.1 * sum(p.numel() for p in bb.net.parameters())
    assert all(not p.requires_grad for p in bb.text_encoder.parameters()) and not bb.text_encoder.training
    assert set(bb.trainable_state_dict()) == {names[id(p)] for p in trainable}
    # gradients reach only the adapters
    bb(x, s, cond, 3.0).square().mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for n, p in bb.named_parameters() if "lora_" not in n)


def test_lora_reference_is_the_base_prediction(quick_state):
    bb = ToyBackbone(quick_state, lora_rank=4)
    base = ToyBackbone(quick_state, lora_rank=None)
    _randomise_lora_b(bb)
    x, s, cond = _inputs(bb)
    with torch.no_grad():
        v_pol = bb(x, s, cond, 3.0)
        v_base = base(x, s, cond, 3.0)
        with bb.reference():
            v_ref = bb(x, s, cond, 3.0)
        v_after = bb(x, s, cond, 3.0)
    assert (v_pol - v_base).abs().max() > 1e-3
    torch.testing.assert_close(v_ref, v_base, rtol=1e-5, atol=1e-6)
    assert torch.equal(v_after, v_pol)
    assert all(p.requires_grad == ("lora_" in n) for n, p in bb.net.named_parameters())


def test_full_finetuning_trains_the_net_and_reference_is_a_frozen_copy(quick_state):
    bb = ToyBackbone(quick_state, lora_rank=None)
    x, s, cond = _inputs(bb)
    train_ids = {id(p) for p in bb.trainable_parameters()}
    assert train_ids == {id(p) for p in bb.net.parameters()}
    with torch.no_grad():
        v0 = bb(x, s, cond, 2.0)
        for p in bb.net.parameters():
            p.add_(0.01)
        v1 = bb(x, s, cond, 2.0)
        with bb.reference():
            v_ref = bb(x, s, cond, 2.0)
    assert (v1 - v0).abs().max() > 1e-3
    assert torch.equal(v_ref, v0)
    bb.train()
    assert bb.net.training and not bb.reference_net.training and not bb.text_encoder.training


def test_trainable_state_dict_round_trip(quick_state):
    a = ToyBackbone(quick_state, lora_rank=4)
    _randomise_lora_b(a)
    b = ToyBackbone(quick_state, lora_rank=4)
    x, s, cond = _inputs(a)
    b.load_trainable_state_dict(a.trainable_state_dict())
    with torch.no_grad():
        assert torch.equal(a(x, s, cond, 3.0), b(x, s, cond, 3.0))


def test_decode_inverts_space_to_depth():
    bb = ToyBackbone(tiny_state("mlp", 16, "latent16"), lora_rank=2)
    assert bb.latent_shape == (16, 4, 4)
    img = make_splits(16).base.images[:5]  # [-1, 1]
    out = bb.decode(LAT.space_to_depth(img))
    assert out.shape == (5, 1, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, (img + 1) / 2)
    assert bb.decode(torch.full((2, 16, 4, 4), 5.0)).max() == 1.0  # clamped to [0, 1]
    pix = ToyBackbone(tiny_state("mlp", 8, "pixels"), lora_rank=2)
    torch.testing.assert_close(pix.decode(img[:, :, ::2, ::2]), (img[:, :, ::2, ::2] + 1) / 2)
    with pytest.raises(ValueError, match="latents"):
        bb.decode(img)


@pytest.mark.parametrize("net,res,layout", [("conv", 16, "pixels"), ("sd3", 16, "latent16")])
def test_lora_on_conv_and_sd3_nets(net, res, layout):
    state = tiny_state(net, res, layout)
    bb = ToyBackbone(state, lora_rank=4)
    base = ToyBackbone(state, lora_rank=None)
    x, s, cond = _inputs(bb, n=3)
    with torch.no_grad():
        torch.testing.assert_close(bb(x, s, cond, 2.0), base(x, s, cond, 2.0), rtol=0, atol=0)
    if net == "sd3":  # attached through diffusers' PeftAdapterMixin
        assert bb.net.transformer._hf_peft_config_loaded
    _randomise_lora_b(bb, scale=0.2)
    with torch.no_grad():
        assert (bb(x, s, cond, 2.0) - base(x, s, cond, 2.0)).abs().max() > 1e-4
        with bb.reference():
            torch.testing.assert_close(bb(x, s, cond, 2.0), base(x, s, cond, 2.0), rtol=1e-5, atol=1e-6)
    assert all("lora_" in n for n, p in bb.named_parameters() if p.requires_grad)


def test_bad_lora_arguments(quick_state):
    with pytest.raises(ValueError, match="lora_rank"):
        ToyBackbone(quick_state, lora_rank=0)
    with pytest.raises(ValueError, match="lora_alpha"):
        ToyBackbone(quick_state, lora_rank=2, lora_alpha=0)
    with pytest.raises(ValueError, match="lora_targets"):
        ToyBackbone(quick_state, lora_rank=2, lora_targets=["nothing_here"])
    with pytest.raises(ValueError, match="state"):
        ToyBackbone(object())


def test_build_toy_backbone_caches_and_reloads_identically(tmp_path):
    cfg = ToyBackboneConfig(net="mlp", resolution=8, lora_rank=4, cache_dir=str(tmp_path), pretrain_steps=2,
                            generator=tuple((k, v) for k, v in TINY.items() if k != "steps"))
    a = build_toy_backbone(cfg)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    b = build_toy_backbone(cfg)
    x, s, cond = _inputs(a)
    with torch.no_grad():
        assert torch.equal(a(x, s, cond, 3.0), b(x, s, cond, 3.0))
    full = build_toy_backbone(dataclasses.replace(cfg, lora_rank=None))
    assert full.reference_net is not None
    with pytest.raises(ValueError, match="config"):
        build_toy_backbone({"net": "mlp"})


def test_conditioning_index_by_positions_mask_and_slice():
    """``Conditioning.index`` gathers the same rows of every field as plain indexing, for integer positions
    (repeated and unsorted, as the training forward's entries are), a boolean mask and a slice."""
    from grpo_guard.backbones.base import Conditioning

    g = torch.Generator().manual_seed(0)
    c = Conditioning(torch.randn(6, 3, 4, generator=g), torch.randn(6, 5, generator=g), None,
                     torch.randn(6, 5, generator=g))
    for idx in (torch.tensor([4, 0, 4, 2, 5, 1]), torch.tensor([3, 1], dtype=torch.int32),
                torch.tensor([True, False, True, False, False, True]), slice(1, 4)):
        got = c.index(idx)
        key = idx.long() if isinstance(idx, torch.Tensor) and idx.dtype == torch.int32 else idx
        assert torch.equal(got.embeds, c.embeds[key]) and torch.equal(got.pooled, c.pooled[key])
        assert got.null_embeds is None and torch.equal(got.null_pooled, c.null_pooled[key])
    with pytest.raises(IndexError):
        c.index(torch.tensor([0, 6]))


class _OwnTrain(torch.nn.Module):
    """A module whose own ``train`` does more than set flags (as some library modules do)."""

    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
        self.calls = []

    def train(self, mode=True):
        self.calls.append(mode)
        return super().train(mode)


def _tree():
    return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Dropout(0.1), _OwnTrain()),
                               torch.nn.ModuleDict({"a": torch.nn.BatchNorm1d(2), "b": None}))


@pytest.mark.parametrize("mode", [True, False])
def test_set_training_mode_sets_the_flags_nn_module_train_sets(mode):
    from grpo_guard.backbones.base import set_training_mode

    ours, torchs = _tree(), _tree()
    for t in (ours, torchs):
        t.train(not mode)
    set_training_mode(ours, mode)
    torchs.train(mode)
    assert [m.training for m in ours.modules()] == [m.training for m in torchs.modules()]
    assert all(m.training is mode for m in ours.modules())
    # a module that overrides train() is switched through it, as nn.Module.train does
    own = [m for m in ours.modules() if isinstance(m, _OwnTrain)][0]
    assert own.calls == [not mode, mode]


def test_backbone_train_and_eval_switch_only_the_trained_net(quick_state):
    bb = ToyBackbone(quick_state, lora_rank=4)
    assert bb.train() is bb and bb.training
    assert all(m.training for m in bb.net.modules())
    assert not any(m.training for m in bb.text_encoder.modules())
    bb.eval()
    assert not bb.training and not any(m.training for m in bb.modules())
    with pytest.raises(ValueError, match="mode"):
        bb.train("yes")


def test_set_training_mode_reaches_a_compiled_module():
    """``torch.compile``'s wrapper keeps ``training`` as a property of the module it wraps: the walk sets it
    through the property (no compilation happens: the module is never called)."""
    from grpo_guard.backbones.base import set_training_mode

    inner = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
    wrapped = torch.nn.Sequential(torch.compile(inner))
    set_training_mode(wrapped, False)
    assert not inner.training and not any(m.training for m in inner.modules())
    set_training_mode(wrapped, True)
    assert all(m.training for m in inner.modules())
