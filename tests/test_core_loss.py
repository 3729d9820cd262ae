import math

import pytest
import torch

from grpo_guard import flow_sigmas, policy_loss, sde_step
from grpo_guard.core import RATIO_MODES, gaussian_log_prob, sde_velocity_gain

from helpers import off_policy_batch

SIGMAS = flow_sigmas(10, 3.0)


def _loss(b, adv, **kw):
    return policy_loss(b.log_prob, b.old_log_prob, adv, mean=b.mean, old_mean=b.old_mean, std=b.std, **kw)


# ---- on-policy: ratio == 1 and every variant reduces to Flow-GRPO ------------------------------

def test_on_policy_ratio_is_one_and_variants_equal_flow_grpo(gen):
    v = torch.randn(8, 2, 4, 4, generator=gen)
    x = torch.randn(8, 2, 4, 4, generator=gen)
    ks = torch.arange(8) % 9
    t, tn = SIGMAS[ks], SIGMAS[ks + 1]
    roll = sde_step(v, x, t, tn, 0.7, generator=gen)
    adv = torch.randn(8, generator=gen)
    results = {}
    for mode in RATIO_MODES:
        v_theta = v.clone().requires_grad_(True)
        cur = sde_step(v_theta, x, t, tn, 0.7, next_state=roll.next_state)
        loss, stats = policy_loss(cur.log_prob, roll.log_prob, adv, mean=cur.mean, old_mean=roll.mean,
                                  std=cur.std, ratio_mode=mode, clip_range=1e-4)
        assert torch.equal(stats["log_ratio_used"], torch.zeros(8))
        assert float(stats["ratio_min"]) == 1.0 == float(stats["ratio_max"])
        assert float(stats["clip_frac"]) == 0.0
        loss.backward()
        results[mode] = (loss.detach(), v_theta.grad)
    for mode in RATIO_MODES:
        torch.testing.assert_close(results[mode][0], -adv.mean(), rtol=0, atol=0)
    # on-policy, the bias gradient vanishes: mean_revised has exactly Flow-GRPO's gradient,
    # RatioNorm the same gradient scaled by each sample's step std
    torch.testing.assert_close(results["mean_revised"][1], results["plain"][1])
    torch.testing.assert_close(results["ratio_norm"][1], results["plain"][1] * roll.std.view(-1, 1, 1, 1))


# ---- RatioNorm -------------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ratio_norm_identity(reduction):
    b = off_policy_batch(n=16, d=64, drift=0.3, reduction=reduction)
    _, stats = _loss(b, torch.ones(16), ratio_mode="ratio_norm", reduction=reduction)
    prod = (b.delta * b.eps)
    expected = -(prod.mean(1) if reduction == "mean" else prod.sum(1))
    torch.testing.assert_close(stats["log_ratio_used"], expected, rtol=1e-9, atol=1e-12)
    # and mean_revised removes the bias without the s factor
    _, stats_mr = _loss(b, torch.ones(16), ratio_mode="mean_revised", reduction=reduction)
    torch.testing.assert_close(stats_mr["log_ratio_used"], expected / b.std, rtol=1e-9, atol=1e-12)


def test_raw_log_ratio_decomposition():
    """log r = -||dmu||^2/(2 s^2) - (dmu . eps)/s with mean over dims (method.md 4.1)."""
    b = off_policy_batch(n=16, d=64, drift=0.3)
    _, stats = _loss(b, torch.ones(16))
    s = b.std
    expected = -(b.delta**2).mean(1) / (2 * s**2) - (b.delta * b.eps).mean(1) / s
    torch.testing.assert_close(stats["log_ratio"], expected, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(stats["bias"], (b.delta**2).mean(1) / (2 * s**2))
    assert bool((stats["bias"] > 0).all())


def test_bias_term_carries_gradient():
    """Through policy_loss: d loss / d mean = -A r_hat eps / (N D) exactly (mean over N entries and D dims).

    With the bias detached the gradient would pick up an extra ``-Delta mu / s`` term."""
    b = off_policy_batch(n=4, d=16, drift=0.5)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.0], dtype=torch.float64)
    loss, stats = _loss(b, adv, ratio_mode="ratio_norm", clip_range=math.inf)
    (g,) = torch.autograd.grad(loss, b.mean)
    r_hat = stats["log_ratio_used"].exp()
    torch.testing.assert_close(g, (-adv * r_hat)[:, None] * b.eps / (16 * 4))


def test_gradcheck_through_whole_loss():
    b = off_policy_batch(n=5, d=6, drift=0.2)
    ref_mean = b.old_mean + 0.01
    adv = torch.tensor([1.5, -0.7, 0.3, -2.0, 0.9], dtype=torch.float64)
    dt = torch.tensor([-0.05, -0.1, -0.2, -0.07, -0.3], dtype=torch.float64)
    sigma = torch.tensor([0.9, 0.7, 0.5, 0.3, 0.2], dtype=torch.float64)
    sigma_t = torch.tensor([0.8, 0.9, 0.7, 0.6, 0.5], dtype=torch.float64)
    x_next, old_mean, std = b.x_next, b.old_mean, b.std
    old_lp = b.old_log_prob

    for mode, weight in [("plain", "none"), ("mean_revised", "temp"), ("ratio_norm", "inv_dt"),
                         ("ratio_norm", "inv_beta_dt")]:
        def f(mean):
            lp = gaussian_log_prob(x_next, mean, std)
            loss, _ = policy_loss(lp, old_lp, adv, mean=mean, old_mean=old_mean, std=std, dt=dt, sigma=sigma,
                                  sigma_t=sigma_t, ref_mean=ref_mean, ratio_mode=mode, step_weight=weight,
                                  clip_range=10.0, kl_coef=0.1)
            return loss
        assert torch.autograd.gradcheck(f, (b.mean.detach().clone().requires_grad_(True),))


# ---- clipping semantics ------------------------------------------------------------------------

def _ratio_batch(ratios, adv):
    log_r = torch.log(torch.tensor(ratios, dtype=torch.float64)).requires_grad_(True)
    return log_r, torch.zeros_like(log_r.detach()), torch.tensor(adv, dtype=torch.float64)


def test_ppo_clip_semantics_and_asymmetric_range():
    # entries: (r, A): pos adv above 1+eps_high (clipped, no grad), pos adv inside (grad),
    # neg adv below 1-eps_low (clipped, no grad), neg adv above (grad: max picks the unclipped)
    log_r, old, adv = _ratio_batch([1.4, 1.2, 0.85, 1.4], [1.0, 1.0, -1.0, -1.0])
    loss, stats = policy_loss(log_r, old, adv, clip_range=(0.1, 0.3))
    (g,) = torch.autograd.grad(loss, log_r)
    assert g[0] == 0 and g[2] == 0
    assert g[1] != 0 and g[3] != 0
    expected = (-1.3 - 1.2 + 0.9 + 1.4) / 4  # clipped values where the clip binds
    assert float(loss.detach()) == pytest.approx(expected)
    assert float(stats["clip_frac_high"]) == 0.5 and float(stats["clip_frac_low"]) == 0.25


def test_infinite_clip_range_means_no_clipping():
    log_r, old, adv = _ratio_batch([3.0, 0.2], [1.0, -1.0])
    loss, _ = policy_loss(log_r, old, adv, clip_range=math.inf)
    assert float(loss.detach()) == pytest.approx((-3.0 + 0.2) / 2)


# ---- left shift in miniature (method.md 4.1) -----------------------------------------------------

def test_left_shift_monte_carlo_and_balanced_ratio_norm():
    """A fixed mean perturbation with u = rms(dmu)/s = 0.1 at D = 4096 (bias/spread = sqrt(D) u / 2 = 3.2)."""
    from grpo_guard.core import per_step_ratio_stats

    n, d, u = 4000, 4096, 0.1
    g = torch.Generator().manual_seed(3)
    std = torch.full((n,), 0.05)
    delta = u * std[0] * torch.randn(d, generator=g)  # the same policy change for every sample
    old_mean = torch.zeros(n, d)
    mean = old_mean - delta
    x_next = old_mean + std[:, None] * torch.randn(n, d, generator=g)
    lp, old_lp = gaussian_log_prob(x_next, mean, std), gaussian_log_prob(x_next, old_mean, std)
    adv = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)

    expected_shift = -float((delta**2).mean()) / (2 * 0.05**2)  # E[log r] = -||dmu||^2 / (2 s^2)
    log_r = lp - old_lp
    assert expected_shift < 0
    assert float(log_r.mean()) == pytest.approx(expected_shift, rel=0.05)
    assert float((log_r < 0).double().mean()) > 0.99

    eps = 1e-4
    _, plain = policy_loss(lp, old_lp, adv, mean=mean, old_mean=old_mean, std=std, clip_range=eps)
    st_plain = per_step_ratio_stats(torch.zeros(n, dtype=torch.long), plain["log_ratio"], adv, 1, eps,
                                    bias=plain["bias"])
    assert float(st_plain["clip_high_pos"][0]) < 0.01  # positive-advantage samples are never clipped
    assert float(st_plain["clip_low_neg"][0]) > 0.99
    assert float(st_plain["bias_over_spread"][0]) == pytest.approx(math.sqrt(d) * u / 2, rel=0.1)
    assert float(st_plain["drift_u"][0]) == pytest.approx(u, rel=0.05)

    _, guard = policy_loss(lp, old_lp, adv, mean=mean, old_mean=old_mean, std=std, ratio_mode="ratio_norm",
                           clip_range=1e-6)
    st_guard = per_step_ratio_stats(torch.zeros(n, dtype=torch.long), guard["log_ratio"], adv, 1, 1e-6,
                                    log_ratio_used=guard["log_ratio_used"])
    hi, lo = float(st_guard["clip_high_pos"][0]), float(st_guard["clip_low_neg"][0])
    assert 0.15 < hi < 0.85 and 0.15 < lo < 0.85
    assert abs(hi - lo) < 0.05
    assert abs(float(st_guard["ratio_mean"][0]) - 1) < 1e-6


# ---- gradient balance across steps (method.md 4.3) -------------------------------------------------

def _per_step_grad_norms(ratio_mode, step_weight, num_steps=10, trained=9, d=4096, b=16, seed=0):
    """Gradient norm of each trained step's on-policy loss w.r.t. a velocity offset theta."""
    from grpo_guard.core import per_step_grad_norms

    sigmas = flow_sigmas(num_steps, 3.0)
    g = torch.Generator().manual_seed(seed)
    theta = torch.zeros(d, requires_grad=True)
    adv = torch.where(torch.arange(b) % 2 == 0, 1.0, -1.0)
    losses = []
    for k in range(trained):
        x = torch.randn(b, d, generator=g)
        v0 = torch.randn(b, d, generator=g)
        roll = sde_step(v0, x, sigmas[k], sigmas[k + 1], 0.7, generator=g)
        cur = sde_step(v0 + theta, x, sigmas[k], sigmas[k + 1], 0.7, next_state=roll.next_state)
        dt = (sigmas[k + 1] - sigmas[k]).expand(b)
        loss, _ = policy_loss(cur.log_prob, roll.log_prob, adv, mean=cur.mean, old_mean=roll.mean, std=cur.std,
                              dt=dt, ratio_mode=ratio_mode, step_weight=step_weight, clip_range=1e-4)
        losses.append(loss)
    return per_step_grad_norms(losses, [theta])


def test_gradient_balance_on_sd35_schedule():
    from grpo_guard.core import spread

    plain = _per_step_grad_norms("plain", "none")
    rnorm = _per_step_grad_norms("ratio_norm", "none")
    guard = _per_step_grad_norms("ratio_norm", "inv_dt")
    assert float(spread(plain)) > 15  # ~26x analytically (beta |dt| / s)
    assert bool((plain[1:] > plain[:-1]).all())  # grows towards the low-noise steps
    assert 4 < float(spread(rnorm)) < 15  # ~8x: RatioNorm alone leaves the |dt| factor
    assert float(spread(guard)) < 2  # ~1.25x (beta = 1 at the t = 1 step, 1 + a^2/2 elsewhere)


# ---- traps of other implementations (method.md section 6) -----------------------------------------

def test_trap1_guard_ratio_is_really_used():
    b = off_policy_batch(n=8, d=32, drift=1.0)
    adv = torch.linspace(-1, 1, 8, dtype=torch.float64)
    loss_p, _ = _loss(b, adv, ratio_mode="plain", clip_range=math.inf)
    loss_g, stats = _loss(b, adv, ratio_mode="ratio_norm", clip_range=math.inf)
    r_hat = torch.exp(-(b.delta * b.eps).mean(1))
    torch.testing.assert_close(loss_g.detach(), (-adv * r_hat).mean())
    assert not torch.allclose(loss_g.detach(), loss_p.detach())
    torch.testing.assert_close(stats["ratio_mean"], r_hat.mean())


def test_trap2_kl_carries_gradient():
    b = off_policy_batch(n=4, d=8, drift=0.1)
    ref_mean = b.old_mean + 0.3
    sigma_t = torch.full((4,), 0.7, dtype=torch.float64)
    loss, stats = _loss(b, torch.zeros(4, dtype=torch.float64), sigma_t=sigma_t, ref_mean=ref_mean, kl_coef=0.04)
    (g,) = torch.autograd.grad(loss, b.mean)
    expected = 0.04 * (b.mean - ref_mean).detach() / (sigma_t[:, None] ** 2 * 8) / 4
    torch.testing.assert_close(g, expected)
    assert float(stats["kl"]) > 0


def test_trap3_sigma_convention_in_kl_uses_sigma_t_not_step_std():
    b = off_policy_batch(n=2, d=4, drift=0.1)
    ref_mean = b.old_mean + 0.2
    sigma_t = torch.tensor([0.5, 0.8], dtype=torch.float64)
    _, stats = _loss(b, torch.zeros(2, dtype=torch.float64), sigma_t=sigma_t, ref_mean=ref_mean, kl_coef=1.0)
    expected = (((b.mean - ref_mean) ** 2).mean(1) / (2 * sigma_t**2)).mean()
    torch.testing.assert_close(stats["kl"], expected.detach())


def test_trap4_bias_is_per_sample_and_compat_switch_is_batched():
    b = off_policy_batch(n=4, d=16, drift=0.3)
    adv = torch.ones(4, dtype=torch.float64)
    sigma_t = torch.full((4,), 0.7, dtype=torch.float64)
    dt = -(b.std / 0.7) ** 2
    _, base = _loss(b, adv, ratio_mode="ratio_norm")
    # move only sample 3's policy mean: per sample, the other samples' ratios do not change
    mean2 = b.mean.detach().clone()
    mean2[3] += 0.5
    lp2 = gaussian_log_prob(b.x_next, mean2, b.std)
    _, moved = policy_loss(lp2, b.old_log_prob, adv, mean=mean2, old_mean=b.old_mean, std=b.std,
                           ratio_mode="ratio_norm")
    torch.testing.assert_close(moved["log_ratio_used"][:3], base["log_ratio_used"][:3])
    # the official script's batch-averaged bias couples the samples
    kw = dict(ratio_mode="ratio_norm", official_compat=True, sigma_t=sigma_t, dt=dt)
    _, c1 = _loss(b, adv, **kw)
    _, c2 = policy_loss(lp2, b.old_log_prob, adv, mean=mean2, old_mean=b.old_mean, std=b.std, **kw)
    assert not torch.allclose(c2["log_ratio_used"][:3], c1["log_ratio_used"][:3])
    s_bar = sigma_t.mean() * dt.abs().sqrt().mean()
    expected = s_bar * ((b.log_prob - b.old_log_prob) + (b.delta**2).mean() / (2 * s_bar**2))
    torch.testing.assert_close(c1["log_ratio_used"], expected.detach())


def test_trap5_inv_dt_weight_applied():
    b = off_policy_batch(n=6, d=8, drift=0.2)
    adv = torch.linspace(-1, 1, 6, dtype=torch.float64)
    dt = -torch.linspace(0.02, 0.3, 6, dtype=torch.float64)
    _, s_none = _loss(b, adv, ratio_mode="ratio_norm", clip_range=math.inf)
    loss_w, _ = _loss(b, adv, ratio_mode="ratio_norm", step_weight="inv_dt", dt=dt, clip_range=math.inf)
    per_entry = -adv * torch.exp(s_none["log_ratio_used"])
    torch.testing.assert_close(loss_w.detach(), (per_entry / dt.abs()).mean())
    # inv_beta_dt divides further by the velocity gain beta(t)
    sigma = torch.full((6,), 0.5, dtype=torch.float64)
    sigma_t = torch.full((6,), 0.3, dtype=torch.float64)
    loss_b, _ = _loss(b, adv, ratio_mode="ratio_norm", step_weight="inv_beta_dt", dt=dt, sigma=sigma,
                      sigma_t=sigma_t, clip_range=math.inf)
    beta = sde_velocity_gain(sigma, sigma_t)
    torch.testing.assert_close(loss_b.detach(), (per_entry / (dt.abs() * beta)).mean())
    loss_t, _ = _loss(b, adv, ratio_mode="ratio_norm", step_weight="temp", clip_range=math.inf)
    torch.testing.assert_close(loss_t.detach(), (per_entry * b.std).mean())


# ---- bad input ------------------------------------------------------------------------------------

def test_bad_inputs():
    b = off_policy_batch(n=4, d=8)
    adv = torch.ones(4, dtype=torch.float64)
    cases = [
        ("advantages", dict(advantages=torch.ones(3))),
        ("old_log_prob", dict(old_log_prob=torch.zeros(5))),
        ("old_mean", dict(old_mean=b.old_mean[:, :4])),
        ("clip_range", dict(clip_range=0.0)),
        ("clip_range", dict(clip_range=-1e-4)),
        ("clip_range", dict(clip_range=(1e-4, 0.0))),
        ("clip_range", dict(clip_range=(1e-4, 1e-4, 1e-4))),
        ("ratio_mode", dict(ratio_mode="rationorm")),
        ("step_weight", dict(step_weight="inv_sigma")),
        ("reduction", dict(reduction="max")),
        ("kl_coef", dict(kl_coef=-0.1)),
        ("ref_mean", dict(kl_coef=0.1)),
        ("dt", dict(step_weight="inv_dt")),
        ("dt", dict(step_weight="inv_dt", dt=torch.full((4,), 0.1, dtype=torch.float64))),
        ("std", dict(std=-b.std)),
        ("advantages", dict(advantages=torch.tensor([1.0, float("nan"), 0.0, 0.0]))),
    ]
    for name, override in cases:
        kw = dict(log_prob=b.log_prob, old_log_prob=b.old_log_prob, advantages=adv, mean=b.mean,
                  old_mean=b.old_mean, std=b.std)
        kw.update(override)
        with pytest.raises(ValueError, match=name):
            policy_loss(kw.pop("log_prob"), kw.pop("old_log_prob"), kw.pop("advantages"), **kw)
    with pytest.raises(ValueError, match="mean"):
        policy_loss(b.log_prob, b.old_log_prob, adv, ratio_mode="ratio_norm")
    with pytest.raises(ValueError, match="log_prob"):
        policy_loss(b.log_prob[:, None], b.old_log_prob, adv)
    bad_lp = b.log_prob.detach().clone()
    bad_lp[0] = float("inf")
    with pytest.raises(ValueError, match="log_prob"):
        policy_loss(bad_lp, b.old_log_prob, adv)
