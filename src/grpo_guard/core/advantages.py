"""Group-relative advantages (GRPO): each reward compared with the other samples of its prompt.

``A_i = (r_i - mean_group(r)) / (std + eps)`` with the population std (ddof 0) of the sample's
group (``std_mode="group"``, GRPO-Guard's configs) or of the whole batch (``"global"``, Flow-GRPO's
configs), then clipped to ``[-clip_max, clip_max]``. Groups are given by integer ids, so a batch
gathered from several processes (``accelerate.gather``) works unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._checks import check_choice, check_finite

__all__ = ["STD_MODES", "GroupAdvantages", "group_advantages"]

STD_MODES = ("group", "global")


class GroupAdvantages(NamedTuple):
    """Output of :func:`group_advantages`.

    Attributes:
        advantages: (N,) advantages, float32 (float64 input stays float64).
        zero_spread_groups: 0-d int64 tensor, number of groups whose rewards are all equal
            (their advantages are exactly 0: they carry no learning signal).
        num_groups: 0-d int64 tensor, number of distinct groups.
    """

    advantages: Tensor
    zero_spread_groups: Tensor
    num_groups: Tensor


def group_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    std_mode: str = "group",
    eps: float = 1e-4,
    clip_max: float | None = 5.0,
) -> GroupAdvantages:
    """Normalise rewards within groups.

    Args:
        rewards: (N,) one scalar reward per sample.
        group_ids: (N,) integer id of each sample's group (e.g. the prompt index); ids need not be
            contiguous or sorted.
        std_mode: ``"group"`` (std of the sample's group) or ``"global"`` (std of all N rewards).
        eps: added to the std (Flow-GRPO uses 1e-4).
        clip_max: clip advantages to ``[-clip_max, clip_max]``; ``None`` disables clipping.
    """
    check_choice("std_mode", std_mode, STD_MODES)
    if rewards.ndim != 1:
        raise ValueError(f"rewards: expected shape (N,), got {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids: shape {tuple(group_ids.shape)} does not match rewards shape {tuple(rewards.shape)}")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids: expected an integer tensor, got {group_ids.dtype}")
    if rewards.numel() == 0:
        raise ValueError("rewards: empty batch")
    if not eps > 0:
        raise ValueError(f"eps: must be > 0, got {eps}")
    if clip_max is not None and not clip_max > 0:
        raise ValueError(f"clip_max: must be > 0 or None, got {clip_max}")
    check_finite("rewards", rewards)

    out_dtype = torch.promote_types(rewards.dtype, torch.float32)
    r = rewards.to(torch.float64)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max()) + 1
    count = torch.zeros(num_groups, dtype=torch.float64, device=r.device).index_add_(0, inverse, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, inverse, r) / count
    centred = r - mean[inverse]
    g_max = torch.full_like(count, -torch.inf).scatter_reduce(0, inverse, r, "amax")
    g_min = torch.full_like(count, torch.inf).scatter_reduce(0, inverse, r, "amin")
    flat = g_max == g_min

    if std_mode == "group":
        var = torch.zeros_like(count).index_add_(0, inverse, centred**2) / count
        std = var.sqrt()[inverse]
    else:
        std = r.std(unbiased=False).expand_as(r)
    adv = centred / (std + eps)
    adv = torch.where(flat[inverse], torch.zeros_like(adv), adv)
    if clip_max is not None:
        adv = adv.clamp(-clip_max, clip_max)
    return GroupAdvantages(
        adv.to(out_dtype),
        flat.sum().to(torch.int64),
        torch.tensor(num_groups, dtype=torch.int64, device=r.device),
    )
