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

    f64 = torch.float64
    lr = log_ratio.detach().to(f64)
    lru = lr if log_ratio_used is None else log_ratio_used.detach().to(f64)
    adv = advantages.detach().to(f64)
    b = None if bias is None else bias.detach().to(f64)
    dims_factor = float(num_dims) if reduction == "sum" else 1.0
    steps = step_index.detach().to(device=lr.device, dtype=torch.long)
    nan = float("nan")

    # every statistic is a segment reduction over the entries of each step, done for all steps and all
    # statistics at once: one index_add_ over a stacked (N, M) matrix of per-entry values
    def seg_sums(columns: Tensor) -> Tensor:  # (N, M) -> (K, M)
        return torch.zeros(num_steps, columns.shape[1], dtype=f64, device=lr.device).index_add_(0, steps, columns)

    r_raw, r_used = lr.exp(), lru.exp()
    high, low = r_used > 1 + eps_high, r_used < 1 - eps_low
    pos, neg = adv > 0, adv < 0
    values = [torch.ones_like(lr), r_raw, r_used, lr, lr.square()] + ([b] if b is not None else [])
    masks = torch.stack([lr < 0, pos, neg, high & pos, high & neg, low & pos, low & neg], 1).to(f64)
    sums = seg_sums(torch.cat([torch.stack(values, 1), masks], 1))
    count = sums[:, 0]
    has = count > 0
    means = torch.where(has[:, None], sums / count.clamp_min(1)[:, None], nan)
    m = len(values)  # the masks' columns start here
    # population stds (unbiased=False), two-pass: squared deviations from each step's mean
    centred = torch.stack([r_raw, r_used, lr], 1) - means[:, 1:4].nan_to_num()[steps]
    stds = torch.where(has[:, None], seg_sums(centred.square()) / count.clamp_min(1)[:, None], nan).sqrt()

    def seg_frac(num: int, den: int) -> Tensor:  # P(mask | cond) per step, NaN without cond entries
        cond = sums[:, m + den]
        return torch.where(cond > 0, sums[:, m + num] / cond.clamp_min(1), nan)

    # extremes and quantiles of the two ratios, as (K, 2) / (Q, K, 2): column 0 raw, column 1 used
    ratios = torch.stack([r_raw, r_used], 1)
    init = torch.full((num_steps, 2), nan, dtype=f64, device=lr.device)
    at = steps[:, None].expand(-1, 2)
    mins = init.scatter_reduce(0, at, ratios, "amin", include_self=False)
    maxs = init.scatter_reduce(0, at, ratios, "amax", include_self=False)
    # values sorted within each step: sort by value, then stably by step
    offsets = torch.cumsum(count, 0) - count
    qs = torch.tensor(list(quantiles), dtype=f64, device=lr.device)
    q_pos = qs[:, None] * (count - 1).clamp_min(0)[None, :]  # (Q, K), linear interpolation as torch.quantile
    q_lo, q_hi = q_pos.floor(), q_pos.ceil()
    if n:
        by_value = torch.argsort(ratios, dim=0, stable=True)
        ordered = ratios.gather(0, by_value.gather(0, torch.argsort(steps[by_value], dim=0, stable=True)))
        v_lo = ordered[(offsets + q_lo).long().clamp(0, n - 1)]
        v_hi = ordered[(offsets + q_hi).long().clamp(0, n - 1)]
        quants = torch.where(has[None, :, None], v_lo + (v_hi - v_lo) * (q_pos - q_lo)[..., None], nan)
    else:
        quants = torch.full((len(quantiles), num_steps, 2), nan, dtype=f64, device=lr.device)

    out: dict[str, Tensor] = {"count": count}
    for c, prefix in enumerate(("raw_ratio", "ratio")):
        out[f"{prefix}_mean"] = means[:, 1 + c]
        out[f"{prefix}_std"] = stds[:, c]
        out[f"{prefix}_min"] = mins[:, c]
        out[f"{prefix}_max"] = maxs[:, c]
        for q, row in zip(quantiles, quants[:, :, c]):
            out[f"{prefix}_q{round(q * 100):02d}"] = row
    out["frac_raw_below_1"] = means[:, m]
    out["clip_high_pos"] = seg_frac(3, 1)
    out["clip_high_neg"] = seg_frac(4, 2)
    out["clip_low_pos"] = seg_frac(5, 1)
    out["clip_low_neg"] = seg_frac(6, 2)
    lstd = stds[:, 2]
    out["log_ratio_std"] = lstd
    out["approx_kl"] = 0.5 * means[:, 4]
    if b is not None:
        bm = means[:, 5]
        out["bias_mean"] = bm
        out["bias_over_spread"] = torch.where(lstd > 0, bm / lstd, nan)
        out["drift_u"] = torch.sqrt(2 * bm / dims_factor)
    keys = ["count", "frac_raw_below_1", "clip_high_pos", "clip_high_neg", "clip_low_pos", "clip_low_neg",
            "log_ratio_std", "approx_kl"]
    for prefix in ("raw_ratio", "ratio"):
        keys += [f"{prefix}_{s}" for s in ("mean", "std", "min", "max")]
        keys += [f"{prefix}_q{round(q * 100):02d}" for q in quantiles]
    keys += ["bias_mean", "bias_over_spread", "drift_u"] if b is not None else []
    return {k: out[k].cpu() for k in keys}


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
