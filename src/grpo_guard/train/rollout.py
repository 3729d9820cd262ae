"""Rollout: sample trajectories with the SDE policy and keep what the update needs.

Every random draw is per sample, seeded by (run seed, stream, epoch, global sample index), so the
trajectories do not depend on how samples are batched or split over processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..backbones.base import Conditioning
from ..core import SDECoefficients, gaussian_log_prob, sde_step
from ..core._checks import all_finite, check_finite
from ..seeding import derive_generator
from .schedule import StepSchedule

__all__ = ["Trajectory", "per_sample_noise", "step_subsets", "rollout"]


@dataclass
class Trajectory:
    """B sampled trajectories with T trained steps; latent shape L.

    Attributes:
        latents: (B, T, *L) float32 state x_k before each trained step k.
        next_latents: (B, T, *L) float32 sampled next state x_{k+1}.
        log_probs: (B, T) float32 rollout log-prob of each trained transition.
        means: (B, T, *L) float32 rollout mean of each trained transition (RatioNorm's mu_old).
        final: (B, *L) float32 final latents (sigma = 0).
        step_indices: (T,) int64 schedule index k of each trained step.
    """

    latents: Tensor
    next_latents: Tensor
    log_probs: Tensor
    means: Tensor
    final: Tensor
    step_indices: Tensor

    def __len__(self) -> int:
        return self.final.shape[0]


def per_sample_noise(seed: int, stream: str, epoch: int, global_indices: Sequence[int], num: int,
                     latent_shape: tuple[int, ...], *, initial_only: bool = False) -> Tensor:
    """(B, num, *L) standard normal noise; row i depends only on (seed, stream, epoch, global_indices[i]).

    ``initial_only``: for a sampler that uses no step noise (the ODE), draw only index 0 (the initial
    latents, the same values as a full draw) and return the other indices as views of it. torch fills a
    normal tensor in blocks of 16 values, so a shorter draw reproduces the full draw's first values only
    when a latent has a multiple of 16 elements; otherwise the full draw is made.
    """
    draw = 1 if initial_only and math.prod(latent_shape) % 16 == 0 else num
    out = torch.empty((len(global_indices), draw, *latent_shape))
    for row, i in enumerate(global_indices):  # filled in place: no per-row tensors to stack
        out[row].normal_(generator=derive_generator(seed, stream, epoch, int(i)))
    return out if draw == num else out.expand(-1, num, *latent_shape)


def step_subsets(seed: int, epoch: int, global_indices: Sequence[int], num_stored: int, per_sample: int) -> Tensor:
    """(B, per_sample) long: each sample's own random subset of its ``num_stored`` stored steps to train this
    epoch (DanceGRPO's per-sample timestep sampling), in random order; row i depends only on (seed, epoch,
    global_indices[i])."""
    return torch.stack([torch.randperm(num_stored, generator=derive_generator(seed, "timesteps", epoch, int(i)))[:per_sample]
                        for i in global_indices])


@torch.no_grad()
def rollout(
    velocity_fn: Callable[[Tensor, Tensor, Conditioning], Tensor],
    cond: Conditioning,
    noise: Tensor,
    schedule: StepSchedule,
    *,
    reduction: str = "mean",
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    on_step: Callable[[int], None] | None = None,
) -> Trajectory:
    """Sample B trajectories.

    Args:
        velocity_fn: ``(latents (b, *L), sigma (b,), cond) -> velocity``, CFG included (the backbone).
        cond: conditioning of the B samples.
        noise: (B, K + 1, *L) unit noise: index 0 is the initial latent, index k + 1 the noise of step k.
        schedule: the (K + 1,) sigmas, which steps are stochastic and which are trained (and stored).
        reduction: ``"mean"`` or ``"sum"`` over the latent dimensions for the stored log-probs.
        batch_size: samples per velocity call.
    """
    # validate once what the step checks would re-validate at every step (one device sync each)
    schedule.validate()
    bsz, num_steps = noise.shape[0], schedule.num_steps
    levels = schedule.levels()
    for index in [0, *(k + 1 for k in range(num_steps) if levels[k] > 0)]:  # the noise the sampler uses
        check_finite("noise", noise[:, index])
    trained = {k: j for j, k in enumerate(schedule.trained_steps)}
    x = noise[:, 0].to(device)
    # the stored tensors are kept per step (the states are the steps' own outputs, not copies) and stacked
    # once after the loop, and the log-probs of all trained transitions are computed then in one call:
    # the step loop runs only the network call and the step's mean and sample (fewer operations between
    # the network calls, which is where the small worlds spend their loop time)
    stored: dict[int, tuple[Tensor, Tensor, Tensor]] = {}  # trained position j -> (x_k, x_{k+1}, mean)
    # the whole schedule's step coefficients, made once, and each batch's conditioning once: the step loop
    # then runs only the per-step tensor work
    table = schedule.coefficient_table(device, x.dtype)
    step_coefs = [SDECoefficients(*c) for c in zip(*(t.unbind(0) for t in table))]
    # each step's (B,) sigma and (B, *L) noise as views made once, not per step
    step_sigmas = schedule.sigmas.to(device)[:, None].expand(-1, bsz).unbind(0)
    step_noise = noise.unbind(1)  # moved to the device one step at a time
    batches = [(slice(i, i + batch_size), cond.index(slice(i, i + batch_size))) for i in range(0, bsz, batch_size)]
    for k in range(num_steps):
        sigma = step_sigmas[k]
        if len(batches) == 1:
            v = velocity_fn(x, sigma, batches[0][1])
        else:
            v = torch.cat([velocity_fn(x[sl], sigma[sl], c) for sl, c in batches])
        a = levels[k]
        out = sde_step(v, x, sigma, step_sigmas[k + 1], a, noise=step_noise[k + 1].to(device) if a > 0 else None,
                       sde_type=schedule.sde_type, reduction=reduction, check_inputs=False,
                       coefficients=step_coefs[k], with_log_prob=False)
        if k in trained:
            stored[trained[k]] = (x, out.next_state, out.mean)
        x = out.next_state
        if on_step is not None:
            on_step(k)
    traj = _stack_trajectory(stored, x, schedule, table.std, reduction)
    # the model's output is the only input of the steps not checked above. A NaN or Inf velocity at any
    # step reaches the final state (every step is x * c_x + v * c_v + std * eps with c_x > 0, c_v = dt != 0),
    # so one check of the final state replaces a check (and a device sync) per step
    if not all_finite(x):
        bad = [int(k) for k, j in sorted(trained.items()) if not all_finite(traj.next_latents[:, j])]
        where = f" (first seen in the state after schedule step {bad[0]})" if bad else ""
        raise ValueError(f"velocity: contains NaN or Inf{where}")
    return traj


def _stack_trajectory(stored: dict[int, tuple[Tensor, Tensor, Tensor]], final: Tensor, schedule: StepSchedule,
                      step_std: Tensor, reduction: str) -> Trajectory:
    """The :class:`Trajectory` of the trained transitions ``stored`` (trained position -> (x_k, x_{k+1},
    mean), each (B, *L)), with all their log-probs in one call; ``step_std`` (K,) is each step's std."""
    bsz, lat_shape, device = final.shape[0], tuple(final.shape[1:]), final.device
    t_count = len(schedule.trained_steps)
    store = torch.get_default_dtype()  # the stored tensors' dtype (the steps compute in at least float32)
    step_indices = torch.tensor(list(schedule.trained_steps), dtype=torch.long)
    if not stored:
        empty = torch.empty((bsz, 0, *lat_shape), device=device)
        return Trajectory(empty, empty, torch.empty((bsz, 0), device=device), empty, final, step_indices)
    x_k, nxt, mean = (list(t) for t in zip(*(stored[j] for j in range(t_count))))
    nxt, mean = torch.stack(nxt, dim=1), torch.stack(mean, dim=1)
    # (B * T) rows, sample-major as stored, each with its step's std: the values the steps would give
    std_rows = step_std[step_indices.to(device)].repeat(bsz)
    log_probs = gaussian_log_prob(nxt.flatten(0, 1), mean.flatten(0, 1), std_rows, reduction).view(bsz, t_count)
    latents = torch.stack([t.to(store) for t in x_k], dim=1)
    return Trajectory(latents, nxt.to(store), log_probs.to(store), mean.to(store), final, step_indices)
