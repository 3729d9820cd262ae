"""The spectral world: exact base velocity, routes, rewards read back from decoded images, drift golds."""

import pytest
import torch

from grpo_guard.backbones import BackboneContext, build_backbone
from grpo_guard.rewards import RewardContext, build_evaluator, build_reward
from grpo_guard.world.spectral import dct_matrix, image_to_modes, make_spectral_world, modes_to_image

torch.set_num_threads(1)


def _prompts(labels):
    return [f"a handwritten {int(c)}" for c in labels]


def test_dct_is_orthonormal_and_inverts():
    c = dct_matrix(12)
    assert torch.allclose(c @ c.T, torch.eye(12, dtype=c.dtype), atol=1e-12)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    assert torch.allclose(image_to_modes(modes_to_image(x, c), c), x, atol=1e-12)


def test_world_fields_and_bad_size():
    w = make_spectral_world(16)
    assert w.dim == 256 and w.lam[0, 0] == 1.0 and float(w.lam.min()) < 0.1
    assert bool((w.means[:, w.freq > 2] == 0).all()) and float(w.means[:, w.freq <= 2].abs().sum()) > 0
    assert bool((w.freq.reshape(-1)[w.exploit_idx] >= 0.6 * 16 / 2).all())
    g = w.freq.reshape(-1)[w.genuine_idx]
    assert bool(((g >= 1) & (g <= 3)).all())
    with pytest.raises(ValueError, match="n:"):
        make_spectral_world(4)


def test_routes_are_standardised_on_data():
    w = make_spectral_world(16)
    labels = torch.arange(4000) % 10
    x = w.sample_data(labels, torch.Generator().manual_seed(0))
    for which in ("genuine", "exploit"):
        r = w.route(x, labels, which)
        assert abs(float(r.mean())) < 0.06 and abs(float(r.std()) - 1) < 0.05


def test_exact_velocity_transports_noise_to_the_data_distribution():
    """Integrating the analytic velocity from t=1 to 0 must reproduce the class means and per-mode
    variances (a wrong posterior-mean formula fails this)."""
    w = make_spectral_world(8)
    labels = torch.full((6000,), 3)
    x = torch.randn((6000, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = torch.linspace(1, 0, 401, dtype=torch.float64)
    w64 = make_spectral_world(8)
    object.__setattr__(w64, "lam", w.lam.double())
    object.__setattr__(w64, "means", w.means.double())
    for t0, t1 in zip(ts[:-1], ts[1:]):  # midpoint rule
        tt = torch.full((6000,), float(t0), dtype=torch.float64)
        v = w64.velocity(x, tt, labels)
        xm = x + (t1 - t0) / 2 * v
        v = w64.velocity(xm, tt + (t1 - t0) / 2, labels)
        x = x + (t1 - t0) * v
    mean, var = x.mean(0)[0], x.var(0)[0]
    assert torch.allclose(mean, w.means[3].double(), atol=0.05)
    assert torch.allclose(var / w.lam.double(), torch.ones(8, 8, dtype=torch.float64), atol=0.08)


def _backbone(n=8, **params):
    return build_backbone("spectral", {"n": n, **params}, BackboneContext(cache_dir="/nonexistent", device="cpu"))


def test_backbone_starts_at_the_base_and_reads_back():
    bb = _backbone()
    labels = torch.tensor([0, 1, 2, 3])
    cond = bb.encode_prompts(_prompts(labels))
    x = torch.randn(4, *bb.latent_shape)
    sig = torch.full((4,), 0.6)
    v = bb(x, sig, cond, 1.0)
    assert torch.allclose(v, bb.world.velocity(x, sig, labels), atol=1e-6)
    torch.nn.init.normal_(bb.out.weight)
    with bb.reference():
        assert torch.allclose(bb(x, sig, cond, 1.0), v)
    assert not torch.allclose(bb(x, sig, cond, 1.0), v)
    assert len(bb.trainable_parameters()) == 6
    with pytest.raises(ValueError, match="guidance_scale"):
        bb(x, sig, cond, 2.0)
    img = bb.decode(x)
    assert img.shape == (4, 1, 8, 8)
    assert torch.allclose(bb.modes_from_images(img), x, atol=1e-5)


def test_rewards_read_the_routes_from_decoded_images():
    bb = _backbone(n=16)
    w = bb.world
    ctx = RewardContext(cache_dir="/nonexistent", device="cpu", image_size=16)
    labels = torch.arange(20) % 10
    x = w.sample_data(labels, torch.Generator().manual_seed(2))
    x[:, 0].reshape(20, -1)[:, w.exploit_idx] += 0.5 * w.exploit_sign * w.lam.reshape(-1)[w.exploit_idx].sqrt()
    img, prompts = bb.decode(x), _prompts(labels)
    g, e = w.route(x, labels, "genuine"), w.route(x, labels, "exploit")
    assert torch.allclose(build_reward("spectral_attribute", {}, ctx)(img, prompts, None), g, atol=1e-4)
    assert torch.allclose(build_reward("spectral_exploit", {}, ctx)(img, prompts, None), e, atol=1e-4)
    assert torch.allclose(build_reward("spectral_proxy", {}, ctx)(img, prompts, None), g + e, atol=1e-4)
    single = build_reward("spectral_proxy", {"exploit_weight": 0.0}, ctx)
    assert torch.allclose(single(img, prompts, None), g, atol=1e-4)
    with pytest.raises(ValueError, match="unknown options"):
        build_reward("spectral_proxy", {"exploit_wieght": 0.0}, ctx)


def test_drift_gold_is_unbiased_and_sees_a_shift():
    w = make_spectral_world(16)
    ev = build_evaluator("spectral_gold", {}, RewardContext(cache_dir="/nonexistent", device="cpu", image_size=16))
    bb = _backbone(n=16)
    labels = torch.arange(2000) % 10
    x = w.sample_data(labels, torch.Generator().manual_seed(3))
    clean = ev(bb.decode(x), _prompts(labels))
    assert abs(clean["drift_lf"]) < 0.5 and abs(clean["drift_hf"]) < 0.5  # noise floor removed
    assert abs(clean["attribute"]) < 0.1
    shifted = x.clone()
    hf = (w.freq > 2).nonzero()[:5]  # five modes above f = N / 8 = 2, each moved by 1 data sd
    for i, j in hf.tolist():
        shifted[:, 0, i, j] += w.lam[i, j].sqrt()
    s = ev(bb.decode(shifted), _prompts(labels))
    assert s["drift_hf"] == pytest.approx(5.0, abs=0.6) and abs(s["drift_lf"]) < 0.5
    assert ev.average == () and ev.higher_is_better["attribute"] is True


def test_backbone_with_a_correction_equals_the_per_row_formula_values_and_gradients():
    """The forward makes its (class, time)-dependent terms once per distinct pair; it must equal the
    module docstring's per-row formula, values and gradients, for a batch of mixed classes and times."""
    bb = _backbone(n=16)
    torch.nn.init.normal_(bb.out.weight, std=0.1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 5, 0, 0])
    sig = torch.tensor([0.3] * 6 + [0.7] * 5 + [0.3])
    x = torch.randn(12, *bb.latent_shape)
    cond = bb.encode_prompts(_prompts(labels))
    v = bb(x, sig, cond, 1.0)
    (v * torch.linspace(-1, 1, v.numel()).reshape(v.shape)).sum().backward()
    grads = [p.grad.clone() for p in bb.trainable_parameters()]
    bb.zero_grad()
    onehot = torch.nn.functional.one_hot(labels, 10).float()
    per_row = bb.out(bb.mlp(torch.cat([onehot, bb._time_features(sig)], dim=1))) * bb.scale
    expected = bb.world.velocity(x, sig, labels) + per_row.reshape(12, 1, 16, 16)
    assert torch.allclose(v, expected, atol=1e-5)
    (expected * torch.linspace(-1, 1, v.numel()).reshape(v.shape)).sum().backward()
    for got, want in zip(grads, (p.grad for p in bb.trainable_parameters())):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_route_modes_read_directly_equal_the_full_transform():
    from grpo_guard.world.spectral import modes_at

    w = make_spectral_world(24, seed=3)
    c = dct_matrix(24).float()
    img = torch.randn(5, 1, 24, 24)
    full = image_to_modes(img, c).flatten(1)
    for which in ("genuine", "exploit"):
        idx, _ = w.route_indices(which)
        assert torch.allclose(modes_at(img, c, idx), full[:, idx], atol=1e-5)
        assert torch.allclose(w.route_of_modes(full[:, idx], torch.arange(5), which),
                              w.route(image_to_modes(img, c), torch.arange(5), which), atol=1e-5)
    with pytest.raises(ValueError, match="which"):
        w.route_indices("both")
