"""Sharded weights (``train.fsdp``): torch FSDP2 (``fully_shard``) over the processes of a run.

With ``train.fsdp: true`` and several processes, the loop shards the modules a backbone names in
:meth:`~grpo_guard.backbones.Backbone.fsdp_units` (the transformer's blocks, then the transformer):
every weight of those modules, frozen or trainable, becomes a ``DTensor`` of which each process holds
one slice, gathered for each block's forward and freed after it; gradients are reduce-scattered
(averaged over the processes, as DDP does). Text encoders and the VAE stay whole on every process.

FSDP2 does not reshard its root modules after a forward (it expects the backward to follow), so after
a forward without gradient (sampling, evaluation) they would keep their whole weights registered,
stale once the optimizer updates the slices. :func:`reshard` puts every sharded module back into its
sharded state; the loop calls it after each such forward.

Whatever leaves a process (checkpoints, the best-gold weights, EMA and optimizer state) is gathered
into whole tensors first (:func:`full_tensor`, a collective: every process must call it, in the same
order), so a checkpoint of a sharded run is the same file as an unsharded one and loads into either;
loading slices the whole tensors again (:func:`shard_like`). The helpers are no-ops on plain tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
__all__ = ["is_sharded", "full_tensor", "shard_like", "shard_modules", "reshard", "any_sharded",
           "full_optimizer_state", "load_optimizer_state"]


def is_sharded(t) -> bool:
    """True for a ``DTensor`` (a sharded parameter, gradient or optimizer state)."""
    return isinstance(t, DTensor)


def any_sharded(params: Iterable[Tensor]) -> bool:
    return any(is_sharded(p) for p in params)


def full_tensor(t: Tensor) -> Tensor:
    """A detached whole copy of ``t``: gathered from every process for a ``DTensor`` (collective), a clone
    otherwise."""
    t = t.detach()
    return t.full_tensor() if is_sharded(t) else t.clone()


def shard_like(full: Tensor, like: Tensor) -> Tensor:
    """``full`` (a whole tensor, the same on every process) laid out as ``like``: this process's slice as a
    ``DTensor`` with ``like``'s mesh and placements when ``like`` is sharded; ``full`` itself otherwise."""
    if not is_sharded(like):
        return full

    return distribute_tensor(full.to(device=like.device, dtype=like.dtype), like.device_mesh, like.placements)


def shard_modules(units: Sequence[nn.Module], world: int, device: torch.device) -> None:
    """``fully_shard`` each module of ``units`` over a 1-D mesh of ``world`` processes, in order (inner
    modules first, then the modules that contain them: each takes the weights its units did not)."""
    if not units:
        raise ValueError("train.fsdp: the backbone named no modules to shard")
    mesh = init_device_mesh(device.type, (world,))
    for unit in units:
        fully_shard(unit, mesh=mesh)


def reshard(module: nn.Module) -> None:
    """Free the whole weights of every FSDP2 module in ``module`` and register its slices again (no-op
    for a module without sharded parts)."""
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """``optimizer.state_dict()`` with every sharded state tensor gathered whole (collective)."""
    sd = optimizer.state_dict()  # its per-parameter dicts are the live state: copy, never write into them
    state = {}
    for pid in sorted(sd["state"]):  # the same order on every process
        st = sd["state"][pid]
        state[pid] = {key: full_tensor(st[key]) if is_sharded(st[key]) else st[key] for key in sorted(st)}
    return {**sd, "state": state}


def load_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """``optimizer.load_state_dict(sd)`` for a state saved whole: the per-parameter tensors of sharded
    parameters are sliced back into their layout."""
    optimizer.load_state_dict(sd)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if not is_sharded(p):
                continue
            st = optimizer.state.get(p, {})
            for key, value in list(st.items()):
                if torch.is_tensor(value) and not is_sharded(value) and tuple(value.shape) == tuple(p.shape):
                    st[key] = shard_like(value, p)
