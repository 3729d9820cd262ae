import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from grpo_guard import flow_sigmas, sde_step
from grpo_guard.core import gaussian_log_prob, sde_coefficients, sde_sigma_t, sde_velocity_gain

SIGMAS = flow_sigmas(10, 3.0)  # SD3.5-like schedule; index 0 is the t = 1 step


def _inputs(gen, shape=(4, 3, 5, 5), dtype=torch.float32):
    v = torch.randn(shape, generator=gen).to(dtype)
    x = torch.randn(shape, generator=gen).to(dtype)
    return v, x


@pytest.mark.parametrize("k", [0, 1, 4, 8, 9])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_matches_torch_normal(gen, k, reduction):
    v, x = _inputs(gen)
    out = sde_step(v, x, SIGMAS[k], SIGMAS[k + 1], 0.7, generator=gen, reduction=reduction)
    normal = torch.distributions.Normal(out.mean, out.std.view(-1, 1, 1, 1))
    dens = normal.log_prob(out.next_state).flatten(1)
    expected = dens.mean(1) if reduction == "mean" else dens.sum(1)
    torch.testing.assert_close(out.log_prob, expected, rtol=1e-5, atol=1e-5)


def test_flow_grpo_sigma_convention(gen):
    v, x = _inputs(gen)
    a = 0.7
    for k in range(10):
        t, tn = SIGMAS[k], SIGMAS[k + 1]
        out = sde_step(v, x, t, tn, a, generator=gen)
        denom = tn if k == 0 else t  # the t = 1 step uses the next sigma in the denominator
        expected_sigma_t = a * math.sqrt(float(t) / (1 - float(denom)))
        torch.testing.assert_close(out.sigma_t, torch.full((4,), expected_sigma_t), rtol=1e-6, atol=0)
        # sigma_t excludes sqrt(|dt|); the step std includes it
        torch.testing.assert_close(out.std, out.sigma_t * math.sqrt(float(t - tn)), rtol=1e-6, atol=0)
        assert torch.isfinite(out.log_prob).all()


def test_mean_formula(gen):
    v, x = _inputs(gen)
    t, tn = SIGMAS[3], SIGMAS[4]
    out = sde_step(v, x, t, tn, 0.7, generator=gen)
    st, dt = out.sigma_t[0], tn - t
    # Flow-GRPO's published arrangement of the same mean
    expected = x * (1 + st**2 / (2 * t) * dt) + v * (1 + st**2 * (1 - t) / (2 * t)) * dt
    torch.testing.assert_close(out.mean, expected, rtol=1e-5, atol=1e-6)


def test_dance_grpo_form_matches_score_form(gen):
    """DanceGRPO: constant sigma_t = eta, noise std eta*sqrt(|dt|), mean via the score of x0_hat."""
    v, x = _inputs(gen)
    eta, t, tn = 0.3, SIGMAS[2], SIGMAS[3]
    out = sde_step(v, x, t, tn, eta, generator=gen, sde_type="dance_grpo")
    x0_hat = x - t * v
    score = -(x - x0_hat * (1 - t)) / t**2
    expected_mean = x + (tn - t) * v + (-0.5 * eta**2 * score) * (tn - t)
    torch.testing.assert_close(out.mean, expected_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.std, torch.full((4,), eta * math.sqrt(float(t - tn))), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.sigma_t, torch.full((4,), eta))


def test_velocity_gain():
    t = torch.tensor([1.0, 0.5, 0.1])
    st = sde_sigma_t(t, torch.tensor([0.9, 0.4, 0.0]), 0.7)
    beta = sde_velocity_gain(t, st)
    torch.testing.assert_close(beta, torch.tensor([1.0, 1.245, 1.245]))


@pytest.mark.parametrize("k", [0, 3, 9])
def test_zero_noise_is_euler_and_diffusers_step(gen, k):
    v, x = _inputs(gen)
    t, tn = SIGMAS[k], SIGMAS[k + 1]
    out = sde_step(v, x, t, tn, 0.0)
    assert out.log_prob is None
    torch.testing.assert_close(out.next_state, x + v * (tn - t), rtol=0, atol=0)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    sched._step_index = k
    ref = sched.step(v, sched.timesteps[k], x).prev_sample
    torch.testing.assert_close(out.next_state, ref, rtol=0, atol=1e-6)


def test_on_policy_reevaluation_is_bitwise_equal(gen):
    v, x = _inputs(gen)
    for k in range(10):
        roll = sde_step(v, x, SIGMAS[k], SIGMAS[k + 1], 0.7, generator=gen)
        again = sde_step(v, x, SIGMAS[k], SIGMAS[k + 1], 0.7, next_state=roll.next_state)
        assert torch.equal(roll.log_prob, again.log_prob)
        assert torch.equal(roll.mean, again.mean)


def test_without_log_prob_the_step_is_the_same(gen):
    """``with_log_prob=False`` skips only the log-prob: the same sample, mean and std (the rollout scores
    its transitions later, all steps in one ``gaussian_log_prob`` call)."""
    v, x = _inputs(gen)
    eps = torch.randn(x.shape, generator=gen)
    full = sde_step(v, x, SIGMAS[3], SIGMAS[4], 0.7, noise=eps)
    bare = sde_step(v, x, SIGMAS[3], SIGMAS[4], 0.7, noise=eps, with_log_prob=False)
    assert bare.log_prob is None
    for a, b in zip(full, bare):
        assert b is None or torch.equal(a, b)
    assert torch.equal(gaussian_log_prob(bare.next_state, bare.mean, bare.std), full.log_prob)


@pytest.mark.parametrize("sde_type", ["flow_grpo", "dance_grpo"])
def test_schedule_coefficients_equal_per_sample_ones(gen, sde_type):
    """Coefficients computed for a whole schedule at once (one noise level per step, some 0) are bit for
    bit those of per-sample calls, and ``sde_step`` given them (0-d or per sample) returns what it
    computes without them."""
    levels = torch.tensor([0.7, 0.7, 0.0, 0.7, 0.0, 0.7, 0.7, 0.7, 0.7, 0.0])
    table = sde_coefficients(SIGMAS[:-1], SIGMAS[1:], levels, sde_type)
    v, x = _inputs(gen)
    for k in range(10):
        a = float(levels[k])
        per = sde_coefficients(SIGMAS[k].expand(4), SIGMAS[k + 1].expand(4), a, sde_type)
        for got, want in zip(table, per):
            assert torch.equal(got[k].expand(4), want)
        if a == 0:  # the Euler step exactly
            assert torch.equal(table.c_x[k], torch.tensor(1.0)) and torch.equal(table.c_v[k], SIGMAS[k + 1] - SIGMAS[k])
        eps = torch.randn(x.shape, generator=gen)
        plain = sde_step(v, x, SIGMAS[k], SIGMAS[k + 1], a, noise=eps, sde_type=sde_type)
        for coef in (type(table)(*(c[k] for c in table)), per):
            given = sde_step(v, x, SIGMAS[k], SIGMAS[k + 1], a, noise=eps, sde_type=sde_type, coefficients=coef)
            for got, want in zip(given, plain):
                assert (got is None and want is None) or torch.equal(got, want)


def test_per_sample_sigmas_equal_separate_calls(gen):
    v, x = _inputs(gen)
    ks = torch.tensor([0, 2, 5, 8])
    batched = sde_step(v, x, SIGMAS[ks], SIGMAS[ks + 1], 0.7, noise=torch.ones_like(x))
    for i, k in enumerate(ks.tolist()):
        single = sde_step(v[i:i + 1], x[i:i + 1], SIGMAS[k], SIGMAS[k + 1], 0.7, noise=torch.ones_like(x[i:i + 1]))
        torch.testing.assert_close(batched.log_prob[i:i + 1], single.log_prob)
        torch.testing.assert_close(batched.next_state[i:i + 1], single.next_state)


def test_log_prob_is_float32_for_low_precision_inputs(gen):
    v, x = _inputs(gen, dtype=torch.bfloat16)
    out = sde_step(v, x, SIGMAS[2], SIGMAS[3], 0.7, generator=gen)
    assert out.log_prob.dtype == torch.float32
    assert out.mean.dtype == torch.float32 and out.next_state.dtype == torch.float32
    v64, x64 = _inputs(gen, dtype=torch.float64)
    assert sde_step(v64, x64, SIGMAS[2], SIGMAS[3], 0.7, generator=gen).log_prob.dtype == torch.float64


def test_sampled_noise_is_standard_normal_and_seeded():
    shape = (8, 4096)
    v, x = torch.zeros(shape), torch.zeros(shape)
    a = sde_step(v, x, SIGMAS[4], SIGMAS[5], 0.7, generator=torch.Generator().manual_seed(1))
    b = sde_step(v, x, SIGMAS[4], SIGMAS[5], 0.7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.next_state, b.next_state)
    z = (a.next_state - a.mean) / a.std.view(-1, 1)
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02


def test_gradient_flows_to_velocity_not_next_state(gen):
    v, x = _inputs(gen)
    v.requires_grad_(True)
    roll = sde_step(v.detach(), x, SIGMAS[3], SIGMAS[4], 0.7, generator=gen)
    nxt = roll.next_state.clone().requires_grad_(True)
    out = sde_step(v, x, SIGMAS[3], SIGMAS[4], 0.7, next_state=nxt)
    out.log_prob.sum().backward()
    assert v.grad is not None and float(v.grad.abs().sum()) > 0
    assert nxt.grad is None  # the next state is data


def test_gaussian_log_prob_sum_is_dims_times_mean(gen):
    x, m = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    s = torch.tensor([0.1, 0.5, 2.0])
    torch.testing.assert_close(gaussian_log_prob(x, m, s, "sum"), 7 * gaussian_log_prob(x, m, s, "mean"))


# ---- bad input: a ValueError that names the argument -------------------------------------------

def test_bad_inputs(gen):
    v, x = _inputs(gen)
    with pytest.raises(ValueError, match="velocity"):
        sde_step(v[:, :2], x, 0.5, 0.4)
    with pytest.raises(ValueError, match="next_state"):
        sde_step(v, x, 0.5, 0.4, next_state=x[:2])
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step(v, x, 0.5, 0.5)
    with pytest.raises(ValueError, match="sigma_next"):
        sde_step(v, x, 0.4, 0.5)
    with pytest.raises(ValueError, match="sigma"):
        sde_step(v, x, 1.5, 0.5)
    with pytest.raises(ValueError, match="sigma"):
        sde_step(v, x, torch.tensor([0.5, 0.5]), 0.4)
    bad = v.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="velocity"):
        sde_step(bad, x, 0.5, 0.4)
    with pytest.raises(ValueError, match="state"):
        sde_step(v, bad, 0.5, 0.4)
    with pytest.raises(ValueError, match="noise_level"):
        sde_step(v, x, 0.5, 0.4, -0.1)
    with pytest.raises(ValueError, match="reduction"):
        sde_step(v, x, 0.5, 0.4, reduction="median")
    with pytest.raises(ValueError, match="sde_type"):
        sde_step(v, x, 0.5, 0.4, sde_type="cps")
    with pytest.raises(ValueError, match="next_state"):
        sde_step(v, x, 0.5, 0.4, 0.0, next_state=x)
