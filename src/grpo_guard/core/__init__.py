"""The algorithm core: pure tensor functions, no I/O, no model objects.

Import from here (or from :mod:`grpo_guard`) to use the Flow-GRPO / GRPO-Guard math in another
framework: a sampler step with its log-prob, group advantages, the clipped loss and diagnostics.
"""

from .advantages import STD_MODES, GroupAdvantages, group_advantages
from .diagnostics import DEFAULT_QUANTILES, grad_norm, per_step_grad_norms, per_step_ratio_stats, spread
from .loss import RATIO_MODES, STEP_WEIGHTS, parse_clip_range, policy_loss, ratio_bias, step_weights, transform_log_ratio
from .schedule import dynamic_shift_sigmas, flow_sigmas, flux_mu, shift_sigmas, sigmas_to_timesteps
from .sde import (REDUCTIONS, SDE_TYPES, SDECoefficients, SDEStepOutput, gaussian_log_prob, sde_coefficients, sde_sigma_t,
                  sde_step, sde_velocity_gain)

__all__ = [
    "DEFAULT_QUANTILES", "GroupAdvantages", "RATIO_MODES", "REDUCTIONS", "SDECoefficients", "SDEStepOutput", "SDE_TYPES",
    "STD_MODES", "STEP_WEIGHTS", "dynamic_shift_sigmas", "flow_sigmas", "flux_mu", "gaussian_log_prob",
    "grad_norm", "group_advantages", "parse_clip_range", "per_step_grad_norms", "per_step_ratio_stats",
    "policy_loss", "ratio_bias", "sde_coefficients", "sde_sigma_t", "sde_step", "sde_velocity_gain", "shift_sigmas",
    "sigmas_to_timesteps", "spread", "step_weights", "transform_log_ratio",
]
