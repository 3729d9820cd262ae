"""Per-denoising-step diagnostics of the importance ratio, the clipping and the gradients.

These are the numbers that show GRPO-Guard's failure mode (or its absence) in a run:

* the raw ratio's mean below 1 (left shift), growing towards late (low-noise) steps;
* clipping that is one-sided by advantage sign: ``P(r > 1 + eps | A > 0)`` near 0 while
  ``P(r < 1 - eps | A < 0)`` is large; RatioNorm makes the two sides balanced;
* the regime indicator ``bias / spread = mean(bias) / std(log r)``: the quadratic term's size
  against the ratio's spread. The left shift only dominates clipping when it is above about 1
  (``~ sqrt(D) * u / 2`` with the drift ``u = rms(Delta mu) / s``, also reported);
* the per-step gradient norm and its spread (max / min) across steps.

All functions are pure tensor functions (no I/O); results are dicts of (K,) tensors indexed by the
denoising-step index k = 0 .. K-1, NaN where a step has no entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ._checks import check_choice, check_per_sample
from .loss import parse_clip_range
from .sde import REDUCTIONS

__all__ = ["DEFAULT_QUANTILES", "per_step_ratio_stats", "grad_norm", "per_step_grad_norms", "spread"]

DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _cond_frac(mask: Tensor, cond: Tensor) -> Tensor:
    n = cond.sum()
    return (mask & cond).sum().to(torch.float64) / n if n > 0 else torch.tensor(float("nan"), dtype=torch.float64)


def per_step_ratio_stats(
    step_index: Tensor,
    log_ratio: Tensor,
    advantages: Tensor,
    num_steps: int,
    clip_range: float | tuple[float, float],
    *,
    log_ratio_used: Tensor | None = None,
    bias: Tensor | None = None,
    reduction: str = "mean",
    num_dims: int | None = None,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
) -> dict[str, Tensor]:
    """Ratio and clipping statistics per denoising step.

    Args:
        step_index: (N,) int step index k of each entry, in [0, num_steps).
        log_ratio: (N,) raw log-ratio ``log p_theta - log p_old``.
        advantages: (N,) advantages.
        num_steps: K, the number of step indices to report.
        clip_range: the clip range used for the transformed ratio (``eps`` or ``(low, high)``).
        log_ratio_used: (N,) log-ratio after the ratio mode (defaults to ``log_ratio``).
        bias: (N,) quadratic term ``||Delta mu||^2 / (2 s^2)`` (see ``ratio_bias``), optional.
        reduction, num_dims: how the log-prob was reduced; with ``"sum"`` pass the number of
            dimensions D so that the drift ``u`` is reported per dimension.
        quantiles: quantile levels of the raw and transformed ratios.

    Returns:
        dict of (K,) float64 tensors: ``count``; ``raw_ratio_{mean,std,min,max}`` and
        ``raw_ratio_q{NN}``; ``ratio_*`` the same for the transformed ratio; ``frac_raw_below_1``;
        ``clip_high_pos`` = P(r > 1 + eps_high | A > 0), ``clip_high_neg``, ``clip_low_pos``,
        ``clip_low_neg`` (conditional on the advantage sign, on the transformed ratio);
        ``log_ratio_std``; ``approx_kl`` = 0.5 E[(log r)^2]; and if ``bias`` is given
        ``bias_mean`` (= the exact Gaussian KL(old || new), per dimension with mean reduction),
        ``bias_over_spread`` = bias_mean / log_ratio_std and ``drift_u`` = sqrt(2 bias_mean / D').
    """
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "sum" and bias is not None and not num_dims:
        raise ValueError("num_dims: required with reduction='sum' to report the drift per dimension")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps: must be an integer >= 1, got {num_steps!r}")
    eps_low, eps_high = parse_clip_range(clip_range)
    n = log_ratio.shape[0]
    for name, t in (("step_index", step_index), ("advantages", advantages),
                    ("log_ratio_used", log_ratio_used), ("bias", bias)):
        check_per_sample(name, t, n)
    if n and (int(step_index.min()) < 0 or int(step_index.max()) >= num_steps):
        raise ValueError(f"step_index: values must lie in [0, {num_steps})")
    for q in quantiles:
        if not 0 <= q <= 1:
            raise ValueError(f"quantiles: {q} is outside [0, 1]")

    lr = log_ratio.detach().to(torch.float64)
    lru = lr if log_ratio_used is None else log_ratio_used.detach().to(torch.float64)
    adv = advantages.detach().to(torch.float64)
    b = None if bias is None else bias.detach().to(torch.float64)
    dims_factor = float(num_dims) if reduction == "sum" else 1.0
    qs = torch.tensor(list(quantiles), dtype=torch.float64)

    keys: list[str] = ["count", "frac_raw_below_1", "clip_high_pos", "clip_high_neg", "clip_low_pos",
                       "clip_low_neg", "log_ratio_std", "approx_kl"]
    for prefix in ("raw_ratio", "ratio"):
        keys += [f"{prefix}_{s}" for s in ("mean", "std", "min", "max")]
        keys += [f"{prefix}_q{round(q * 100):02d}" for q in quantiles]
    if b is not None:
        keys += ["bias_mean", "bias_over_spread", "drift_u"]
    out = {k: torch.full((num_steps,), float("nan"), dtype=torch.float64) for k in keys}

    steps = step_index.detach().cpu()
    for k in range(num_steps):
        sel = (steps == k).to(lr.device)
        cnt = int(sel.sum())
        out["count"][k] = cnt
        if cnt == 0:
            continue
        r_raw, r_used, a = lr[sel].exp(), lru[sel].exp(), adv[sel]
        for prefix, r in (("raw_ratio", r_raw), ("ratio", r_used)):
            out[f"{prefix}_mean"][k] = r.mean()
            out[f"{prefix}_std"][k] = r.std(unbiased=False)
            out[f"{prefix}_min"][k] = r.min()
            out[f"{prefix}_max"][k] = r.max()
            qv = torch.quantile(r, qs.to(r.device))
            for q, v in zip(quantiles, qv):
                out[f"{prefix}_q{round(q * 100):02d}"][k] = v
        out["frac_raw_below_1"][k] = (lr[sel] < 0).to(torch.float64).mean()
        high, low = r_used > 1 + eps_high, r_used < 1 - eps_low
        pos, neg = a > 0, a < 0
        out["clip_high_pos"][k] = _cond_frac(high, pos)
        out["clip_high_neg"][k] = _cond_frac(high, neg)
        out["clip_low_pos"][k] = _cond_frac(low, pos)
        out["clip_low_neg"][k] = _cond_frac(low, neg)
        lstd = lr[sel].std(unbiased=False)
        out["log_ratio_std"][k] = lstd
        out["approx_kl"][k] = 0.5 * (lr[sel] ** 2).mean()
        if b is not None:
            bm = b[sel].mean()
            out["bias_mean"][k] = bm
            out["bias_over_spread"][k] = bm / lstd if lstd > 0 else float("nan")
            out["drift_u"][k] = torch.sqrt(2 * bm / dims_factor)
    return out


def grad_norm(loss: Tensor, params: Iterable[Tensor], *, retain_graph: bool = True) -> Tensor:
    """L2 norm of ``d loss / d params`` (0-d tensor), computed with ``torch.autograd.grad``.

    Does not touch ``.grad``; parameters that do not influence the loss contribute 0.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("params: no parameter requires grad")
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(sq).sum().sqrt() if sq else torch.zeros(())


def per_step_grad_norms(step_losses: Sequence[Tensor], params: Iterable[Tensor]) -> Tensor:
    """Gradient norm of each step's loss w.r.t. ``params``: (K,) for K losses (graphs are retained)."""
    params = list(params)
    return torch.stack([grad_norm(loss, params, retain_graph=True) for loss in step_losses])


def spread(values: Tensor) -> Tensor:
    """``max / min`` of the finite entries of a 1-D tensor of positive values (1 = perfectly balanced)."""
    v = values[torch.isfinite(values)]
    if v.numel() == 0 or bool((v <= 0).any()):
        raise ValueError("values: need at least one finite value, all > 0")
    return v.max() / v.min()
