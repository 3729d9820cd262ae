import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from grpo_guard import flow_sigmas, flux_mu
from grpo_guard.core import sigmas_to_timesteps


@pytest.mark.parametrize("num_steps", [1, 4, 10, 28, 40])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_static_shift_matches_diffusers(num_steps, shift):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(num_steps)
    ours = flow_sigmas(num_steps, shift)
    assert ours.dtype == torch.float32 and ours.shape == (num_steps + 1,)
    torch.testing.assert_close(ours, sched.sigmas, rtol=0, atol=1e-7)
    torch.testing.assert_close(sigmas_to_timesteps(ours), sched.timesteps, rtol=0, atol=1e-4)


@pytest.mark.parametrize("num_steps", [4, 16, 28])
@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096])
def test_dynamic_shift_matches_diffusers_flux(num_steps, seq_len):
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    mu = flux_mu(seq_len)
    base = [1.0 - i * (1.0 - 1.0 / num_steps) / (num_steps - 1) for i in range(num_steps)]  # FluxPipeline's grid
    sched.set_timesteps(sigmas=base, mu=mu)
    torch.testing.assert_close(flow_sigmas(num_steps, mu=mu), sched.sigmas, rtol=0, atol=1e-6)


def test_flux_mu_endpoints():
    assert flux_mu(256) == pytest.approx(0.5)
    assert flux_mu(4096) == pytest.approx(1.15)


def test_schedule_is_decreasing_from_one_to_zero():
    s = flow_sigmas(10, 3.0)
    assert s[0] == 1 and s[-1] == 0
    assert bool((s[1:] < s[:-1]).all())


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_num_steps(bad):
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(bad)


def test_bad_shift():
    with pytest.raises(ValueError, match="shift"):
        flow_sigmas(10, shift=0.0)
