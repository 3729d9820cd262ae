"""The policy update: several optimizer updates per rollout batch, one per minibatch.

For each minibatch and each trained step, the current velocity is recomputed at the stored state,
the stored next state is re-scored with :func:`grpo_guard.sde_step` (the same function the rollout
used, so the on-policy ratio is 1) and :func:`grpo_guard.policy_loss` gives the loss. Several
trained steps go through the network in ONE call (their states stacked, each row with its own
sigma) while the rows stay within ``max_forward_rows`` and, with ``max_forward_mb``, within that many
MiB of saved activations (measured on the run's first training call, :mod:`.forward_memory`); the
loss is the same mean over (sample, step) entries either way. Gradients are accumulated over the
trained steps and the optimizer steps once per minibatch. The first minibatch is on-policy; later
ones are off-policy, which is where the ratio leaves 1 and clipping acts.

Distributed: each process holds its own samples. Losses are scaled so that, after DDP averages the
gradients, every (sample, step) entry of the *global* minibatch has the same weight as in a single
process run with the same global batch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..backbones.base import Backbone, Conditioning
from ..config import LossConfig, TrainConfig
from ..core import SDECoefficients, grad_norm, policy_loss, sde_step
from ..sharding import any_sharded, full_tensor
from .faults import fault_point
from .forward_memory import count_saved_bytes, rows_for_budget
from .rollout import Trajectory
from .schedule import StepSchedule

__all__ = ["PreflightError", "clip_grad_norm_", "UpdateSettings", "UpdateResult", "update_policy",
           "measure_step_grad_norms", "StepBatch", "gather_step_batch", "step_batch_loss",
           "forward_chunks", "compat_chunks", "step_chunks", "row_bound", "build_optimizer"]

PREFLIGHT_HELP = (
    "the on-policy importance ratio is not 1 before the first update (max |log r| = {value:.3g} > "
    "tolerance {tol:g}). The rollout and the training pass computed different log-probs for the same "
    "transitions. Usual causes: different compute paths (e.g. CFG batched differently, autocast or "
    "dtype only in one pass, dropout or other train-mode layers active), a different batch composition "
    "between rollout and training on a nondeterministic kernel, or states stored in a lower precision "
    "than they were sampled in. Set train.preflight_tol only if you understand the source of the gap."
)


#: the loss statistics averaged over an epoch's (sample, step) entries into the metrics row
_SCALARS = ("loss", "policy_loss", "kl", "clip_frac", "clip_frac_high", "clip_frac_low", "approx_kl", "ratio_mean",
            "raw_ratio_mean")


def build_optimizer(params: Sequence[torch.nn.Parameter], t: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` with ``train``'s lr, betas, eps and weight decay. The fused kernel (one
    call for all parameters) is used where torch has it (CPU, CUDA: 4x faster than the per-parameter
    loop for the LoRA tensors of the toy world on CPU); it computes the same update. Sharded parameters
    (``train.fsdp``) take the default implementation (the fused kernel rejects their mixed state)."""
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) and not any_sharded(params)
    return torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.adam_betas), eps=t.adam_eps,
                             weight_decay=t.weight_decay, fused=fused or None)


#: accelerate distributions whose clip and optimizer step are torch's own (the gradients are complete and, with
#: DDP, already averaged when the loop clips them)
_PLAIN_DISTRIBUTIONS = ("NO", "MULTI_CPU", "MULTI_GPU", "MULTI_XPU", "MULTI_NPU", "MULTI_MLU", "MULTI_MUSA",
                        "MULTI_HPU")


def clip_grad_norm_(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """Scale the gradients of ``params`` in place so that their joint L2 norm is at most ``max_norm``;
    returns the norm before clipping (0-d; NaN / Inf when a gradient is not finite). The values of
    ``torch.nn.utils.clip_grad_norm_`` (each gradient times ``min(1, max_norm / (norm + 1e-6))``) in a
    fixed handful of operations on any device (torch's own takes a per-parameter loop on CPU)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    torch._foreach_mul_(grads, torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def _plain_optimizer(optimizer: torch.optim.Optimizer, accelerator, params: Sequence[Tensor]):
    """The torch optimizer inside accelerate's wrapper when accelerate's clip and step would only add
    per-call checks to torch's (no fp16 loss scaler, no DeepSpeed / FSDP / XLA, no sharded parameters),
    else None (then the loop goes through ``accelerator.clip_grad_norm_`` and the wrapper's step)."""
    dist = getattr(accelerator, "distributed_type", "NO")
    plain = (getattr(accelerator, "scaler", None) is None and not any_sharded(params)
             and str(getattr(dist, "value", dist)) in _PLAIN_DISTRIBUTIONS)
    return getattr(optimizer, "optimizer", optimizer) if plain else None


class PreflightError(RuntimeError):
    """The on-policy ratio check failed."""


@dataclass
class UpdateSettings:
    """What one epoch's update needs besides the tensors (built from the run config by the recipe)."""

    schedule: StepSchedule  # the sigmas and the SDE, shared with the rollout
    guidance_scale: float
    loss: LossConfig
    updates_per_epoch: int
    inner_epochs: int
    max_grad_norm: float
    preflight_tol: float | None  # None: no preflight this epoch
    max_forward_rows: int = 0  # rows per training forward call (samples x steps x CFG); 0: one step per call
    max_forward_mb: float = 0.0  # saved activations per training call, MiB (0: no memory bound)
    forward_bytes_per_row: float | None = None  # measured by an earlier update (None: measure on the first call)


@dataclass
class UpdateResult:
    """Statistics of one epoch's update.

    ``scalars``: means over all minibatches of the loss statistics. ``entries``: per-entry tensors of
    the off-policy minibatches (``step_pos``, the entry's position in the trained steps; ``advantage``,
    ``log_ratio``, ``log_ratio_used``, ``bias``), for :func:`grpo_guard.core.per_step_ratio_stats`.
    ``preflight_max_abs_log_ratio``: measured on the first minibatch when the preflight ran.
    ``forward_bytes_per_row``: the activation bytes per row of the first training call, when
    ``max_forward_mb`` is set and no earlier update measured them (the largest over the processes).
    ``grad_norm_total``: pre-clipping norm of each update.
    """

    scalars: dict[str, float] = field(default_factory=dict)
    entries: dict[str, Tensor] = field(default_factory=dict)
    preflight_max_abs_log_ratio: float | None = None
    grad_norm_total: list[float] = field(default_factory=list)
    skipped_updates: int = 0
    num_updates: int = 0
    forward_bytes_per_row: float | None = None  # measured this update (``max_forward_mb`` set, not known before)


def _velocity_fns(model: torch.nn.Module, backbone: Backbone, s: UpdateSettings):
    """``(velocity_fn, reference_fn)``: the policy's velocity through ``model`` (possibly DDP-wrapped) and,
    when the KL is on, the frozen reference model's (``backbone.reference()``), both with CFG."""
    g = s.guidance_scale

    def velocity_fn(x, sig, c):
        return model(x, sig, c, g)

    def reference_fn(x, sig, c):
        with backbone.reference():
            return backbone(x, sig, c, g)

    return velocity_fn, (reference_fn if s.loss.kl_coef > 0 else None)


def minibatch_positions(order: Tensor, num_minibatches: int) -> list[Tensor]:
    """Split a permutation of local positions into ``num_minibatches`` equal chunks."""
    return list(order.chunk(num_minibatches))


def step_chunks(num_steps: int, rows_per_step: int, max_rows: int) -> list[list[int]]:
    """Trained-step positions 0..num_steps-1 grouped for one forward call each: as many consecutive
    steps per call as fit ``max_rows`` rows (at least one); ``max_rows`` 0 = one step per call."""
    per = 1 if max_rows <= 0 else max(1, max_rows // max(rows_per_step, 1))
    return [list(range(a, min(a + per, num_steps))) for a in range(0, num_steps, per)]


def forward_chunks(idx: Tensor, num_steps: int, rows_per_sample: int, max_rows: int) -> list[tuple[Tensor, list[int]]]:
    """The training forward calls of one minibatch: ``(samples, steps)`` pairs covering every (sample,
    step) entry once. With ``max_rows`` > 0 a call holds at most ``max_rows`` rows (``rows_per_sample``
    rows per sample and step, 2 with CFG): several steps of the whole minibatch when they fit, else one
    step of a slice of the samples. ``max_rows`` 0: one step of the whole minibatch per call."""
    n = idx.numel()
    if max_rows <= 0 or n * rows_per_sample <= max_rows:
        return [(idx, js) for js in step_chunks(num_steps, n * rows_per_sample, max_rows)]
    per = max(1, max_rows // rows_per_sample)
    return [(idx[a:a + per], [j]) for j in range(num_steps) for a in range(0, n, per)]


def compat_chunks(idx: Tensor, num_steps: int, rows_per_sample: int, max_rows: int) -> list[tuple[Tensor, list[int]]]:
    """The forward calls of ``loss.official_compat``, as the official GRPO-Guard script makes them: one
    trained step of one micro-batch of samples per call, micro-batch by micro-batch, step by step. The
    micro-batch is ``max_rows // rows_per_sample`` samples (the official ``train.batch_size``; with CFG,
    ``max_forward_rows = 2 x`` it), the whole minibatch when ``max_rows`` is 0. The compat ratio's
    batch-averaged terms are averaged over exactly these calls."""
    n = idx.numel()
    per = n if max_rows <= 0 else max(1, max_rows // rows_per_sample)
    return [(idx[a:a + per], [j]) for a in range(0, n, per) for j in range(num_steps)]


def row_bound(max_rows: int, max_mb: float, bytes_per_row: float | None) -> int:
    """Rows per training call: the smaller of ``max_rows`` (0: none) and what ``max_mb`` MiB of saved
    activations hold at ``bytes_per_row`` (0 or unknown: none); 0 = no bound, one step per call."""
    mem = rows_for_budget(max_mb, bytes_per_row) if max_mb > 0 and bytes_per_row else 0
    bounds = [b for b in (max_rows, mem) if b > 0]
    return min(bounds) if bounds else 0


@dataclass
class StepBatch:
    """N (sample, step) entries of a rollout, gathered for one training forward call (rows step-major).

    Attributes:
        state: (N, *L) the stored state x_k of each entry.
        next_state: (N, *L) the stored sampled next state x_{k+1}.
        sigma, sigma_next: (N,) each entry's step.
        coefficients: the entries' rows of the schedule's SDE coefficients.
        cond: the entries' conditioning.
        old_log_prob: (N,) the rollout's log-prob of each transition.
        old_mean: (N, *L) the rollout's mean of each transition (RatioNorm's mu_old).
        advantage: (N,) each entry's sample advantage.
    """

    state: Tensor
    next_state: Tensor
    sigma: Tensor
    sigma_next: Tensor
    coefficients: SDECoefficients
    cond: Conditioning
    old_log_prob: Tensor
    old_mean: Tensor
    advantage: Tensor


def gather_step_batch(traj: Trajectory, idx: Tensor, js: Sequence[int] | Tensor, cond: Conditioning,
                      advantages: Tensor, schedule: StepSchedule) -> StepBatch:
    """The entries of stored positions ``js`` (schedule indices ``traj.step_indices[j]``) for local samples
    ``idx`` ((n,) long), rows step-major: ``len(js) * n`` rows. ``js`` is a list of positions shared by the
    samples, or an (S, n) long tensor of each sample's own position in each of S slots (random per-sample
    step subsets, ``train.timestep_sampling: random``). ``cond`` and ``advantages`` ((B,)) are the local
    batch's."""
    n = idx.numel()
    # every (step, sample) entry as a row of the stored (B * T, ...) tensors, rows step-major: (len(js), n) ->
    # rows; one index_select per stored tensor (a plain row gather, several times cheaper than indexing)
    if isinstance(js, Tensor):
        pos = js.to(idx.device)
    else:
        pos = torch.tensor(list(js), dtype=torch.long, device=idx.device)[:, None].expand(-1, n)
    rows = (idx[None, :] * traj.step_indices.numel() + pos).flatten().to(traj.latents.device)
    x = traj.latents.flatten(0, 1).index_select(0, rows)
    sigmas = schedule.sigmas
    ks = traj.step_indices.to(sigmas.device)[pos.flatten().to(sigmas.device)]
    return StepBatch(
        state=x, next_state=traj.next_latents.flatten(0, 1).index_select(0, rows),
        sigma=sigmas[ks].to(x.device), sigma_next=sigmas[ks + 1].to(x.device),
        coefficients=schedule.step_coefficients(ks, x),
        cond=cond.index(idx if len(pos) == 1 else idx.repeat(len(pos))),
        old_log_prob=traj.log_probs.flatten().index_select(0, rows),
        old_mean=traj.means.flatten(0, 1).index_select(0, rows),
        advantage=advantages.index_select(0, idx.to(advantages.device)).repeat(len(pos)))


def step_batch_loss(velocity_fn: Callable[[Tensor, Tensor, Conditioning], Tensor], batch: StepBatch,
                    schedule: StepSchedule, loss: LossConfig,
                    reference_fn: Callable[[Tensor, Tensor, Conditioning], Tensor] | None = None):
    """:func:`grpo_guard.policy_loss` of a :class:`StepBatch`: the current velocity at the stored states,
    the stored next states re-scored with :func:`grpo_guard.sde_step`; returns ``(loss, stats)``, the loss
    the mean over the batch's entries. ``reference_fn``: the frozen model's velocity, for the KL."""
    b = batch
    v = velocity_fn(b.state, b.sigma, b.cond)
    # no input checks in the hot path: the tensors come from the rollout, and a NaN / Inf velocity must
    # reach the loss so that the update is skipped (update_policy), not raise
    step = dict(next_state=b.next_state, sde_type=schedule.sde_type, reduction=loss.reduction, check_inputs=False,
                coefficients=b.coefficients)
    cur = sde_step(v, b.state, b.sigma, b.sigma_next, schedule.noise_level, **step)
    ref_mean = None
    if loss.kl_coef > 0:
        with torch.no_grad():
            v_ref = reference_fn(b.state, b.sigma, b.cond)
            ref_mean = sde_step(v_ref, b.state, b.sigma, b.sigma_next, schedule.noise_level, **step).mean
    return policy_loss(
        cur.log_prob, b.old_log_prob, b.advantage, mean=cur.mean, old_mean=b.old_mean, std=cur.std,
        dt=b.sigma_next - b.sigma, sigma=b.sigma, sigma_t=cur.sigma_t, ref_mean=ref_mean,
        ratio_mode=loss.ratio_mode, step_weight=loss.step_weight, clip_range=loss.clip_range,
        kl_coef=loss.kl_coef, reduction=loss.reduction, official_compat=loss.official_compat, check_inputs=False,
    )


def _entry_loss(velocity_fn, traj: Trajectory, idx: Tensor, js: int | Sequence[int] | Tensor, cond: Conditioning,
                advantages: Tensor, s: UpdateSettings, reference_fn):
    """Loss of trained step(s) ``js`` (positions, or per-sample positions: :func:`gather_step_batch`) for local
    samples ``idx``, in one forward call: the mean over the (step, sample) entries."""
    js = [js] if isinstance(js, int) else (js if isinstance(js, Tensor) else list(js))
    batch = gather_step_batch(traj, idx, js, cond, advantages, s.schedule)
    return step_batch_loss(velocity_fn, batch, s.schedule, s.loss, reference_fn)


def update_policy(
    *,
    model: torch.nn.Module,
    backbone: Backbone,
    optimizer: torch.optim.Optimizer,
    accelerator,
    traj: Trajectory,
    cond: Conditioning,
    advantages: Tensor,
    local_orders: Sequence[Tensor],
    settings: UpdateSettings,
    after_step: Callable[[], None] | None = None,
    on_minibatch: Callable[[], None] | None = None,
    step_positions: Tensor | None = None,
) -> UpdateResult:
    """Run ``inner_epochs x updates_per_epoch`` optimizer updates on one rollout batch.

    Args:
        model: the (possibly DDP-wrapped) backbone, called for the training forward.
        backbone: the unwrapped backbone (reference model for the KL).
        traj, cond, advantages: this process's B_local samples.
        local_orders: one permutation of local positions per inner epoch; each is split into
            ``updates_per_epoch`` equal minibatches.
        settings: see :class:`UpdateSettings`.
        after_step: called after every optimizer step (EMA update).
        step_positions: (B_local, S) long, each sample's own S stored positions to train (random per-sample
            step subsets, DanceGRPO's sampling); None trains every stored step of every sample.
    """
    s = settings
    trainable = [p for group in optimizer.param_groups for p in group["params"]]  # what the steps update
    plain = _plain_optimizer(optimizer, accelerator, trainable)
    stats = _EpochStats()
    result = UpdateResult()
    first = True
    for inner in range(s.inner_epochs):
        for idx in minibatch_positions(local_orders[inner], s.updates_per_epoch):
            preflight = first and s.preflight_tol is not None
            worst = _minibatch_gradients(model, backbone, accelerator, traj, cond, advantages, idx, s, result, stats,
                                         off_policy=not first, preflight=preflight, positions=step_positions)
            if preflight:
                _check_preflight(worst, accelerator, s.preflight_tol, optimizer, result)
            _optimizer_step(optimizer, plain, accelerator, trainable, s.max_grad_norm, result, after_step)
            if on_minibatch is not None:
                on_minibatch()
            first = False
    result.scalars = {k: v / max(stats.count, 1) for k, v in stats.sums.items()}
    result.entries = {k: torch.cat(v) for k, v in stats.entries.items()}
    return result


@dataclass
class _EpochStats:
    """The loss statistics of an epoch's update, weighted by (sample, step) entries, and the per-entry
    tensors of the off-policy minibatches."""

    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    count: int = 0
    entries: dict[str, list[Tensor]] = field(default_factory=lambda: defaultdict(list))

    def add(self, st: dict[str, Tensor], weight: int, off_policy: bool, sub: Tensor, js: Sequence[int] | Tensor,
            advantages: Tensor) -> None:
        for key, val in zip(_SCALARS, torch.stack([st[key] for key in _SCALARS]).tolist()):  # one sync
            self.sums[key] += val * weight
        self.count += weight
        if off_policy:
            self.entries["step_pos"].append(js.flatten().cpu() if isinstance(js, Tensor)
                                            else torch.tensor(js).repeat_interleave(sub.numel()))
            self.entries["advantage"].append(advantages[sub].detach().float().cpu().repeat(len(js)))
            for key in ("log_ratio", "log_ratio_used", "bias"):
                self.entries[key].append(st[key].float().cpu())


def _minibatch_gradients(model, backbone: Backbone, accelerator, traj: Trajectory, cond: Conditioning,
                         advantages: Tensor, idx: Tensor, s: UpdateSettings, result: UpdateResult,
                         stats: _EpochStats, *, off_policy: bool, preflight: bool,
                         positions: Tensor | None = None) -> float | None:
    """Accumulate the gradients of one minibatch ``idx`` (local positions) over its forward calls; returns
    the largest |log ratio| seen when ``preflight`` (NaN kept), else None. Measures the saved activations
    per row on the run's first training call (``max_forward_mb``)."""
    velocity_fn, reference_fn = _velocity_fns(model, backbone, s)
    # the entries of a sample: every stored step, or its own subset of them (``positions``)
    positions = positions.to(idx.device) if positions is not None else None
    t_count, n = (traj.step_indices.numel() if positions is None else positions.shape[1]), idx.numel()
    cfg_copies = 1 if s.guidance_scale == 1 else 2
    bytes_per_row = s.forward_bytes_per_row if result.forward_bytes_per_row is None else result.forward_bytes_per_row
    bound = row_bound(s.max_forward_rows, s.max_forward_mb, bytes_per_row)
    chunks = (compat_chunks(idx, t_count, cfg_copies, bound) if s.loss.official_compat
              else forward_chunks(idx, t_count, cfg_copies, bound))
    worst = None
    for ci, (sub, slots) in enumerate(chunks):
        js = slots if positions is None else positions[sub][:, slots].t()  # (slots, samples) own positions
        sync = nullcontext() if ci == len(chunks) - 1 else accelerator.no_sync(model)
        weight = len(slots) * sub.numel()  # (sample, step) entries in this call
        measure = s.max_forward_mb > 0 and bytes_per_row is None  # the run's first training call
        with sync:
            with (count_saved_bytes([*backbone.parameters(), *backbone.buffers()]) if measure
                  else nullcontext()) as saved, accelerator.autocast():
                loss, st = _entry_loss(velocity_fn, traj, sub, js, cond, advantages, s, reference_fn)
            if measure:  # the same bound on every process (sharded calls must match)
                per_row = torch.tensor([saved.bytes / (weight * cfg_copies)], device=accelerator.device)
                if accelerator.num_processes > 1:
                    per_row = accelerator.reduce(per_row, reduction="max")
                bytes_per_row = result.forward_bytes_per_row = float(per_row)
            if preflight:
                val = float(st["log_ratio"].abs().max())
                # NaN must survive the max (Python's max would drop it)
                worst = val if worst is None or math.isnan(val) or val > worst else worst
            accelerator.backward(loss * (weight / (t_count * n)))
        stats.add(st, weight, off_policy, sub, js, advantages)
    return worst


def _check_preflight(worst: float | None, accelerator, tol: float, optimizer, result: UpdateResult) -> None:
    """The on-policy check of the first minibatch, over all processes: raise :class:`PreflightError` when
    the largest |log ratio| exceeds ``tol``. A non-finite one (a NaN loss, whose update is skipped) leaves
    the preflight to the next epoch (``result.preflight_max_abs_log_ratio`` None)."""
    w = torch.tensor([worst], device=accelerator.device)
    w = float(accelerator.reduce(w, reduction="max") if accelerator.num_processes > 1 else w)
    if not math.isfinite(w):
        result.preflight_max_abs_log_ratio = None
        return
    result.preflight_max_abs_log_ratio = w
    if not w <= tol:
        optimizer.zero_grad(set_to_none=True)
        raise PreflightError(PREFLIGHT_HELP.format(value=w, tol=tol))


def _optimizer_step(optimizer, plain, accelerator, trainable: list[Tensor], max_grad_norm: float,
                    result: UpdateResult, after_step: Callable[[], None] | None) -> None:
    """Clip the accumulated gradients and step, or skip the update when their norm is not finite (NaN / Inf
    in the loss or the gradients: the weights are kept); clear the gradients."""
    if plain is not None:
        total = float(clip_grad_norm_(trainable, max_grad_norm))
    else:
        total = float(full_tensor(accelerator.clip_grad_norm_(trainable, max_grad_norm)))  # a DTensor if sharded
    stepper = plain if plain is not None else optimizer
    result.grad_norm_total.append(total)
    result.num_updates += 1
    if math.isfinite(total):
        stepper.step()
    else:
        result.skipped_updates += 1
    stepper.zero_grad(set_to_none=True)
    fault_point("update")
    if after_step is not None and math.isfinite(total):
        after_step()


def measure_step_grad_norms(
    backbone: Backbone,
    traj: Trajectory,
    cond: Conditioning,
    advantages: Tensor,
    settings: UpdateSettings,
    idx: Tensor,
) -> list[float]:
    """Gradient norm of each trained step's loss w.r.t. the trainable parameters (on-policy, current
    weights), on local samples ``idx``; uses ``torch.autograd.grad`` on the unwrapped backbone so that
    ``.grad`` and DDP are untouched. With sharded weights (``train.fsdp``; ``autograd.grad`` does not
    reach FSDP2's sharded parameters) each step's loss is back-propagated instead and the norm read from
    ``.grad``, which FSDP2 has averaged over the processes (every process must call this); the gradients
    are cleared after each step, so call it while ``.grad`` is empty (before the update)."""
    velocity_fn, reference_fn = _velocity_fns(backbone, backbone, settings)
    params = backbone.trainable_parameters()
    sharded = any_sharded(params)
    norms = []
    for j in range(traj.step_indices.numel()):
        loss, _ = _entry_loss(velocity_fn, traj, idx, j, cond, advantages, settings, reference_fn)
        if not sharded:
            norms.append(float(grad_norm(loss, params, retain_graph=False)))
            continue
        loss.backward()
        total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        norms.append(float(full_tensor(total)))
        for p in params:
            p.grad = None
    return norms
