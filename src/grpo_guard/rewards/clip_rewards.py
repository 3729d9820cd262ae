"""CLIP-based reward models: PickScore, CLIP score and the LAION aesthetic predictor v2.

All three run through transformers' ``CLIPModel``; the image preprocessing of ``CLIPProcessor`` is
redone in torch (no torchvision, no PIL round trip): clamp to [0, 1], grey -> RGB, resize the
shortest side to the vision tower's input size (bicubic, antialiased), center crop, normalise with
the CLIP mean/std. Weights are loaded when the reward is built (never at import) from a local
directory or a hub id; a missing model gives a one-line :class:`RewardUnavailable`.

Formulas (``cos`` = cosine similarity of the projected CLIP embeddings):

* ``pickscore``: ``scale * logit_scale.exp() * cos(text, image)``; PickScore's ``logit_scale.exp()``
  is about 100 and Flow-GRPO divides by 26, hence ``scale = 1/26`` by default (typical values 0.8-0.9).
* ``clip_score``: ``scale * cos(text, image)`` (``scale = 1``; CLIPScore's paper uses 2.5 and clips
  at 0, torchmetrics 100).
* ``aesthetic``: ``scale * MLP(image_emb / |image_emb|)`` with the LAION "improved aesthetic
  predictor" MLP (``sac+logos+ava1-l14-linearMSE.pth``) on CLIP ViT-L/14; about 1-10, most images 4-7.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import RewardContext

__all__ = ["RewardUnavailable", "CLIP_MEAN", "CLIP_STD", "clip_preprocess", "to_rgb", "load_aesthetic_mlp", "AestheticMLP",
           "ClipEmbedder", "ClipReward", "make_pickscore", "make_clip_score", "make_aesthetic",
           "PICKSCORE_MODEL", "PICKSCORE_PROCESSOR", "CLIP_L14_MODEL", "AESTHETIC_MLP_FILE", "AESTHETIC_MLP_URL"]

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_L14_MODEL = "openai/clip-vit-large-patch14"
AESTHETIC_MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_MLP_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
                     "sac+logos+ava1-l14-linearMSE.pth")

#: OpenAI CLIP normalisation, also used by the LAION OpenCLIP ViT-H/14 (PickScore's processor)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RewardUnavailable(ValueError):
    """A reward cannot be built: a package, a model or a weights file is missing. The message is one
    line saying what to install or download."""


# ----------------------------------------------------------------------------------------------
# params


class Params:
    """The params of one reward: ``get`` takes a known key (recording it), ``done`` rejects the rest."""

    def __init__(self, reward: str, params: dict | None):
        self.reward = reward
        self._left = dict(params or {})
        self._known: list[str] = []

    def get(self, key: str, default: Any = None) -> Any:
        self._known.append(key)
        return self._left.pop(key, default)

    def done(self) -> None:
        if self._left:
            raise ValueError(f"rewards: {self.reward}: unknown params {sorted(self._left)}; "
                             f"known: {', '.join(sorted(self._known))}")

    def error(self, key: str, msg: str) -> ValueError:
        return ValueError(f"rewards: {self.reward}: params.{key}: {msg}")

    def positive_int(self, key: str, default: int) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise self.error(key, f"expected a positive integer, got {v!r}")
        return v

    def number(self, key: str, default: float) -> float:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(key, f"expected a number, got {v!r}")
        return float(v)

    def device(self, ctx: RewardContext) -> torch.device:
        v = self.get("device", None)
        try:
            return torch.device(v if v is not None else ctx.device)
        except (RuntimeError, TypeError) as e:
            raise self.error("device", f"{v!r} is not a device ({e})") from None

    def dtype(self) -> torch.dtype:
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                 "float16": torch.float16, "fp16": torch.float16}
        v = self.get("dtype", "float32")
        if isinstance(v, torch.dtype) and v in names.values():
            return v
        if v not in names:
            raise self.error("dtype", f"expected one of {sorted(names)}, got {v!r}")
        return names[v]

    def triple(self, key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
        v = self.get(key, default)
        if not isinstance(v, (list, tuple)) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
            raise self.error(key, f"expected 3 numbers (R, G, B), got {v!r}")
        return tuple(float(x) for x in v)  # type: ignore[return-value]


def first_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref or os.path.isabs(ref)


def load_pretrained(loader: Callable, ref: str | os.PathLike, *, reward: str, key: str, cache_dir=None, **kwargs):
    """``loader(ref, **kwargs)`` (a ``from_pretrained``) with a one-line :class:`RewardUnavailable` when
    the model is not there: a local path that does not exist, or a hub id that is neither cached nor
    downloadable (``HF_HUB_OFFLINE=1``, no network, wrong id)."""
    ref = str(ref)
    path = Path(ref).expanduser()
    if path.exists():
        target = str(path)
    elif _looks_like_path(ref):
        raise RewardUnavailable(f"rewards: {reward}: params.{key}: local path {ref!r} does not exist")
    else:
        target = ref
    if cache_dir is not None:
        kwargs["cache_dir"] = str(Path(cache_dir).expanduser())
    try:
        return loader(target, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub, IO and format errors all become one line
        if path.exists():
            raise RewardUnavailable(f"rewards: {reward}: cannot load {ref!r} from params.{key} "
                                    f"({type(e).__name__}: {first_line(e)})") from None
        raise RewardUnavailable(f"rewards: {reward}: model {ref!r} is not available locally and could not be "
                                f"downloaded ({first_line(e, 120)}); download it first (`hf download {ref}`, "
                                f"with network) or set params.{key} to a local directory") from None


def resolve_checkpoint(reward: str, checkpoint, repo: str, filename: str, cache_dir=None) -> Path:
    """The local path of a one-file checkpoint: ``params.checkpoint`` when given, else ``filename`` of the
    hub repo ``repo`` (from the Hugging Face cache, downloaded if needed). One-line
    :class:`RewardUnavailable` when it is not there."""
    if checkpoint is None:
        # huggingface_hub and transformers: imported where used (seconds to import; runs that need none skip it)
        from huggingface_hub import hf_hub_download

        try:
            checkpoint = hf_hub_download(repo, filename,
                                         cache_dir=str(Path(cache_dir).expanduser()) if cache_dir else None)
        except Exception as e:  # noqa: BLE001
            raise RewardUnavailable(f"rewards: {reward}: checkpoint {repo}/{filename} is not available "
                                    f"({first_line(e, 120)}); download it (`hf download {repo} {filename}`, with "
                                    f"network) or set params.checkpoint to the local file") from None
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise RewardUnavailable(f"rewards: {reward}: params.checkpoint: {str(path)!r} does not exist; download "
                                f"{filename} from the hub repo {repo}")
    return path


def check_heads(what: str, heads: int, width: int) -> None:
    """Attention heads must divide the width (they are not stored in checkpoints, so they are params)."""
    if heads < 1 or width % heads:
        raise ValueError(f"{what}_heads: {heads} does not divide the {what} width {width}")


def count_blocks(keys, prefix: str) -> int:
    """The number of blocks ``PREFIX<i>.`` among ``keys`` (i = 0, 1, ...; they must be consecutive)."""
    idx = {int(k[len(prefix):].split(".")[0]) for k in keys if k.startswith(prefix)}
    if not idx or idx != set(range(len(idx))):
        raise ValueError(f"no consecutive {prefix}N blocks")
    return len(idx)


def load_exact(cls, config, weights: dict[str, Tensor], **kwargs):
    """``cls(config, **kwargs)`` (a transformers model) holding exactly ``weights``: every parameter present,
    nothing left random, no unknown key. Built on the meta device and taking the tensors over (no random
    initialisation, no second copy of a large model); position-id buffers, which are not saved, are
    rebuilt. Returned in eval mode."""
    with torch.device("meta"):
        model = cls(config, **kwargs)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or extra:
        raise ValueError(f"weights do not fit {cls.__name__} (missing {missing[:3]}, unexpected {extra[:3]})")
    model.load_state_dict({k: v.contiguous() for k, v in weights.items()}, strict=True, assign=True)
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            if not name.endswith("position_ids"):
                raise ValueError(f"{cls.__name__} buffer {name} was not restored")
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
    return model.eval()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a ``.pt`` checkpoint (``{"state_dict": ...}`` or a bare state dict), read with
    ``weights_only=True`` (no pickled code runs)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError("the file holds no state dict of tensors")
    return state


# ----------------------------------------------------------------------------------------------
# preprocessing


def to_rgb(images: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) -> (B, 3, H, W); grey images are repeated over the three channels."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (B, 1 or 3, H, W), got {tuple(images.shape)}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def clip_preprocess(images: Tensor, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> Tensor:
    """What ``CLIPProcessor`` does to an image, in torch: [0, 1] (B, C, H, W) -> normalised (B, 3, size, size).

    The shortest side is resized to ``size`` (bicubic, antialiased, values clamped to [0, 1] as an 8-bit
    image would be), then the center ``size x size`` is cropped and the CLIP mean/std applied."""
    x = to_rgb(images).float().clamp(0, 1)
    h, w = x.shape[-2:]
    if min(h, w) != size:
        nh, nw = (size, max(size, int(size * w / h))) if h <= w else (max(size, int(size * h / w)), size)
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        h, w = nh, nw
    top, left = (h - size) // 2, (w - size) // 2
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def check_reward_inputs(name: str, images: Tensor, prompts) -> list[str]:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name}: images must be a (B, 1 or 3, H, W) tensor in [0, 1], got {shape}")
    prompts = list(prompts)
    if len(prompts) != images.shape[0] or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name}: expected {images.shape[0]} prompt strings, got {len(prompts)}")
    return prompts


# ----------------------------------------------------------------------------------------------
# the CLIP embedder


class ClipEmbedder:
    """A frozen ``CLIPModel`` (+ tokenizer) giving L2-normalised float32 embeddings."""

    def __init__(self, model, tokenizer, device: torch.device, dtype: torch.dtype, image_size: int | None = None,
                 mean=CLIP_MEAN, std=CLIP_STD):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device, self.dtype = device, dtype
        self.image_size = int(image_size or model.config.vision_config.image_size)
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.mean, self.std = mean, std

    @torch.no_grad()
    def image_features(self, images: Tensor) -> Tensor:
        x = clip_preprocess(images.to(self.device), self.image_size, self.mean, self.std).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> Tensor:
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        out = self.model.text_model(input_ids=enc["input_ids"].to(self.device),
                                    attention_mask=enc["attention_mask"].to(self.device))
        return F.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.float().exp())


class ClipReward:
    """A reward from CLIP embeddings: ``score(image_emb, text_emb) -> (b,)``, applied in batches of
    ``batch_size``; each distinct prompt is encoded once per call."""

    def __init__(self, name: str, embedder: ClipEmbedder, score: Callable[[Tensor, Tensor | None], Tensor],
                 batch_size: int, uses_text: bool = True):
        self.name = name
        self.embedder = embedder
        self._score = score
        self.batch_size = batch_size
        self.uses_text = uses_text

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        prompts = check_reward_inputs(self.name, images, prompts)
        text = None
        if self.uses_text and prompts:
            unique = list(dict.fromkeys(prompts))
            feats = torch.cat([self.embedder.text_features(unique[i:i + self.batch_size])
                               for i in range(0, len(unique), self.batch_size)])
            index = {p: i for i, p in enumerate(unique)}
            text = feats[torch.tensor([index[p] for p in prompts], device=feats.device)]
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            img = self.embedder.image_features(images[i:i + self.batch_size])
            out.append(self._score(img, None if text is None else text[i:i + self.batch_size]).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


def dtype_kwarg() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` from transformers 4.56 on, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _build_embedder(p: Params, ctx: RewardContext, default_model: str, default_processor: str | None,
                    need_tokenizer: bool) -> Callable[[], ClipEmbedder]:
    """Read the shared params; return the loader, called only once every param was checked (so that a
    typo is reported before any download)."""
    from transformers import AutoTokenizer, CLIPModel

    model_ref = p.get("model", default_model)
    processor_ref = p.get("processor", default_processor) if need_tokenizer else None
    if need_tokenizer and processor_ref is None:
        processor_ref = model_ref
    device, dtype = p.device(ctx), p.dtype()
    image_size = p.get("image_size", None)
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise p.error("image_size", f"expected a positive integer, got {image_size!r}")
    mean, std = p.triple("image_mean", CLIP_MEAN), p.triple("image_std", CLIP_STD)
    cache_dir = p.get("cache_dir", None)
    return lambda: ClipEmbedder(
        load_pretrained(CLIPModel.from_pretrained, model_ref, reward=p.reward, key="model", cache_dir=cache_dir,
                        **{dtype_kwarg(): dtype}),
        load_pretrained(AutoTokenizer.from_pretrained, processor_ref, reward=p.reward, key="processor",
                        cache_dir=cache_dir) if need_tokenizer else None,
        device, dtype, image_size, mean, std)


# ----------------------------------------------------------------------------------------------
# constructors


def make_pickscore(params: dict, ctx: RewardContext) -> ClipReward:
    """PickScore: ``scale * logit_scale.exp() * cos(text, image)`` under ``yuvalkirstain/PickScore_v1``
    (CLIP ViT-H/14; tokenizer from ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``). ``scale`` defaults to
    1/26, Flow-GRPO's normalisation."""
    p = Params("pickscore", params)
    load = _build_embedder(p, ctx, PICKSCORE_MODEL, PICKSCORE_PROCESSOR, need_tokenizer=True)
    scale = p.number("scale", 1 / 26)
    batch_size = p.positive_int("batch_size", 32)
    p.done()
    emb = load()
    logit_scale = emb.logit_scale()
    return ClipReward("pickscore", emb, lambda i, t: scale * logit_scale * (i * t).sum(-1), batch_size)


def make_clip_score(params: dict, ctx: RewardContext) -> ClipReward:
    """CLIP score: ``scale * cos(text, image)`` (default model ``openai/clip-vit-large-patch14``)."""
    p = Params("clip_score", params)
    load = _build_embedder(p, ctx, CLIP_L14_MODEL, None, need_tokenizer=True)
    scale = p.number("scale", 1.0)
    batch_size = p.positive_int("batch_size", 32)
    p.done()
    return ClipReward("clip_score", load(), lambda i, t: scale * (i * t).sum(-1), batch_size)


class AestheticMLP(torch.nn.Module):
    """``layers = Sequential(Linear, Dropout(0.2), Linear, Dropout(0.2), Linear, Dropout(0.1), Linear, Linear)``
    with widths ``dims`` (768, 1024, 128, 64, 16, 1 for the released predictor); no activations."""

    def __init__(self, dims: list[int]):
        super().__init__()
        d = dims
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(d[0], d[1]), torch.nn.Dropout(0.2), torch.nn.Linear(d[1], d[2]), torch.nn.Dropout(0.2),
            torch.nn.Linear(d[2], d[3]), torch.nn.Dropout(0.1), torch.nn.Linear(d[3], d[4]), torch.nn.Linear(d[4], d[5]))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def load_aesthetic_mlp(path: str | os.PathLike) -> AestheticMLP:
    """The LAION aesthetic predictor v2 head from a state dict (``.pth`` read with
    ``torch.load(weights_only=True)``, or ``.safetensors``): ``Linear(d, 1024), Dropout(0.2),
    Linear(1024, 128), Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16), Linear(16, 1)``
    (no activations; keys ``layers.{0,2,4,6,7}.{weight,bias}``). Widths are read from the weights."""
    path = Path(path).expanduser()
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), weights_only=True, map_location="cpu")
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported in one line
        raise RewardUnavailable(f"rewards: aesthetic: cannot read the MLP weights {str(path)!r} "
                                f"({type(e).__name__}: {first_line(e)})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    linear = (0, 2, 4, 6, 7)
    expected = {f"layers.{i}.{k}" for i in linear for k in ("weight", "bias")}
    if not isinstance(sd, dict) or set(sd) != expected:
        got = sorted(sd)[:6] if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"rewards: aesthetic: {str(path)!r} is not an aesthetic-predictor MLP: expected keys "
                         f"layers.{{0,2,4,6,7}}.{{weight,bias}}, got {got}")
    dims = [sd["layers.0.weight"].shape[1]] + [sd[f"layers.{i}.weight"].shape[0] for i in linear]
    mlp = AestheticMLP(dims)
    if dims[-1] != 1:
        raise ValueError(f"rewards: aesthetic: {str(path)!r}: the last layer has {dims[-1]} outputs, expected 1")
    try:
        mlp.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as e:
        raise ValueError(f"rewards: aesthetic: {str(path)!r}: inconsistent layer shapes ({first_line(e)})") from None
    return mlp.eval().requires_grad_(False)


def make_aesthetic(params: dict, ctx: RewardContext) -> ClipReward:
    """LAION aesthetic predictor v2: ``scale * MLP(normalised CLIP ViT-L/14 image embedding)``; the
    prompt is not used. ``mlp`` is the weights file (default
    ``CACHE_DIR/aesthetic/sac+logos+ava1-l14-linearMSE.pth``)."""
    p = Params("aesthetic", params)
    load = _build_embedder(p, ctx, CLIP_L14_MODEL, None, need_tokenizer=False)
    default_mlp = Path(ctx.cache_dir).expanduser() / "aesthetic" / AESTHETIC_MLP_FILE
    mlp_path = Path(str(p.get("mlp", default_mlp))).expanduser()
    scale = p.number("scale", 1.0)
    batch_size = p.positive_int("batch_size", 32)
    p.done()
    if not mlp_path.is_file():
        raise RewardUnavailable(f"rewards: aesthetic: MLP weights {str(mlp_path)!r} not found; download "
                                f"{AESTHETIC_MLP_URL} there or set params.mlp to the .pth/.safetensors file")
    mlp = load_aesthetic_mlp(mlp_path)
    emb = load()
    proj = int(emb.model.config.projection_dim)
    if mlp.layers[0].in_features != proj:
        raise ValueError(f"rewards: aesthetic: the MLP takes {mlp.layers[0].in_features}-dim embeddings but the "
                         f"CLIP model {emb.model.name_or_path!r} gives {proj}-dim ones (use a ViT-L/14 CLIP)")
    mlp = mlp.to(emb.device)
    return ClipReward("aesthetic", emb, lambda i, t: scale * mlp(i).squeeze(-1), batch_size, uses_text=False)
