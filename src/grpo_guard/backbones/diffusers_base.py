"""What the SD3 and Flux backbones share: a diffusers pipeline's transformer trained by LoRA (peft) or
full fine-tuning, frozen text encoders with a prompt-embedding cache, the VAE decoder, the reference
model for the KL, gradient checkpointing and the LoRA export.

A subclass (``sd3.py``, ``flux.py``) says how to encode prompts, how to call its transformer (the
velocity, with CFG or guidance embedding as ONE call) and which pipeline class loads its LoRA files.

Conventions: latents (B, C, H/8, W/8) in the VAE's scaled space (unpacked, also for Flux); sigma = t
from 1 (noise) to 0 (data), passed to the transformer as the pipeline does; images float32 in [0, 1].
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

from .base import Backbone, Conditioning

__all__ = ["DiffusersBackbone", "load_pipeline", "parse_diffusers_params", "DTYPES"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: options every diffusers backbone takes (``backbone.params``), with defaults
COMMON_PARAMS: dict = {
    "pretrained": None,            # local directory or hub id (required)
    "revision": None,
    "dtype": "float32",            # weights of the frozen parts and the transformer: float32 | bfloat16 | float16
    "lora_rank": 32,               # the paper's r 32 / alpha 64 on the attention projections
    "lora_alpha": 64,
    "lora_targets": None,          # None: the backbone's default attention projections
    "full_finetune": False,        # train every transformer weight instead of LoRA (keeps a frozen copy for the KL)
    "gradient_checkpointing": False,
    "resolution": 512,             # image side in pixels (height = width)
    "max_sequence_length": None,   # None: the backbone's default
}


def parse_diffusers_params(params: dict, extra: dict) -> dict:
    """Defaults + ``params``; unknown options raise ValueError naming them."""
    known = {**COMMON_PARAMS, **extra}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"backbone.params.{unknown[0]}: unknown option (known: {', '.join(sorted(known))})")
    out = {**known, **params}
    if not out["pretrained"]:
        raise ValueError("backbone.params.pretrained: required (a local pipeline directory or a hub id)")
    if out["dtype"] not in DTYPES:
        raise ValueError(f"backbone.params.dtype: must be one of {', '.join(DTYPES)}, got {out['dtype']!r}")
    if not isinstance(out["resolution"], int) or out["resolution"] < 16 or out["resolution"] % 16:
        raise ValueError(f"backbone.params.resolution: must be a multiple of 16, got {out['resolution']!r}")
    return out


def load_pipeline(pipeline_cls, pretrained: str, revision: str | None, dtype: torch.dtype):
    """``pipeline_cls.from_pretrained`` with a one-line error when the model cannot be found or loaded."""
    try:
        pipe = pipeline_cls.from_pretrained(pretrained, revision=revision, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (" (offline: HF_HUB_OFFLINE is set; download the model first or pass a local directory)"
                if os.environ.get("HF_HUB_OFFLINE") else "")
        raise ValueError(f"backbone.params.pretrained: cannot load {pretrained!r} as a "
                         f"{pipeline_cls.__name__}: {first}{hint}") from None
    for m in pipe.components.values():
        if isinstance(m, nn.Module):
            m.eval()
    return pipe


class DiffusersBackbone(Backbone):
    """Base of the diffusers backbones (see the module docstring).

    Args:
        pipe: the loaded pipeline (its modules are used, not copied).
        lora_rank, lora_alpha, lora_targets: LoRA settings (ignored with ``full_finetune``).
        full_finetune: train the whole transformer.
        gradient_checkpointing: enable the transformer's gradient checkpointing.
        resolution: image side in pixels.
    """

    #: the pipeline class that loads this backbone's LoRA files (``load_lora_weights``)
    pipeline_cls: type
    #: default LoRA target module names
    default_lora_targets: tuple[str, ...] = ()
    #: checkpoints and LoRA exports name the weights relative to the transformer
    state_dict_root = "transformer"

    def __init__(self, pipe, *, lora_rank: int = 32, lora_alpha: float = 64, lora_targets: Sequence[str] | None = None,
                 full_finetune: bool = False, gradient_checkpointing: bool = False, resolution: int = 512):
        super().__init__()
        self.pipe = pipe  # a plain attribute: its modules are registered below
        self.transformer = pipe.transformer
        self.vae = pipe.vae.requires_grad_(False).eval()
        self.text_encoders = nn.ModuleList([m.requires_grad_(False) for name, m in pipe.components.items()
                                            if name.startswith("text_encoder") and m is not None]).eval()
        scale = pipe.vae_scale_factor
        self.image_size = resolution
        self.latent_shape = (self.transformer.config.in_channels if not self.packed else
                             self.transformer.config.in_channels // 4, resolution // scale, resolution // scale)
        self.full_finetune = bool(full_finetune)
        self._prompt_cache: dict[str, tuple] = {}
        if self.full_finetune:
            self.transformer.requires_grad_(True)
            self.reference_transformer = copy.deepcopy(self.transformer).requires_grad_(False).eval()
        else:
            # peft and diffusers: imported where used (seconds to import; runs that need none skip it)
            from peft import LoraConfig

            if not (isinstance(lora_rank, int) and lora_rank >= 1):
                raise ValueError(f"backbone.params.lora_rank: must be an int >= 1, got {lora_rank!r}")
            targets = list(lora_targets) if lora_targets else list(self.default_lora_targets)
            self.transformer.requires_grad_(False)
            try:
                self.transformer.add_adapter(LoraConfig(r=lora_rank, lora_alpha=float(lora_alpha),
                                                        init_lora_weights="gaussian", target_modules=targets))
            except ValueError as e:
                raise ValueError(f"backbone.params.lora_targets: {targets} do not fit this transformer ({e})") from None
            for p in self.transformer.parameters():  # the LoRA weights and their AdamW state in float32, as
                if p.requires_grad:                 # Flow-GRPO keeps them: bf16 would round small updates away
                    p.data = p.data.float()
            self.reference_transformer = None
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    #: Flux packs 2 x 2 latent patches into tokens; SD3 does not
    packed: bool = False

    # -- prompts ---------------------------------------------------------------------------------
    def _encode_uncached(self, prompts: list[str]) -> tuple:
        """Per-prompt tensors (one row each), as a tuple of (n, ...) tensors."""
        raise NotImplementedError

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Encode (no gradient), caching each distinct prompt: the frozen encoders run once per prompt."""
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts: expected a list of str, got {type(prompts).__name__}")
        new = sorted({p for p in prompts if p not in self._prompt_cache})
        if new:
            with torch.no_grad():
                rows = self._encode_uncached(new)
            for i, p in enumerate(new):
                self._prompt_cache[p] = tuple(r[i:i + 1].detach() for r in rows)
        parts = list(zip(*(self._prompt_cache[p] for p in prompts)))
        return self._conditioning([torch.cat(x) for x in parts])

    def _conditioning(self, rows: list[Tensor]) -> Conditioning:
        raise NotImplementedError

    # -- the velocity ------------------------------------------------------------------------------
    def _transformer(self) -> nn.Module:
        if self._use_reference and self.reference_transformer is not None:
            return self.reference_transformer
        return self.transformer

    def _check(self, latents: Tensor, sigma: Tensor, cond: Conditioning) -> None:
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (B, {self.latent_shape}), got {tuple(latents.shape)}")
        b = latents.shape[0]
        if sigma.shape != (b,) or len(cond) != b:
            raise ValueError(f"sigma, cond: expected {b} rows, got {tuple(sigma.shape)} and {len(cond)}")

    # -- images ------------------------------------------------------------------------------------
    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) float32 in [0, 1] through the VAE (no gradient)."""
        if latents.shape[1:] != self.latent_shape:
            raise ValueError(f"latents: expected shape (B, {self.latent_shape}), got {tuple(latents.shape)}")
        cfg = self.vae.config
        with torch.no_grad():
            z = latents.to(self.vae.dtype) / cfg.scaling_factor + (cfg.shift_factor or 0.0)
            img = self.vae.decode(z, return_dict=False)[0]
        return ((img.float() + 1) / 2).clamp(0, 1)

    # -- training ----------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def fsdp_units(self) -> list[nn.Module]:
        """Each block of the transformer (``transformer_blocks``, and Flux's ``single_transformer_blocks``),
        then the transformer; the same for the frozen copy of a full fine-tune."""
        units: list[nn.Module] = []
        for tr in (self.transformer, self.reference_transformer):
            if tr is None:
                continue
            for name in ("transformer_blocks", "single_transformer_blocks"):
                units += list(getattr(tr, name, []))
            units.append(tr)
        return units

    #: only the transformer follows train() / eval(); the encoders, the VAE and the frozen copy stay in eval
    mode_module = "transformer"

    @contextmanager
    def reference(self) -> Iterator[None]:
        """``forward`` is the frozen base model inside (LoRA adapters disabled, or the frozen copy)."""
        if self.full_finetune:
            with self._reference_flag():
                yield
            return
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()
            for name, p in self.transformer.named_parameters():  # enable_adapters may touch requires_grad
                p.requires_grad_("lora_" in name)

    # -- export ------------------------------------------------------------------------------------
    def export(self, out_dir: Path, merge: bool = False) -> list[Path]:
        """Write the LoRA in the layout ``<Pipeline>.load_lora_weights(out_dir)`` loads
        (``pytorch_lora_weights.safetensors``); with ``merge`` also the whole pipeline with the LoRA fused
        into the transformer (``out_dir/merged``, loadable with ``from_pretrained``). Full fine-tuning
        exports the whole pipeline only. Returns the written paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        if not self.full_finetune:
            from peft.utils import get_peft_model_state_dict

            layers = get_peft_model_state_dict(self.transformer)
            # the adapter metadata carries lora_alpha: without it, loading assumes alpha = rank (a wrong scale)
            meta = self.transformer.peft_config["default"].to_dict()
            self.pipeline_cls.save_lora_weights(out_dir, transformer_lora_layers=layers, safe_serialization=True,
                                                transformer_lora_adapter_metadata=meta)
            written.append(out_dir / "pytorch_lora_weights.safetensors")
        if merge or self.full_finetune:
            pipe = self.pipe
            if not self.full_finetune:
                pipe = copy.copy(self.pipe)
                merged = copy.deepcopy(self.transformer)
                from peft.tuners.tuners_utils import BaseTunerLayer

                for m in merged.modules():
                    if isinstance(m, BaseTunerLayer):
                        m.merge()
                merged = _strip_lora(merged)
                pipe.register_modules(transformer=merged)
            target = out_dir / "merged" if not self.full_finetune else out_dir
            pipe.save_pretrained(target, safe_serialization=True)
            written.append(target)
        return written


def _strip_lora(model: nn.Module) -> nn.Module:
    """Replace every (merged) peft LoRA layer by its base layer; drop the peft config."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BaseTunerLayer):
                setattr(module, child_name, child.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                setattr(model, attr, False if attr.startswith("_") else None)
    return model
