"""Flow-matching sigma schedules (SD3 static shift and Flux dynamic shift).

Convention: sigma is the flow-matching time t, running from 1 (pure noise) to 0 (data);
``x_t = (1 - t) x_0 + t x_1``. A K-step schedule is returned as K + 1 values
``sigma_0 = 1 > sigma_1 > ... > sigma_K = 0`` (the trailing 0 is the terminal sigma that
diffusers' ``FlowMatchEulerDiscreteScheduler.sigmas`` also appends). Step k goes from
``sigmas[k]`` to ``sigmas[k + 1]`` and ``dt_k = sigmas[k + 1] - sigmas[k] < 0``.

The values equal ``FlowMatchEulerDiscreteScheduler(...).set_timesteps(...)`` for the same
settings (the SD3 pipeline calls it with ``num_inference_steps`` only; the Flux pipeline with
``sigmas = linspace(1, 1/K, K)`` and ``mu``); ``tests/test_schedule.py`` compares them.
The formulas are reimplemented here so that the core has no dependency on diffusers objects.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["shift_sigmas", "dynamic_shift_sigmas", "flux_mu", "flow_sigmas", "sigmas_to_timesteps"]


def shift_sigmas(sigmas: Tensor, shift: float) -> Tensor:
    """SD3's static time shift ``shift * s / (1 + (shift - 1) * s)`` (shift > 1 spends more steps at high noise)."""
    if not shift > 0:
        raise ValueError(f"shift: must be > 0, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def dynamic_shift_sigmas(sigmas: Tensor, mu: float, exponent: float = 1.0) -> Tensor:
    """Flux's resolution-dependent ("exponential") time shift ``e^mu / (e^mu + (1/s - 1)^exponent)``."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** exponent)


def flux_mu(
    image_seq_len: int,
    base_image_seq_len: int = 256,
    max_image_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The ``mu`` of Flux's dynamic shift: linear in the number of latent tokens (diffusers' ``calculate_shift``)."""
    if image_seq_len <= 0:
        raise ValueError(f"image_seq_len: must be > 0, got {image_seq_len}")
    m = (max_shift - base_shift) / (max_image_seq_len - base_image_seq_len)
    b = base_shift - m * base_image_seq_len
    return image_seq_len * m + b


def flow_sigmas(
    num_steps: int,
    shift: float = 1.0,
    *,
    mu: float | None = None,
    num_train_timesteps: int = 1000,
) -> Tensor:
    """Sampling sigmas of a K-step flow-matching schedule, float32 of shape (K + 1,), ending in 0.

    Args:
        num_steps: K, the number of denoising steps (>= 1).
        shift: static shift (SD3 / SD3.5 use 3.0). Ignored when ``mu`` is given.
        mu: if given, use Flux's dynamic shift with this ``mu`` (see :func:`flux_mu`) on the
            Flux pipeline's base grid ``linspace(1, 1/K, K)``.
        num_train_timesteps: the scheduler's training horizon (1000 for SD3 and Flux).

    Without ``mu`` this reproduces the scheduler's default grid, which is
    ``linspace(1, sigma_min, K)`` with ``sigma_min`` the shifted ``1 / num_train_timesteps``,
    then shifted (diffusers applies the shift to the already shifted ``sigma_min``; we keep that).
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: must be an integer >= 1, got {num_steps!r}")
    if mu is not None:
        base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64).to(torch.float32)
        sig = dynamic_shift_sigmas(base, mu)
    else:
        # the scheduler's __init__ computes its sigma_min in float32 ...
        train = torch.arange(1, num_train_timesteps + 1, dtype=torch.float32) / num_train_timesteps
        sigma_min = float(shift_sigmas(train[:1], shift)[0])
        sigma_max = float(shift_sigmas(train[-1:], shift)[0])
        # ... and set_timesteps builds the grid in float64 (numpy) before casting
        t = torch.linspace(sigma_max * num_train_timesteps, sigma_min * num_train_timesteps, num_steps,
                           dtype=torch.float64)
        sig = shift_sigmas(t / num_train_timesteps, shift)
    sig = sig.to(torch.float32)
    return torch.cat([sig, torch.zeros(1, dtype=torch.float32)])


def sigmas_to_timesteps(sigmas: Tensor, num_train_timesteps: int = 1000) -> Tensor:
    """The model's timestep input for each non-terminal sigma: ``sigmas[:-1] * num_train_timesteps``."""
    return sigmas[:-1] * num_train_timesteps
