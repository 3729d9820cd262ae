"""The stochastic policy of Flow-GRPO: one SDE denoising step and its Gaussian log-density.

Conventions (see ``docs/method.md``):

* sigma (= t) runs from 1 (noise) to 0 (data); a step goes from ``sigma`` to ``sigma_next < sigma``
  and ``dt = sigma_next - sigma < 0``. The network predicts the velocity ``v ~ x_1 - x_0``.
* ``sigma_t`` is the SDE's *diffusion coefficient*; it EXCLUDES ``sqrt(|dt|)``. The standard
  deviation of the step (what multiplies the unit noise) is ``std = s_t = sigma_t * sqrt(|dt|)``.

  - ``sde_type="flow_grpo"``: ``sigma_t = a * sqrt(t / (1 - t))``; at ``t = 1`` the next sigma
    replaces t in the denominator (as the reference code does) to avoid a division by zero.
  - ``sde_type="dance_grpo"``: constant ``sigma_t = a`` (DanceGRPO's eta). Its mean has the same
    form, so the velocity enters with the t-dependent gain ``beta(t) = 1 + a^2 (1 - t) / (2 t)``.

* The mean of the next state is ``mu = x + [v + sigma_t^2 / (2 t) * (x + (1 - t) v)] dt`` and the
  next state is ``x_next = mu + s_t * eps``, ``eps ~ N(0, I)``. With ``a = 0`` this is exactly the
  Euler ODE step ``x + v dt`` (what diffusers' ``FlowMatchEulerDiscreteScheduler.step`` computes).
* The log-prob is the Gaussian log-density of ``x_next`` under ``N(mu, s_t^2 I)``, reduced over
  every non-batch dimension: ``reduction="mean"`` (default, what Flow-GRPO and GRPO-Guard do and
  what their published clip ranges are calibrated to) or ``"sum"`` (the true joint density; its
  log-ratios are D times larger, so clip ranges must be about D times wider).
* All arithmetic is done in float32 (float64 stays float64) whatever the input dtype, so that
  bf16/fp16 networks still get float32 log-probs. Store ``next_state`` as returned (float32):
  rounding it to the network dtype before re-evaluating its log-prob breaks ratio == 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import as_per_sample, check_choice, check_finite, check_same_shape

__all__ = [
    "SDE_TYPES",
    "REDUCTIONS",
    "SDEStepOutput",
    "SDECoefficients",
    "sde_coefficients",
    "sde_sigma_t",
    "sde_velocity_gain",
    "gaussian_log_prob",
    "sde_step",
]

SDE_TYPES = ("flow_grpo", "dance_grpo")
REDUCTIONS = ("mean", "sum")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class SDEStepOutput(NamedTuple):
    """Result of :func:`sde_step` for a batch of B states of shape (B, *D).

    Attributes:
        next_state: (B, *D) float32 next state ``x_next`` (the given one, cast, if one was passed).
        log_prob: (B,) float32 log-density of ``next_state`` under the step's Gaussian, reduced over
            the D dimensions as requested; ``None`` for a deterministic step (noise level 0) and
            when ``sde_step`` was called with ``with_log_prob=False``.
        mean: (B, *D) float32 Gaussian mean ``mu``; carries gradient w.r.t. the velocity.
        std: (B,) float32 step standard deviation ``s_t = sigma_t * sqrt(|dt|)``.
        sigma_t: (B,) float32 diffusion coefficient (without ``sqrt(|dt|)``).
    """

    next_state: Tensor
    log_prob: Tensor | None
    mean: Tensor
    std: Tensor
    sigma_t: Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other dtype computes in float32 (``promote_types(dtype, float32)``
    for real dtypes, without the dispatcher call, which runs several times per step)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cast_to(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, skipped when ``t`` already has it: a no-op ``to`` still costs a dispatcher call,
    and the step and the loss cast every input (several dozen calls per training step)."""
    return t if t.dtype == dtype else t.to(dtype)


def sde_sigma_t(sigma: Tensor, sigma_next: Tensor, noise_level: float | Tensor,
                sde_type: str = "flow_grpo") -> Tensor:
    """Diffusion coefficient ``sigma_t`` (excluding ``sqrt(|dt|)``), same shape as ``sigma``.

    ``flow_grpo``: ``a * sqrt(t / (1 - t))``, using ``sigma_next`` for the denominator where t == 1.
    ``dance_grpo``: the constant ``a``. ``noise_level`` ``a`` is a number or a tensor broadcastable
    to ``sigma`` (one level per step).
    """
    check_choice("sde_type", sde_type, SDE_TYPES)
    if sde_type == "dance_grpo":
        return torch.as_tensor(noise_level, dtype=sigma.dtype, device=sigma.device).expand(sigma.shape).clone()
    denom_t = torch.where(sigma >= 1, sigma_next, sigma)
    return noise_level * torch.sqrt(sigma / (1 - denom_t))


class SDECoefficients(NamedTuple):
    """Per-step coefficients of :func:`sde_step`, elementwise in ``sigma``'s shape: the mean is
    ``x * c_x + v * c_v`` and the next state ``mean + std * eps``.

    Attributes:
        c_x: ``1 + sigma_t^2 / (2 t) * dt``.
        c_v: ``(1 + sigma_t^2 (1 - t) / (2 t)) * dt``.
        std: ``s_t = sigma_t * sqrt(|dt|)``.
        sigma_t: the diffusion coefficient (see :func:`sde_sigma_t`).
    """

    c_x: Tensor
    c_v: Tensor
    std: Tensor
    sigma_t: Tensor


def sde_coefficients(sigma: Tensor, sigma_next: Tensor, noise_level: float | Tensor,
                     sde_type: str = "flow_grpo") -> SDECoefficients:
    """The coefficients of :func:`sde_step` for any shape of ``sigma`` / ``sigma_next`` (computed in
    their dtype, elementwise, so a whole schedule at once gives bit for bit the values a per-sample
    call computes). ``noise_level`` may be a tensor of one level per entry; with ``a = 0``, ``c_x`` is
    exactly 1 and ``c_v`` exactly ``dt`` (the Euler step)."""
    dt = sigma_next - sigma
    sigma_t = sde_sigma_t(sigma, sigma_next, noise_level, sde_type)
    # mu = x + [v + sigma_t^2 / (2t) (x + (1 - t) v)] dt, regrouped as x * c_x + v * c_v: three full-size
    # operations in the step instead of seven
    half_s2_over_t = sigma_t**2 / (2 * sigma)
    c_x = 1 + half_s2_over_t * dt
    c_v = (1 + half_s2_over_t * (1 - sigma)) * dt
    return SDECoefficients(c_x, c_v, sigma_t * torch.sqrt(sigma - sigma_next), sigma_t)


def sde_velocity_gain(sigma: Tensor, sigma_t: Tensor) -> Tensor:
    """``beta(t) = 1 + sigma_t^2 (1 - t) / (2 t)``: d mu / d v = beta * dt.

    Constant ``1 + a^2 / 2`` for the Flow-GRPO SDE (except at t = 1, where it is 1), t-dependent for
    DanceGRPO's constant sigma_t. Used by the ``inv_beta_dt`` step weight.
    """
    return 1 + sigma_t**2 * (1 - sigma) / (2 * sigma)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor, reduction: str = "mean") -> Tensor:
    """Log-density of ``x`` under ``N(mean, std^2 I)`` per sample, reduced over non-batch dims.

    Args:
        x, mean: (B, *D) tensors (``x`` is treated as data: it is detached).
        std: (B,) per-sample standard deviation (> 0).
        reduction: ``"mean"`` (average of the per-dimension log-densities) or ``"sum"``.

    Returns:
        (B,) log-probs in the promoted float dtype (at least float32).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    dtype = compute_dtype(mean.dtype)
    diff = (cast_to(x.detach(), dtype) - cast_to(mean, dtype)).flatten(1)
    sq = torch.linalg.vecdot(diff, diff)  # (B,) sum over dims of (x - mu)^2
    std = cast_to(std, dtype)
    # -mean_d (x - mu)^2 / (2 std^2) - log std - log(2 pi) / 2, in five operations
    per_dim = torch.addcdiv(-(torch.log(std) + _HALF_LOG_2PI), sq, std.square(), value=-0.5 / diff.shape[1])
    if reduction == "sum":
        return per_dim * diff.shape[1]
    return per_dim


def sde_step(
    velocity: Tensor,
    state: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    noise_level: float = 0.7,
    *,
    next_state: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    reduction: str = "mean",
    sde_type: str = "flow_grpo",
    check_inputs: bool = True,
    coefficients: SDECoefficients | None = None,
    with_log_prob: bool = True,
) -> SDEStepOutput:
    """One Flow-GRPO SDE step from ``state`` at ``sigma`` to ``sigma_next`` and its log-prob.

    Args:
        velocity: (B, *D) predicted velocity ``v`` (any float dtype; CFG already applied).
        state: (B, *D) current state ``x`` at ``sigma``.
        sigma: current sigma, a number or a (B,) tensor (one per sample; samples may sit at
            different steps), in (0, 1].
        sigma_next: next sigma, same form, in [0, sigma).
        noise_level: ``a`` >= 0. ``a = 0`` gives the deterministic Euler step (``log_prob`` is None).
        next_state: if given (B, *D), evaluate its log-prob instead of sampling (the training pass).
        generator: torch generator for the sampling noise (ignored when ``next_state`` or ``noise``
            is given).
        noise: explicit unit noise ``eps`` (B, *D) to use instead of drawing it.
        reduction: ``"mean"`` or ``"sum"`` over the D dimensions for the log-prob.
        sde_type: ``"flow_grpo"`` (sigma_t = a sqrt(t/(1-t))) or ``"dance_grpo"`` (sigma_t = a).
        check_inputs: validate shapes, ranges and finiteness (costs one device sync).
        coefficients: this step's :func:`sde_coefficients` for ``(sigma, sigma_next, noise_level,
            sde_type)``, 0-d or (B,), computed in advance (the rollout computes the whole schedule's
            at once); the result is the same as without them.
        with_log_prob: False skips the log-prob (``log_prob`` is None): a sampler that scores its
            transitions later, all steps in one :func:`gaussian_log_prob` call (the rollout), saves
            its operations at every step.

    Returns:
        :class:`SDEStepOutput` (next_state, log_prob, mean, std, sigma_t).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("sde_type", sde_type, SDE_TYPES)
    if state.ndim < 2:
        raise ValueError(f"state: expected shape (B, *D) with at least 2 dims, got {tuple(state.shape)}")
    bsz = state.shape[0]
    dtype = compute_dtype(state.dtype)
    if check_inputs or coefficients is None:
        sig = as_per_sample("sigma", sigma, bsz, state).to(dtype)
        sig_next = as_per_sample("sigma_next", sigma_next, bsz, state).to(dtype)
    if check_inputs:
        check_same_shape("velocity", velocity, "state", state)
        check_same_shape("next_state", next_state, "state", state)
        check_same_shape("noise", noise, "state", state)
        if not float(noise_level) >= 0:
            raise ValueError(f"noise_level: must be >= 0, got {noise_level}")
        check_finite("velocity", velocity)
        check_finite("state", state)
        check_finite("next_state", next_state)
        check_finite("sigma", sig)
        check_finite("sigma_next", sig_next)
        if bool((sig <= 0).any() | (sig > 1).any()):
            raise ValueError("sigma: every value must lie in (0, 1]")
        if bool((sig_next < 0).any()):
            raise ValueError("sigma_next: every value must be >= 0")
        if bool((sig_next >= sig).any()):
            raise ValueError("sigma_next: must be < sigma (time runs from 1 to 0)")
    if noise_level == 0 and next_state is not None:
        raise ValueError("next_state: a deterministic step (noise_level=0) has no density to evaluate")

    bshape = (bsz,) + (1,) * (state.ndim - 1)
    x = cast_to(state, dtype)
    v = cast_to(velocity, dtype)
    coef = coefficients if coefficients is not None else sde_coefficients(sig, sig_next, noise_level, sde_type)
    c_x, c_v, std, sigma_t = (cast_to(t, dtype) for t in coef)
    if std.ndim == 0:  # one step for the whole batch: the coefficients broadcast as scalars
        mean = x * c_x + v * c_v
        std_b, std, sigma_t = std, std.expand(bsz), sigma_t.expand(bsz)
    else:
        mean = x * c_x.view(bshape) + v * c_v.view(bshape)
        std_b = std.view(bshape)

    if noise_level == 0:
        return SDEStepOutput(mean, None, mean, std, sigma_t)
    if next_state is None:
        if noise is None:
            noise = torch.randn(state.shape, generator=generator, device=state.device, dtype=dtype)
        next_state = torch.addcmul(mean, std_b, cast_to(noise, dtype))
    else:
        next_state = cast_to(next_state, dtype)
    log_prob = gaussian_log_prob(next_state, mean, std, reduction) if with_log_prob else None
    return SDEStepOutput(next_state.detach(), log_prob, mean, std, sigma_t)
