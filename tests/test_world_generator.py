"""The toy generator: tokenizer, text encoder, velocity nets, latent layouts, pretraining, caching."""

import dataclasses

import pytest
import torch

from grpo_guard.core.schedule import flow_sigmas
from grpo_guard.world import data as world_data
from grpo_guard.world import generator as G
from grpo_guard.world import latents as LAT
from grpo_guard.world import text_encoder as TXT
from grpo_guard.world.data import make_splits, prompt_for_label

# the short pretrain used by the quality test (and, through the same cache, by test_toy_backbone.py)
QUICK = G.GeneratorConfig(net="mlp", resolution=8, layout="pixels", steps=150, batch_size=128)


@pytest.fixture(scope="session")
def quick_state(tmp_path_factory):
    torch.set_num_threads(1)
    state, _ = G.pretrain(QUICK, tmp_path_factory.getbasetemp() / "toy_generator_cache")
    return state


# -------------------------------------------------------------------------------- tokenizer
def test_tokenizer_ids_mask_padding_and_unknown_words():
    tok = TXT.WordTokenizer(max_length=6)
    tb = tok(["a handwritten 7", "A Handwritten SEVEN!", "", "a purple 7", "a a a a a a a a"])
    v = {w: i for i, w in enumerate(TXT.VOCAB)}
    assert tb.ids.shape == tb.mask.shape == (5, 6) and tb.ids.dtype == torch.int64 and tb.mask.dtype == torch.bool
    assert tb.ids[0].tolist() == [v["<cls>"], v["a"], v["handwritten"], v["7"], v["<pad>"], v["<pad>"]]
    assert tb.mask[0].tolist() == [True, True, True, True, False, False]
    assert tb.ids[1, 3] == v["seven"]  # lower-cased, punctuation stripped
    assert tb.ids[2].tolist() == [v["<cls>"]] + [v["<pad>"]] * 5 and tb.mask[2].sum() == 1  # empty prompt
    assert tb.ids[3, 2] == v["<unk>"]
    assert tb.mask[4].all()  # truncated to max_length
    for w in ["thick", "thin", "bold", "small", "large", "zero", "nine", "0", "9"]:
        assert w in v


def test_tokenizer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_length"):
        TXT.WordTokenizer(1)
    with pytest.raises(ValueError, match="prompts"):
        TXT.WordTokenizer()("a handwritten 1")


# ----------------------------------------------------------------------------- text encoder
def test_text_encoder_shapes_and_that_equal_prompts_match_and_different_differ():
    torch.manual_seed(0)
    enc = TXT.TextEncoder(max_length=8, embed_dim=32, pooled_dim=24).eval()
    prompts = ["a handwritten 3", "a handwritten 3", "a handwritten 8", "", "a handwritten three"]
    with torch.no_grad():
        e, p = enc.encode(prompts)
        e1, p1 = enc.encode(prompts[2:3])  # batch composition does not matter
    assert e.shape == (5, 8, 32) and p.shape == (5, 24)
    assert torch.equal(e[0], e[1]) and torch.equal(p[0], p[1])
    for i, j in [(0, 2), (0, 3), (0, 4), (2, 3)]:
        assert (p[i] - p[j]).abs().max() > 1e-3
        assert (e[i] - e[j]).abs().max() > 1e-3
    torch.testing.assert_close(e1[0], e[2], rtol=1e-5, atol=1e-6)
    assert e[0, 4:].abs().max() == 0  # padded positions are zero
    assert torch.isfinite(e[3]).all()  # the empty prompt attends to <cls> only: no NaN


# ------------------------------------------------------------------------------ latent layouts
def test_space_to_depth_is_an_invertible_permutation():
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    z = LAT.images_to_latents(x, "latent16")
    assert z.shape == (3, 16, 8, 8) == (3, *LAT.latent_shape_for(32, "latent16"))
    assert torch.equal(LAT.latents_to_images(z, "latent16"), x)
    assert torch.equal(torch.sort(z.flatten(1)).values, torch.sort(x.flatten(1)).values)
    # channel i*4+j of latent position (y, x) is pixel (4y+i, 4x+j)
    assert z[1, 2 * 4 + 3, 5, 6] == x[1, 0, 4 * 5 + 2, 4 * 6 + 3]
    assert torch.equal(LAT.images_to_latents(x, "pixels"), x)
    assert LAT.latent_shape_for(8, "pixels") == (1, 8, 8)
    with pytest.raises(ValueError, match="layout"):
        LAT.latent_shape_for(32, "latent4")
    with pytest.raises(ValueError, match="resolution"):
        LAT.latent_shape_for(12, "pixels")


# ------------------------------------------------------------------------------ velocity nets
@pytest.mark.parametrize("net,res,layout", [("mlp", 8, "pixels"), ("conv", 16, "pixels"), ("conv", 32, "latent16"),
                                            ("sd3", 16, "latent16"), ("sd3", 8, "pixels")])
def test_velocity_nets_share_one_signature(net, res, layout):
    cfg = G.GeneratorConfig(net=net, resolution=res, layout=layout, text_dim=32, text_pooled_dim=16, sd3_layers=1,
                            sd3_heads=2, sd3_head_dim=8, mlp_width=32, mlp_depth=1, conv_channels=(8, 16))
    text, model = G.build_networks(cfg)
    e, p = text.encode(["a handwritten 1", ""])
    x = torch.randn(2, *cfg.latent_shape)
    v = model(x, torch.tensor([0.9, 0.1]), e, p)
    assert v.shape == x.shape and torch.isfinite(v).all()
    v.square().mean().backward()
    assert all(q.grad is not None for q in model.parameters() if q.requires_grad)


def test_build_networks_is_seeded_and_does_not_touch_the_global_rng():
    cfg = G.GeneratorConfig(net="mlp", mlp_width=32, mlp_depth=1)
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a = G.build_networks(cfg)[1].state_dict()
    after = torch.rand(1)
    b = G.build_networks(cfg)[1].state_dict()
    assert before == after
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = G.build_networks(dataclasses.replace(cfg, seed=1))[1].state_dict()
    assert not torch.equal(a["inp.weight"], c["inp.weight"])


def test_generator_config_validation():
    with pytest.raises(ValueError, match="net"):
        G.GeneratorConfig(net="unet")
    with pytest.raises(ValueError, match="layout"):
        G.GeneratorConfig(layout="rgb")
    with pytest.raises(ValueError, match="steps"):
        G.GeneratorConfig(steps=0)
    with pytest.raises(ValueError, match="prompt_dropout"):
        G.GeneratorConfig(prompt_dropout=1.0)
    with pytest.raises(ValueError, match="config"):
        G.pretrain({"net": "mlp"})


# ------------------------------------------------------------------------------ pretraining
TINY = G.GeneratorConfig(net="mlp", resolution=8, steps=4, batch_size=16, mlp_width=32, mlp_depth=1, text_dim=16,
                         text_pooled_dim=16)


def _outputs(state, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *state.latent_shape, generator=g)
    s = torch.rand(n, generator=g)
    with torch.no_grad():
        e, p = state.text_encoder.encode([prompt_for_label(i % 10) for i in range(n)])
        return state.net(x, s, e, p)


def test_pretrain_is_deterministic_and_seeded():
    a, ra = G.pretrain(TINY)
    b, _ = G.pretrain(TINY)
    c, _ = G.pretrain(dataclasses.replace(TINY, seed=1))
    assert torch.equal(_outputs(a), _outputs(b))
    assert not torch.allclose(_outputs(a), _outputs(c))
    assert ra.steps == 4 and len(ra.losses) == 1 and not ra.from_cache and ra.net_params > 0
    assert not a.net.training and not a.text_encoder.training


def test_pretrain_cache_round_trip_is_exact_and_keyed_by_config(tmp_path):
    a, ra = G.pretrain(TINY, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    assert G.generator_config_hash(TINY) in files[0]
    b, rb = G.pretrain(TINY, tmp_path)
    assert rb.from_cache and rb.config_hash == ra.config_hash and rb.losses == ra.losses
    assert torch.equal(_outputs(a), _outputs(b))
    G.pretrain(dataclasses.replace(TINY, lr=5e-4), tmp_path)
    assert len(list(tmp_path.iterdir())) == 4  # another config -> another entry
    assert G.generator_config_hash(TINY) != G.generator_config_hash(dataclasses.replace(TINY, lr=5e-4))
    # explicit save/load
    G.save_state(tmp_path / "x", a)
    assert torch.equal(_outputs(G.load_state(tmp_path / "x")), _outputs(a))


def test_pretrain_uses_only_the_base_split(monkeypatch):
    real = world_data.make_splits

    def poisoned(resolution=32, seed=0, **kw):
        sp = real(resolution, seed, **kw)
        nan = lambda ds: dataclasses.replace(ds, images=torch.full_like(ds.images, float("nan")))  # noqa: E731
        return dataclasses.replace(sp, proxy=nan(sp.proxy), gold=nan(sp.gold), heldout=nan(sp.heldout))

    monkeypatch.setattr(G, "make_splits", poisoned)
    state, report = G.pretrain(dataclasses.replace(TINY, steps=3))
    assert all(torch.isfinite(p).all() for p in state.net.parameters())
    assert report.final_loss == report.final_loss  # not NaN


def test_short_pretrain_samples_the_prompted_digit(quick_state):
    """150 steps of the mlp at 8x8, 10-step shift-3 ODE with CFG 3: a logistic regression trained on the
    gold split recognises the prompted digit. Measured: 0.99 at 200 samples (chance 0.1)."""
    from sklearn.linear_model import LogisticRegression

    sp = make_splits(8, seed=QUICK.split_seed)
    clf = LogisticRegression(max_iter=2000).fit(sp.gold.images.flatten(1).numpy(), sp.gold.labels.numpy())
    labels = torch.arange(100) % 10
    with torch.no_grad():
        e, p = quick_state.text_encoder.encode([prompt_for_label(int(i)) for i in labels])
        ne, np_ = quick_state.text_encoder.encode([""] * len(labels))

        def velocity(x, s, w=3.0):
            vc = quick_state.net(x, s, e, p)
            vu = quick_state.net(x, s, ne, np_)
            return vu + w * (vc - vu)

        noise = torch.randn(100, *quick_state.latent_shape, generator=torch.Generator().manual_seed(7))
        x = G.euler_sample(velocity, noise, flow_sigmas(10, 3.0))
    acc = float((torch.from_numpy(clf.predict(x.clamp(-1, 1).flatten(1).numpy())) == labels).float().mean())
    assert acc > 0.6, acc


# --------------------------------------------------------------------------- route survival probe
def test_route_survival_on_analytic_velocities():
    sig = flow_sigmas(10, 3.0)
    noise = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pattern = 0.1 * G.checkerboard(8)
    assert G.checkerboard(8).abs().eq(1).all() and G.checkerboard(8).sum() == 0
    # v = 0: nothing moves, every perturbation survives whole
    keep = G.route_survival(lambda x, s: torch.zeros_like(x), noise, sig, pattern, range(9))
    assert keep == pytest.approx([1.0] * 9, abs=1e-6)
    # v = x / sigma is the exact velocity for data concentrated at 0: Euler scales x by sigma_next / sigma,
    # so anything injected before the last step is removed
    kill = G.route_survival(lambda x, s: x / s.view(-1, 1, 1, 1), noise, sig, pattern, range(9))
    assert kill == pytest.approx([0.0] * 9, abs=1e-5)


def test_euler_sample_matches_the_ode_step():
    sig = flow_sigmas(3, 1.0)
    x0 = torch.randn(2, 1, 8, 8)
    out = G.euler_sample(lambda x, s: torch.ones_like(x), x0, sig)
    torch.testing.assert_close(out, x0 - 1.0)  # v = 1 integrated from t = 1 to 0
    d = torch.full((1, 1, 8, 8), 0.5)
    torch.testing.assert_close(G.euler_sample(lambda x, s: torch.ones_like(x), x0, sig, (1, d)), x0 - 0.5)
