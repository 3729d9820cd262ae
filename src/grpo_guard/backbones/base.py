"""The backbone interface: what the trainer needs from a generator, and nothing more.

A backbone is an ``nn.Module`` wrapping a flow-matching velocity network (toy net, SD3, Flux) with
its frozen text encoder(s) and decoder. The trainer only calls the methods below, so the same
training loop serves every model. Adding a backbone = one new file + one line in
``grpo_guard.backbones.BACKBONES``.

Conventions: latents follow the flow-matching convention of :mod:`grpo_guard.core` (sigma = t from
1 = noise to 0 = data); ``sigma`` arguments are (B,) float tensors; images are float32 in [0, 1],
shape (B, C, H, W).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ..core import flow_sigmas
from ..sharding import full_tensor, shard_like
__all__ = ["Conditioning", "Backbone", "set_training_mode"]


@dataclass
class Conditioning:
    """Encoded prompts, one row per sample. Backbones may leave fields they do not use as ``None``.

    Attributes:
        embeds: (B, L, E) token embeddings (SD3: CLIP + T5 concatenated; Flux: T5).
        pooled: (B, P) pooled embedding (SD3, Flux: CLIP pooled), or None.
        null_embeds, null_pooled: the same for the unconditional / negative prompt used by
            classifier-free guidance, or None when the backbone does not use CFG.
    """

    embeds: Tensor
    pooled: Tensor | None = None
    null_embeds: Tensor | None = None
    null_pooled: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def _map(self, fn) -> Conditioning:
        return Conditioning(**{f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                               for f in fields(self)})

    def index(self, idx: Tensor | slice) -> Conditioning:
        """Rows ``idx`` of every field: a slice, a boolean mask, or non-negative integer positions (gathered
        with ``index_select``)."""
        if isinstance(idx, Tensor) and idx.dim() == 1 and idx.dtype in (torch.int64, torch.int32):
            return self._map(lambda t: t.index_select(0, idx.to(t.device)))  # a row gather, cheaper than t[idx]
        return self._map(lambda t: t[idx])

    def to(self, device: torch.device | str) -> Conditioning:
        return self._map(lambda t: t.to(device))

    def repeat_interleave(self, repeats: int) -> Conditioning:
        return self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        first = items[0]
        return Conditioning(**{f.name: (None if getattr(first, f.name) is None
                                        else torch.cat([getattr(c, f.name) for c in items]))
                               for f in fields(first)})


def set_training_mode(module: nn.Module, mode: bool) -> None:
    """``module.train(mode)``, the same flags set, in a plain walk over ``_modules``: a module whose class
    keeps ``nn.Module.train`` has its flag set directly, one that overrides ``train`` is switched by its own
    method (as ``nn.Module.train`` would call it), subtree included. ``nn.Module.train`` costs about 5 us
    per module through ``__setattr__`` and the ``children()`` generator: 0.6 ms for the 111 modules of the
    small toy net with its LoRA wrappers, against about 0.08 ms here (2 CPU threads)."""
    if type(module).train is not _MODULE_TRAIN:
        module.train(mode)
        return
    object.__setattr__(module, "training", mode)  # what nn.Module.__setattr__ does for a plain attribute
    for child in module._modules.values():
        if child is not None:
            set_training_mode(child, mode)


_MODULE_TRAIN = nn.Module.train


class Backbone(nn.Module):
    """Base class of every generator the trainer can train.

    Subclasses implement the abstract methods; ``forward`` is the velocity prediction so that the
    whole backbone can be wrapped by DDP (``accelerator.prepare``): frozen parts have
    ``requires_grad=False`` and are ignored by gradient synchronisation.
    """

    #: per-sample latent shape, e.g. (16, 16, 16)
    latent_shape: tuple[int, ...]
    #: whether the decoded samples are pictures (image statistics then mean something; grpo_guard/golds.py)
    samples_are_images: bool = True

    # -- prompts -------------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode prompts (no gradient), including the null conditioning used by CFG."""
        raise NotImplementedError

    def encode_unique_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """:meth:`encode_prompts` for a batch with repeated prompts (a GRPO group repeats its prompt
        ``group_size`` times): each distinct prompt is encoded once and its row is reused, so the text
        encoders see ``len(set(prompts))`` rows instead of ``len(prompts)``. One row per input prompt."""
        first: dict[str, int] = {}
        for p in prompts:
            first.setdefault(p, len(first))
        if len(first) == len(prompts):
            return self.encode_prompts(prompts)
        cond = self.encode_prompts(list(first))
        return cond.index(torch.tensor([first[p] for p in prompts], device=cond.embeds.device))

    # -- the velocity ------------------------------------------------------------------------
    def forward(self, latents: Tensor, sigma: Tensor, cond: Conditioning, guidance_scale: float) -> Tensor:
        """Velocity (B, *latent_shape) at ``latents`` (B, *latent_shape), ``sigma`` (B,).

        With ``guidance_scale > 1`` the conditional and unconditional predictions are computed in ONE
        batched call and combined as ``v_u + w (v_c - v_u)``; the result is the same function in the
        rollout and in training (same path, so the on-policy ratio is 1).
        """
        raise NotImplementedError

    # -- the schedule -------------------------------------------------------------------------
    def sigmas(self, num_steps: int, shift: float) -> Tensor:
        """The (num_steps + 1,) sigma grid from 1 to 0 that sampling and training use: the static-shift
        grid by default (SD3); Flux overrides it with its resolution-dependent shift."""
        return flow_sigmas(num_steps, shift)

    # -- images --------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """Final latents (B, *latent_shape) -> images (B, C, H, W) float32 in [0, 1] (no gradient)."""
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters RL updates (LoRA weights, or the whole velocity network)."""
        return [p for p in self.parameters() if p.requires_grad]

    #: name of the submodule that ``train()`` / ``eval()`` switch (the trained network); its siblings
    #: (encoders, VAE, frozen copies) are put in eval once when the backbone is built and stay there.
    #: None: nn.Module's walk over every module.
    mode_module: str | None = None

    def train(self, mode: bool = True) -> Backbone:
        """Switch the training mode of :attr:`mode_module` only (the loop switches twice an epoch, and
        nn.Module's default walks every module of the encoders and the VAE each time), with
        :func:`set_training_mode`."""
        if not isinstance(mode, bool):
            raise ValueError(f"mode: expected a bool, got {mode!r}")
        object.__setattr__(self, "training", mode)
        switched = self._modules.values() if self.mode_module is None else [getattr(self, self.mode_module)]
        for module in switched:
            if module is not None:
                set_training_mode(module, mode)
        return self

    #: set inside :meth:`_reference_flag`; backbones that keep a frozen copy (or, like the spectral one,
    #: switch a correction off) read it in ``forward``
    _use_reference: bool = False

    @contextmanager
    def _reference_flag(self) -> Iterator[None]:
        """Set ``_use_reference`` for the duration (restored after, also when nested)."""
        prev, self._use_reference = self._use_reference, True
        try:
            yield
        finally:
            self._use_reference = prev

    @contextmanager
    def reference(self) -> Iterator[None]:
        """Within this context ``forward`` is the frozen reference model (for the KL): e.g. LoRA
        adapters disabled. Backbones that fully fine-tune keep a frozen copy."""
        raise NotImplementedError

    #: name of the submodule whose parameter names are the keys of :meth:`trainable_state_dict` (``""``:
    #: the backbone itself); the diffusers backbones use ``"transformer"``, the names LoRA files carry
    state_dict_root: str = ""

    def _trainable_named_parameters(self) -> dict[str, nn.Parameter]:
        root = self.get_submodule(self.state_dict_root)
        names = {id(p) for p in self.trainable_parameters()}
        return {k: v for k, v in root.named_parameters() if id(v) in names}

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The trainable weights only (what a checkpoint or a LoRA export holds), as whole tensors, named
        relative to :attr:`state_dict_root`. With sharded weights (``train.fsdp``) this gathers them:
        every process must call it."""
        return {k: full_tensor(v) for k, v in self._trainable_named_parameters().items()}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load whole tensors (from :meth:`trainable_state_dict`) into the trainable weights, sliced into
        this process's shard when they are sharded. Exactly the trainable weights must be given."""
        params = self._trainable_named_parameters()
        missing, unknown = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unknown:
            raise ValueError(f"state: missing keys {missing[:5]}, unknown keys {unknown[:5]}")
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(shard_like(v, params[k]))

    # -- sharding ----------------------------------------------------------------------------------
    def fsdp_units(self) -> list[nn.Module]:
        """The modules ``train.fsdp`` shards, inner ones first (e.g. each transformer block, then the
        transformer). Each must be called through its own ``forward``; modules used by calling their
        submodules directly (text encoders, a VAE's decoder) must not be listed."""
        raise NotImplementedError(f"backbone {type(self).__name__} does not support train.fsdp")
