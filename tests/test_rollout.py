"""The rollout validates its schedule and noise once and the model's velocities through the final state
(one check per rollout instead of the SDE step's full input checks), and stores the trained transitions."""

import pytest
import torch

from grpo_guard.backbones import Conditioning
from grpo_guard.core import flow_sigmas, sde_step
from grpo_guard.train.rollout import rollout
from grpo_guard.train.schedule import StepSchedule

COND = Conditioning(embeds=torch.zeros(4, 1, 2))


def _run(velocity_fn, sigmas=None, noise=None, sde_type="flow_grpo", sde_steps=range(5), trained=(1, 3),
         reduction="mean"):
    sigmas = flow_sigmas(5, 3.0) if sigmas is None else sigmas
    noise = torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(0)) if noise is None else noise
    schedule = StepSchedule(sigmas, list(trained), list(sde_steps), 0.7, sde_type)
    return rollout(velocity_fn, COND, noise, schedule, batch_size=3, reduction=reduction)


@pytest.mark.parametrize("sde_type", ["flow_grpo", "dance_grpo"])
@pytest.mark.parametrize("sde_steps", [range(5), [1, 2, 3]])
@pytest.mark.parametrize(("latent", "trained", "reduction"), [((3,), (1, 3), "mean"), ((16, 4, 4), (3, 1, 2), "sum"),
                                                               ((1, 8, 8), (2, 3, 1), "mean")])
def test_trained_transitions_match_sde_step(sde_type, sde_steps, latent, trained, reduction):
    """The rollout computes the schedule's step coefficients once and all log-probs in one call after the
    loop; its trajectory is bit for bit the one of per-step ``sde_step`` calls (ODE steps outside
    ``sde_steps`` included), stored in the order ``trained_steps`` lists them."""
    v = lambda x, s, c: -x * s.view(-1, *[1] * (x.ndim - 1))  # noqa: E731
    noise = torch.randn(4, 6, *latent, generator=torch.Generator().manual_seed(1))
    sig = flow_sigmas(5, 3.0)
    traj = _run(v, sig, noise, sde_type, sde_steps, trained, reduction)
    assert traj.step_indices.tolist() == list(trained)
    x = noise[:, 0]
    for k in range(5):
        a = 0.7 if k in sde_steps else 0.0
        out = sde_step(v(x, sig[k].expand(4), None), x, sig[k], sig[k + 1], a, noise=noise[:, k + 1],
                       sde_type=sde_type, reduction=reduction)
        if k in trained:
            j = trained.index(k)
            assert torch.equal(traj.latents[:, j], x) and torch.equal(traj.log_probs[:, j], out.log_prob)
            assert torch.equal(traj.means[:, j], out.mean) and torch.equal(traj.next_latents[:, j], out.next_state)
        x = out.next_state
    assert torch.equal(traj.final, x)


def test_a_step_trained_twice_is_rejected():
    with pytest.raises(ValueError, match="trained_steps: contains a step twice"):
        _run(lambda x, s, c: -x, trained=(1, 1))


def test_nan_velocity_is_named():
    calls = {"n": 0}

    def v(x, s, c):
        calls["n"] += 1
        return x * (float("nan") if calls["n"] == 3 else 1.0)

    with pytest.raises(ValueError, match=r"velocity: contains NaN or Inf \(first seen in the state after schedule "
                                         r"step 1\)"):  # call 3 = step 1 (2 calls a step)
        _run(v)


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("at_call", [1, 5, 10])
def test_non_finite_velocity_at_any_step_is_caught(bad, at_call):
    """A non-finite velocity at the first or the last step (deterministic or stochastic) reaches the
    final state, where the rollout checks it."""
    calls = {"n": 0}

    def v(x, s, c):
        calls["n"] += 1
        out = x.clone()
        if calls["n"] == at_call:
            out[0, 0] = bad
        return out

    for sde_steps in (range(5), [1, 3]):
        calls["n"] = 0
        with pytest.raises(ValueError, match="velocity: contains NaN or Inf"):
            _run(v, sde_steps=sde_steps)


@pytest.mark.parametrize("sigmas", [torch.tensor([1.0, 0.5, 0.6, 0.2, 0.1, 0.0]),
                                    torch.tensor([1.2, 0.8, 0.6, 0.4, 0.2, 0.0]),
                                    torch.tensor([1.0, 0.8, float("nan"), 0.4, 0.2, 0.0])])
def test_bad_schedule_rejected_once(sigmas):
    with pytest.raises(ValueError, match="sigmas"):
        _run(lambda x, s, c: x, sigmas)


@pytest.mark.parametrize("latent", [(1, 8, 8), (3, 7, 7)])  # 64 values (a multiple of 16) and 147 (not)
def test_initial_only_noise_equals_the_full_draw_where_it_is_used(latent):
    from grpo_guard.seeding import derive_generator
    from grpo_guard.train.rollout import per_sample_noise

    full = per_sample_noise(3, "eval", 0, [0, 5, 9], 6, latent)
    # each row is the same draw as a plain torch.randn from the sample's own generator
    assert torch.equal(full[1], torch.randn((6, *latent), generator=derive_generator(3, "eval", 0, 5)))
    first = per_sample_noise(3, "eval", 0, [0, 5, 9], 6, latent, initial_only=True)
    assert first.shape == full.shape
    assert torch.equal(first[:, 0], full[:, 0])


def test_unused_step_noise_is_not_checked_but_used_noise_is():
    """An ODE rollout reads only the initial noise: a NaN elsewhere in the tensor is not its concern."""
    sigmas = torch.linspace(1, 0, 5)
    ode = StepSchedule(sigmas, [], [], 0.7, "flow_grpo")
    cond = Conditioning(torch.zeros(2, 1, 3))
    velocity = lambda x, s, c: -x  # noqa: E731
    noise = torch.randn(2, 5, 1, 2, 2)
    noise[:, 3] = float("nan")
    assert torch.isfinite(rollout(velocity, cond, noise, ode).final).all()
    noise[:, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="noise"):
        rollout(velocity, cond, noise, ode)
