"""The clipped policy loss of Flow-GRPO and GRPO-Guard, with every switch independent.

Inputs are flat batches of N (sample, denoising step) pairs: each entry carries its own advantage
and its own step quantities, so one call may mix steps. Shapes:

* per-sample: ``log_prob``, ``old_log_prob``, ``advantages``, ``std``, ``dt``, ``sigma``,
  ``sigma_t`` are (N,);
* per-dimension: ``mean``, ``old_mean``, ``ref_mean`` are (N, *D).

Ratio modes (``ratio_mode``), with ``Delta mu = old_mean - mean`` and the step std ``s``:

* ``plain`` (Flow-GRPO): ``log r = log_prob - old_log_prob``
  ``= -||Delta mu||^2 / (2 s^2) - (Delta mu . eps) / s`` (reduced like the log-prob).
* ``mean_revised``: ``log r + bias`` with ``bias = ||Delta mu||^2 / (2 s^2)`` (the quadratic,
  never-positive term removed; the left shift is gone, the 1/s scale is not).
* ``ratio_norm`` (GRPO-Guard's RatioNorm): ``s * (log r + bias)`` ``= -(Delta mu . eps)``.

The bias is computed per sample and is NOT detached: its gradient cancels the ``-Delta mu`` part
of the log-ratio gradient. ``official_compat=True`` reproduces the official GRPO-Guard script
instead: the bias averaged over the micro-batch and one scalar ``s = mean(sigma_t) * mean(sqrt|dt|)``.

Per-step weights (``step_weight``), multiplying each entry's clipped surrogate:

* ``none``; ``inv_dt`` (GRPO-Guard: ``1 / |dt|``); ``inv_beta_dt`` (``1 / (beta(t) |dt|)``, the exact
  equaliser for a t-dependent velocity gain such as DanceGRPO's SDE); ``temp`` (TempFlow-GRPO:
  ``sigma_t * sqrt(|dt|)``, i.e. the step std).

Objective per entry: ``w * max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))``, averaged over the N
entries; plus ``kl_coef * mean(KL)`` with Flow-GRPO's ``KL = ||mean - ref_mean||^2 / (2 sigma_t^2)``
(reduced like the log-prob, unweighted by the step weight).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_choice, check_finite, check_per_sample, check_same_shape
from .sde import REDUCTIONS, cast_to, compute_dtype, sde_velocity_gain

__all__ = [
    "RATIO_MODES",
    "STEP_WEIGHTS",
    "ratio_bias",
    "transform_log_ratio",
    "step_weights",
    "parse_clip_range",
    "policy_loss",
]

RATIO_MODES = ("plain", "mean_revised", "ratio_norm")
STEP_WEIGHTS = ("none", "inv_dt", "inv_beta_dt", "temp")


def _reduce_dims(x: Tensor, reduction: str) -> Tensor:
    flat = x.flatten(1)
    return flat.mean(1) if reduction == "mean" else flat.sum(1)


def ratio_bias(mean: Tensor, old_mean: Tensor, std: Tensor, reduction: str = "mean") -> Tensor:
    """Per-sample quadratic term of the log-ratio, ``||mean - old_mean||^2 / (2 std^2)`` >= 0, shape (N,).

    With ``reduction="mean"`` the squared norm is the mean over dimensions (matching a mean-reduced
    log-prob). It equals the exact KL(old || current) of the two step Gaussians (per dimension).
    Gradient flows through ``mean``.
    """
    dtype = compute_dtype(mean.dtype)
    sq = _reduce_dims((cast_to(mean, dtype) - cast_to(old_mean, dtype)).pow(2), reduction)
    return sq / (2 * cast_to(std, dtype) ** 2)


def transform_log_ratio(log_ratio: Tensor, bias: Tensor | None, scale: Tensor | None, ratio_mode: str) -> Tensor:
    """Apply a ratio mode to the raw log-ratio (N,): ``plain`` -> unchanged; ``mean_revised`` ->
    ``log_ratio + bias``; ``ratio_norm`` -> ``scale * (log_ratio + bias)`` (scale = step std)."""
    check_choice("ratio_mode", ratio_mode, RATIO_MODES)
    if ratio_mode == "plain":
        return log_ratio
    if bias is None:
        raise ValueError(f"bias: required for ratio_mode={ratio_mode!r}")
    if ratio_mode == "mean_revised":
        return log_ratio + bias
    if scale is None:
        raise ValueError("scale: required for ratio_mode='ratio_norm'")
    return scale * (log_ratio + bias)


def step_weights(
    step_weight: str,
    *,
    dt: Tensor | None = None,
    std: Tensor | None = None,
    sigma: Tensor | None = None,
    sigma_t: Tensor | None = None,
) -> Tensor | None:
    """Per-entry loss weights (N,) for a step-weight name; ``None`` for ``"none"``."""
    check_choice("step_weight", step_weight, STEP_WEIGHTS)
    if step_weight == "none":
        return None
    if step_weight == "temp":
        if std is None:
            raise ValueError("std: required for step_weight='temp' (sigma_t * sqrt(|dt|))")
        return std
    if dt is None:
        raise ValueError(f"dt: required for step_weight={step_weight!r}")
    inv = 1.0 / dt.abs()
    if step_weight == "inv_dt":
        return inv
    if sigma is None or sigma_t is None:
        raise ValueError("sigma, sigma_t: required for step_weight='inv_beta_dt'")
    return inv / sde_velocity_gain(sigma, sigma_t)


def parse_clip_range(clip_range: float | tuple[float, float] | list[float]) -> tuple[float, float]:
    """``eps`` or ``(eps_low, eps_high)`` -> ``(eps_low, eps_high)``, both > 0 (``inf`` disables clipping)."""
    if isinstance(clip_range, (tuple, list)):
        if len(clip_range) != 2:
            raise ValueError(f"clip_range: expected a number or a pair (low, high), got {clip_range!r}")
        low, high = (float(c) for c in clip_range)
    else:
        low = high = float(clip_range)
    if not (low > 0 and high > 0):  # also rejects NaN
        raise ValueError(f"clip_range: must be > 0 on both sides, got {clip_range!r}")
    return low, high


def policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    *,
    mean: Tensor | None = None,
    old_mean: Tensor | None = None,
    std: Tensor | None = None,
    dt: Tensor | None = None,
    sigma: Tensor | None = None,
    sigma_t: Tensor | None = None,
    ref_mean: Tensor | None = None,
    ratio_mode: str = "plain",
    step_weight: str = "none",
    clip_range: float | tuple[float, float] = 1e-4,
    kl_coef: float = 0.0,
    reduction: str = "mean",
    official_compat: bool = False,
    check_inputs: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss of Flow-GRPO / GRPO-Guard (to minimise).

    Args:
        log_prob: (N,) log p_theta(x_next | x) under the current policy (with gradient).
        old_log_prob: (N,) the rollout policy's log-prob of the same transition.
        advantages: (N,) advantage of each entry's sample (already clipped if desired).
        mean: (N, *D) current policy mean (with gradient). Needed by ``mean_revised``,
            ``ratio_norm`` and the KL; if given with ``old_mean`` and ``std`` the bias is also
            reported in ``plain`` mode.
        old_mean: (N, *D) rollout mean.
        std: (N,) step std ``s_t = sigma_t * sqrt(|dt|)``.
        dt: (N,) ``sigma_next - sigma`` (negative); needed by ``inv_dt`` / ``inv_beta_dt`` and compat.
        sigma: (N,) current sigma t; needed by ``inv_beta_dt``.
        sigma_t: (N,) diffusion coefficient; needed by the KL, ``inv_beta_dt`` and compat.
        ref_mean: (N, *D) reference-model mean for the KL (needed when ``kl_coef > 0``).
        ratio_mode: ``"plain"`` | ``"mean_revised"`` | ``"ratio_norm"``.
        step_weight: ``"none"`` | ``"inv_dt"`` | ``"inv_beta_dt"`` | ``"temp"``.
        clip_range: ``eps`` or ``(eps_low, eps_high)``; clip to ``[1 - eps_low, 1 + eps_high]``.
        kl_coef: beta of the KL penalty (0 disables it).
        reduction: how ``log_prob`` was reduced over dimensions (``"mean"`` or ``"sum"``); the bias
            and the KL use the same reduction so that the algebra holds.
        official_compat: reproduce the official script's batch-averaged bias and scalar scale.
        check_inputs: validate shapes and finiteness (costs one device sync).

    Returns:
        ``(loss, stats)``. ``loss`` is a 0-d tensor. ``stats`` holds detached 0-d tensors
        (``loss``, ``policy_loss``, ``kl``, ``ratio_mean``, ``ratio_std``, ``ratio_min``,
        ``ratio_max``, ``raw_ratio_mean``, ``clip_frac``, ``clip_frac_high``, ``clip_frac_low``,
        ``approx_kl``, ``bias_mean``) and detached per-entry (N,) tensors ``log_ratio`` (raw),
        ``log_ratio_used`` (after the ratio mode) and ``bias`` (NaN where not computable), which
        :func:`grpo_guard.core.diagnostics.per_step_ratio_stats` consumes.
    """
    check_choice("ratio_mode", ratio_mode, RATIO_MODES)
    check_choice("step_weight", step_weight, STEP_WEIGHTS)
    check_choice("reduction", reduction, REDUCTIONS)
    eps_low, eps_high = parse_clip_range(clip_range)
    if not (kl_coef >= 0 and math.isfinite(kl_coef)):
        raise ValueError(f"kl_coef: must be a finite number >= 0, got {kl_coef}")
    needs_bias = ratio_mode != "plain"
    if needs_bias and (mean is None or old_mean is None or std is None):
        raise ValueError(f"mean, old_mean, std: required for ratio_mode={ratio_mode!r}")
    if kl_coef > 0 and (mean is None or ref_mean is None or sigma_t is None):
        raise ValueError("ref_mean, mean, sigma_t: required when kl_coef > 0")
    if official_compat and needs_bias and (sigma_t is None or dt is None):
        raise ValueError("sigma_t, dt: required for official_compat with a bias-corrected ratio_mode")

    if log_prob.ndim != 1:
        raise ValueError(f"log_prob: expected shape (N,), got {tuple(log_prob.shape)}")
    n = log_prob.shape[0]
    if check_inputs:
        for name, t in (("old_log_prob", old_log_prob), ("advantages", advantages), ("std", std),
                        ("dt", dt), ("sigma", sigma), ("sigma_t", sigma_t)):
            check_per_sample(name, t, n)
        if mean is not None and (mean.ndim < 2 or mean.shape[0] != n):
            raise ValueError(f"mean: expected shape ({n}, *D), got {tuple(mean.shape)}")
        for name, t in (("old_mean", old_mean), ("ref_mean", ref_mean)):
            if t is not None:
                if mean is None:
                    raise ValueError(f"mean: required when {name} is given")
                check_same_shape(name, t, "mean", mean)
        for name, t in (("log_prob", log_prob), ("old_log_prob", old_log_prob), ("advantages", advantages),
                        ("mean", mean), ("old_mean", old_mean), ("ref_mean", ref_mean), ("std", std),
                        ("dt", dt), ("sigma", sigma), ("sigma_t", sigma_t)):
            check_finite(name, t)
        if std is not None and bool((std <= 0).any()):
            raise ValueError("std: every value must be > 0")
        if dt is not None and bool((dt >= 0).any()):
            raise ValueError("dt: every value must be < 0 (sigma_next - sigma)")

    dtype = compute_dtype(log_prob.dtype)
    log_ratio = cast_to(log_prob, dtype) - cast_to(old_log_prob, dtype)

    bias = None
    if mean is not None and old_mean is not None and std is not None:
        if official_compat and needs_bias:
            scale = sigma_t.to(dtype).mean() * dt.to(dtype).abs().sqrt().mean()
            sq = _reduce_dims((mean.to(dtype) - old_mean.to(dtype)).pow(2), reduction)
            bias = (sq.mean() / (2 * scale**2)).expand(n)
        else:
            scale = cast_to(std, dtype)
            bias = ratio_bias(mean, old_mean, std, reduction)
    else:
        scale = None
    log_ratio_used = transform_log_ratio(log_ratio, bias if needs_bias else None, scale, ratio_mode)

    ratio = torch.exp(log_ratio_used)
    adv = cast_to(advantages, dtype)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high)
    per_entry = torch.maximum(unclipped, clipped)
    weights = step_weights(step_weight, dt=dt, std=std, sigma=sigma, sigma_t=sigma_t)
    if weights is not None:
        per_entry = per_entry * cast_to(weights, dtype)
    policy = per_entry.mean()

    kl = torch.zeros((), dtype=dtype, device=log_prob.device)
    if kl_coef > 0:
        kl_per = _reduce_dims((mean.to(dtype) - ref_mean.to(dtype)).pow(2), reduction) / (2 * sigma_t.to(dtype) ** 2)
        kl = kl_per.mean()
    loss = policy + kl_coef * kl

    with torch.no_grad():
        over = ratio > 1.0 + eps_high
        under = ratio < 1.0 - eps_low
        nan = torch.full((n,), float("nan"), dtype=dtype, device=log_prob.device)
        bias_d = bias.detach() if bias is not None else nan
        stats = {
            "loss": loss.detach(),
            "policy_loss": policy.detach(),
            "kl": kl.detach(),
            "ratio_mean": ratio.mean(),
            "ratio_std": ratio.std(unbiased=False),
            "ratio_min": ratio.min(),
            "ratio_max": ratio.max(),
            "raw_ratio_mean": log_ratio.exp().mean(),
            "clip_frac": (over | under).to(dtype).mean(),
            "clip_frac_high": over.to(dtype).mean(),
            "clip_frac_low": under.to(dtype).mean(),
            "approx_kl": 0.5 * (log_ratio**2).mean(),
            "bias_mean": bias_d.mean(),
            "log_ratio": log_ratio.detach(),
            "log_ratio_used": log_ratio_used.detach(),
            "bias": bias_d,
        }
    return loss, stats
