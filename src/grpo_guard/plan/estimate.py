"""Per-rank memory of a GPU recipe, from its real-shape model on the meta device.

Nothing is allocated: the model is built on the meta device (:func:`~grpo_guard.plan.architectures.meta_backbone`)
and run on meta tensors, which carry shapes and dtypes only. Two measurements are made on the recipe's own
forward (``backbone.forward``, CFG included):

* **activations per training row**: the bytes of the tensors autograd saves for the backward of one row
  (one sample at one step, one CFG copy), with and without gradient checkpointing. Attention is counted as
  the memory-efficient kernel a GPU runs (its output and log-sum-exp), not the math fallback that the meta
  device would otherwise take (which saves the full attention matrix in float32);
* **rollout peak per row**: the peak of the bytes alive during a no-grad forward (every operation's output
  counted from its creation to its release).

The plan then adds, per rank: the weights (transformer, VAE, text encoders; the transformer's share with
``train.fsdp``), the trainable state (float32 weights, gradients, AdamW's two moments, the EMA), the reward
models that run on the GPU (:data:`~grpo_guard.plan.architectures.REWARD_MODEL_PARAMS`, float32), the
rollout's stored trajectories, conditioning and decoded images, and the larger of the rollout's and the
update's working memory. The budget is 90% of the GPU's memory (the rest for the CUDA context, the
allocator's fragmentation and kernels' workspaces). These are estimates; a run's first epoch logs the
measured activation bytes (``train.max_forward_mb``).
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Iterator

import diffusers
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from ..backbones.base import Conditioning
from ..backbones.flux import FluxBackbone
from ..config import RunConfig
from .architectures import REWARD_MODEL_PARAMS, meta_backbone

__all__ = ["Plan", "plan_recipe", "format_plan", "HEADROOM", "saved_bytes_per_row", "peak_bytes_per_row"]

#: fraction of the GPU memory the plan may use
HEADROOM = 0.9
GIB = 2**30


@contextmanager
def efficient_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` as the memory-efficient kernel (what a GPU runs), also on meta."""
    original = F.scaled_dot_product_attention

    def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]

    F.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class _LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by operation outputs (each from creation to release)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t._base is None:
                n = t.numel() * t.element_size()
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, n)
        return out

    def _release(self, n: int) -> None:
        self.live -= n


def _inputs(backbone, rows: int):
    """Meta inputs of ``rows`` samples for ``backbone.forward``: latents, sigmas, conditioning."""
    meta = dict(device="meta", dtype=torch.float32)
    if isinstance(backbone, FluxBackbone):
        tokens = backbone.max_sequence_length
        backbone._text_ids = torch.zeros(tokens, 3, device="meta")
        cond = Conditioning(torch.zeros(rows, tokens, 4096, **meta), torch.zeros(rows, 768, **meta))
    else:  # SD3: CLIP's 77 tokens then T5's, and the negative prompt's for CFG
        tokens = 77 + backbone.max_sequence_length
        e, p = torch.zeros(rows, tokens, 4096, **meta), torch.zeros(rows, 2048, **meta)
        cond = Conditioning(e, p, e.clone(), p.clone())
    return torch.zeros(rows, *backbone.latent_shape, **meta), torch.full((rows,), 0.5, **meta), cond


def _cfg_copies(backbone, guidance_scale: float) -> int:
    return 1 if isinstance(backbone, FluxBackbone) or guidance_scale == 1 else 2  # Flux embeds its guidance


def saved_bytes_per_row(backbone, guidance_scale: float, checkpointing: bool) -> float:
    """Bytes autograd saves for the backward per training row (one sample, one step, one CFG copy); the
    frozen weights are not counted. Each saved tensor is counted once by its base (views share it)."""
    tr = backbone.transformer
    tr.enable_gradient_checkpointing() if checkpointing else tr.disable_gradient_checkpointing()
    frozen = {id(p) for p in backbone.parameters()} | {id(b) for b in backbone.buffers()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in frozen and id(base) not in seen:
            seen[id(base)] = base  # kept alive: ids stay unique
        return t

    x, sigma, cond = _inputs(backbone, 1)
    tr.train()
    with efficient_attention(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backbone(x, sigma, cond, guidance_scale)
    return sum(t.numel() * t.element_size() for t in seen.values()) / _cfg_copies(backbone, guidance_scale)


def peak_bytes_per_row(backbone, guidance_scale: float) -> float:
    """The peak bytes alive during a no-grad forward, per row (the rollout's working memory)."""
    x, sigma, cond = _inputs(backbone, 1)
    backbone.transformer.eval()
    with torch.no_grad(), efficient_attention(), _LiveBytes() as live:
        backbone(x, sigma, cond, guidance_scale)
    return live.peak / _cfg_copies(backbone, guidance_scale)


def decode_peak_bytes(backbone) -> float:
    """The peak bytes alive while the VAE decodes one latent."""
    x = torch.zeros(1, *backbone.latent_shape, device="meta")
    with torch.no_grad(), _LiveBytes() as live:
        backbone.vae.decode(x.to(backbone.vae.dtype), return_dict=False)
    return float(live.peak)


def _bytes(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()
               if trainable is None or p.requires_grad == trainable) + \
        (sum(b.numel() * b.element_size() for b in module.buffers()) if trainable is not True else 0)


@dataclass
class Plan:
    """A recipe's plan (bytes per rank unless named otherwise); see :func:`plan_recipe`."""

    config: str
    pretrained: str
    gpus: int
    gpu_mem_gib: float
    transformer_params: int
    transformer_params_and_buffers: int
    trainable_params: int
    lora_targets_matched: int
    weights: float
    trainable_state: float
    reward_models: float
    rollout: float
    activations_per_row: float
    activations_per_row_checkpointed: float
    recompute: float
    gradient_checkpointing: bool
    max_forward_rows: int
    update: float
    total: float
    budget: float
    fits: bool
    largest_max_forward_rows: int
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def plan_recipe(cfg: RunConfig, name: str, *, gpus: int = 1, gpu_mem_gib: float = 80.0) -> Plan:
    """The per-rank memory plan of ``cfg`` (a GPU recipe) on ``gpus`` GPUs of ``gpu_mem_gib`` GiB each."""
    if cfg.backbone.name not in ("sd3", "flux"):
        raise ValueError(f"plan: the {cfg.backbone.name!r} backbone has no published architecture (sd3 and flux have)")
    if gpus < 1 or not gpu_mem_gib > 0:
        raise ValueError(f"plan: --gpus must be >= 1 and --gpu-mem > 0, got {gpus} and {gpu_mem_gib}")
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # no casting advice about meta modules
    try:
        backbone, _ = meta_backbone(cfg.backbone.name, cfg.backbone.params)
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)
    s, t = cfg.sample, cfg.train
    tr = backbone.transformer
    ckpt = bool(cfg.backbone.params.get("gradient_checkpointing", False))
    g = s.guidance_scale
    copies = _cfg_copies(backbone, g)
    notes = []

    # weights: everything the backbone holds, the transformer sharded with FSDP
    tr_bytes = _bytes(tr, trainable=False) + _bytes(tr, trainable=True)
    other = _bytes(backbone) - tr_bytes - (_bytes(backbone.reference_transformer)
                                          if backbone.reference_transformer is not None else 0)
    ref = _bytes(backbone.reference_transformer) if backbone.reference_transformer is not None else 0
    shard = gpus if (t.fsdp and gpus > 1) else 1
    weights = other + (tr_bytes + ref) / shard
    trainable = sum(p.numel() for p in backbone.trainable_parameters())
    per_trainable = 4 + 4 + 8 + (4 if t.ema_decay > 0 else 0)  # float32 weights, gradients, AdamW moments, EMA
    state = trainable * per_trainable / shard
    if not backbone.full_finetune:
        state -= trainable * 4 / shard  # the LoRA weights are already counted with the transformer
    engines = {REWARD_MODEL_PARAMS[r.name][1]: REWARD_MODEL_PARAMS[r.name][0] for r in cfg.rewards
               if r.name in REWARD_MODEL_PARAMS}
    rewards = sum(engines.values()) * 4
    if any(r.name == "ocr" for r in cfg.rewards):
        notes.append("ocr runs on the CPU (onnxruntime): no GPU memory")

    # the rollout: this rank's samples, their stored steps, conditioning and images, and one call's working memory
    local = math.ceil(s.prompts_per_epoch * s.group_size / gpus)
    latent = math.prod(backbone.latent_shape) * 4
    trained = len(cfg.trained_step_indices())
    _, _, cond = _inputs(backbone, 1)
    # prompt embeddings are kept in the text encoders' dtype
    width = next(iter(backbone.text_encoders.parameters())).element_size()
    cond_bytes = sum(v.numel() * width for v in (cond.embeds, cond.pooled, cond.null_embeds, cond.null_pooled)
                     if v is not None)
    stored = local * (latent * (3 * trained + 1) + cond_bytes + 3 * backbone.image_size**2 * 4)
    call = peak_bytes_per_row(backbone, g) * min(s.batch_size, local) * copies
    decode = decode_peak_bytes(backbone) * min(s.batch_size, local)
    rollout = stored + max(call, decode)

    # the update: saved activations of max_forward_rows rows, and with checkpointing one block recomputed
    act = saved_bytes_per_row(backbone, g, checkpointing=False)
    act_ckpt = saved_bytes_per_row(backbone, g, checkpointing=True)
    blocks = len(getattr(tr, "transformer_blocks", [])) + len(getattr(tr, "single_transformer_blocks", []))
    recompute = act / max(blocks, 1) if ckpt else 0.0
    per_row = act_ckpt if ckpt else act
    rows = t.max_forward_rows or local * trained * copies
    update = stored + rows * per_row + recompute
    static = weights + state + rewards
    total = static + max(rollout, update)
    budget = HEADROOM * gpu_mem_gib * GIB
    room = budget - static - stored - recompute
    largest = int(room // per_row) if room > 0 and static + rollout <= budget else 0
    if t.max_forward_rows == 0:
        notes.append("train.max_forward_rows is 0: one trained step of the whole minibatch per call "
                     f"({rows} rows)")
    return Plan(name, cfg.backbone.params["pretrained"], gpus, gpu_mem_gib,
                sum(p.numel() for p in tr.parameters()),
                sum(p.numel() for p in tr.parameters()) + sum(b.numel() for b in tr.buffers()), trainable,
                sum(1 for n, _ in tr.named_modules() if n.endswith(".lora_A")), weights, state, rewards, rollout, act,
                act_ckpt, recompute, ckpt, t.max_forward_rows, update, total, budget, total <= budget, largest, notes)


def format_plan(plan: Plan) -> str:
    """The plan as a short report (GiB)."""
    gib = lambda b: f"{b / GIB:6.1f} GiB"  # noqa: E731
    lines = [
        f"plan: {plan.config} ({plan.pretrained}) on {plan.gpus} x {plan.gpu_mem_gib:g} GiB",
        f"  transformer        {plan.transformer_params / 1e9:.2f} B parameters "
        f"({plan.transformer_params_and_buffers / 1e9:.2f} B with buffers)",
        f"  trainable          {plan.trainable_params / 1e6:.1f} M parameters"
        + (f" (LoRA on {plan.lora_targets_matched} layers)" if plan.lora_targets_matched else ""),
        f"  weights            {gib(plan.weights)}  (transformer, VAE, text encoders)",
        f"  trainable state    {gib(plan.trainable_state)}  (float32 gradients, AdamW moments, EMA)",
        f"  reward models      {gib(plan.reward_models)}",
        f"  rollout            {gib(plan.rollout)}  (stored trajectories, conditioning, images, one call)",
        f"  activations / row  {plan.activations_per_row / 2**20:8.1f} MiB, "
        f"{plan.activations_per_row_checkpointed / 2**20:.1f} MiB with gradient checkpointing"
        f" ({'on' if plan.gradient_checkpointing else 'off'})",
        f"  update             {gib(plan.update)}  ({plan.max_forward_rows} rows per call)",
        f"  total              {gib(plan.total)}  of {gib(plan.budget)} usable ({HEADROOM:.0%} of each GPU)",
        f"  {'fits' if plan.fits else 'DOES NOT FIT'}; the largest train.max_forward_rows that fits: "
        f"{plan.largest_max_forward_rows}",
    ]
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)
