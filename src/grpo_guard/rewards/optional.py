"""Rewards that need optional third-party packages: ImageReward, HPSv2 and OCR.

The packages are imported when the reward is built, never at import time; a missing package or
missing weights raise one line (:class:`RewardUnavailable`, a ``ValueError``) saying what to install
or download. These adapters were NOT run with the real packages or weights here (``image-reward``
and ``hpsv2`` need torchvision, which does not work beside this project's torch wheel; ``paddleocr``
needs ``paddlepaddle``); what is tested is the error path, and for OCR the scoring rule with a stand-in
OCR engine.

* ``imagereward``: ImageReward v1.0 (BLIP ViT-L + BERT cross-attention + MLP head), ``(mlp(h) - mean) / std``
  as the package computes it; images go through this project's torch preprocessing (224 px, bicubic,
  CLIP mean/std, the same as the package's torchvision transform).
* ``hpsv2``: HPS v2 / v2.1, an OpenCLIP ViT-H/14 fine-tuned on human preferences; reward = ``scale *
  cos(text, image)`` (about 0.2-0.35), the diagonal of the package's ``logits_per_image``.
* ``ocr``: Flow-GRPO's OCR reward: the text between the first pair of double quotes in the prompt is
  compared with the text the OCR engine reads (spaces removed, lower-cased): 1 if it is contained,
  else ``1 - min(levenshtein, len(target)) / len(target)``; in [0, 1].
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .base import RewardContext
from .clip_rewards import CLIP_MEAN, CLIP_STD, Params, RewardUnavailable, _check_inputs, _first_line, clip_preprocess

__all__ = ["RewardUnavailable", "require", "make_imagereward", "make_hpsv2", "make_ocr", "OcrReward", "levenshtein",
           "ocr_text_reward", "quoted_text", "HPS_REPO", "HPS_FILES", "IMAGEREWARD_REPO"]

IMAGEREWARD_REPO = "THUDM/ImageReward"
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def require(module: str, reward: str, install: str) -> Any:
    """Import ``module`` or raise a one-line :class:`RewardUnavailable` saying ``pip install {install}``."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if (e.name or "").split(".")[0] == top:
            raise RewardUnavailable(f"rewards: {reward}: needs the optional package {install.split()[0]!r}, which "
                                    f"is not installed: pip install {install}") from None
        raise RewardUnavailable(f"rewards: {reward}: importing {module!r} failed: a dependency is missing "
                                f"({_first_line(e)}); pip install {install}") from None
    except Exception as e:  # noqa: BLE001 - a broken install (e.g. a torchvision built for another torch)
        raise RewardUnavailable(f"rewards: {reward}: importing {module!r} failed ({type(e).__name__}: "
                                f"{_first_line(e)}); reinstall it beside this torch: pip install {install}") from None


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


# ----------------------------------------------------------------------------------------------
# ImageReward


class ImageRewardReward:
    name = "imagereward"

    def __init__(self, model, device: torch.device, dtype: torch.dtype, batch_size: int, scale: float):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype, self.batch_size, self.scale = device, dtype, batch_size, scale

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        prompts = _check_inputs(self.name, images, prompts)
        blip, out = self.model.blip, []
        for s in _batches(images.shape[0], self.batch_size):
            x = clip_preprocess(images[s].to(self.device), 224, CLIP_MEAN, CLIP_STD).to(self.dtype)
            text = blip.tokenizer(prompts[s], padding="max_length", truncation=True, max_length=35,
                                  return_tensors="pt").to(self.device)
            emb = blip.visual_encoder(x)
            atts = torch.ones(emb.shape[:-1], dtype=torch.long, device=self.device)
            h = blip.text_encoder(text.input_ids, attention_mask=text.attention_mask, encoder_hidden_states=emb,
                                  encoder_attention_mask=atts, return_dict=True).last_hidden_state[:, 0, :]
            r = self.model.mlp(h).float().squeeze(-1)
            out.append(self.scale * (r - self.model.mean) / self.model.std)
        return torch.cat(out).cpu() if out else torch.zeros(0)


def make_imagereward(params: dict, ctx: RewardContext) -> ImageRewardReward:
    """ImageReward v1.0 through the ``image-reward`` package (``import ImageReward``). ``model`` is
    ``ImageReward-v1.0`` (downloaded from the hub repo THUDM/ImageReward) or a local ``ImageReward.pt``;
    ``download_root`` is where the package keeps its files (default ``~/.cache/ImageReward``)."""
    p = Params("imagereward", params)
    model_ref = str(p.get("model", "ImageReward-v1.0"))
    download_root = p.get("download_root", None)
    device, dtype = p.device(ctx), p.dtype()
    batch_size = p.positive_int("batch_size", 16)
    scale = p.number("scale", 1.0)
    p.done()
    rm = require("ImageReward", "imagereward", "image-reward")
    if model_ref != "ImageReward-v1.0" and not Path(model_ref).expanduser().is_file():
        raise RewardUnavailable(f"rewards: imagereward: params.model: {model_ref!r} is neither 'ImageReward-v1.0' "
                                f"nor an existing ImageReward.pt file")
    kwargs = {"download_root": str(Path(download_root).expanduser())} if download_root else {}
    try:
        model = rm.load(str(Path(model_ref).expanduser()) if model_ref != "ImageReward-v1.0" else model_ref,
                        device=str(device), **kwargs)
    except Exception as e:  # noqa: BLE001 - download, hub and format errors become one line
        raise RewardUnavailable(f"rewards: imagereward: cannot load {model_ref!r} ({type(e).__name__}: "
                                f"{_first_line(e, 120)}); download ImageReward.pt and med_config.json from the hub "
                                f"repo {IMAGEREWARD_REPO} into params.download_root (default ~/.cache/ImageReward), "
                                f"and bert-base-uncased's tokenizer into the Hugging Face cache") from None
    return ImageRewardReward(model, device, dtype, batch_size, scale)


# ----------------------------------------------------------------------------------------------
# HPSv2


class HpsV2Reward:
    name = "hpsv2"

    def __init__(self, model, tokenizer, device: torch.device, dtype: torch.dtype, batch_size: int, scale: float):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device, self.dtype, self.batch_size, self.scale = device, dtype, batch_size, scale

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        prompts = _check_inputs(self.name, images, prompts)
        out = []
        for s in _batches(images.shape[0], self.batch_size):
            x = clip_preprocess(images[s].to(self.device), 224, CLIP_MEAN, CLIP_STD).to(self.dtype)
            img = torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
            txt = torch.nn.functional.normalize(
                self.model.encode_text(self.tokenizer(prompts[s]).to(self.device)).float(), dim=-1)
            out.append(self.scale * (img * txt).sum(-1))
        return torch.cat(out).cpu() if out else torch.zeros(0)


def make_hpsv2(params: dict, ctx: RewardContext) -> HpsV2Reward:
    """HPS v2 / v2.1 through the ``hpsv2`` package's OpenCLIP (ViT-H/14). ``checkpoint`` is a local
    ``HPS_v2.1_compressed.pt`` (read with ``weights_only=True``); by default it is fetched from the hub
    repo xswu/HPSv2 (``version``: ``v2.1`` default, or ``v2.0``)."""
    p = Params("hpsv2", params)
    version = p.get("version", "v2.1")
    if version not in HPS_FILES:
        raise p.error("version", f"expected one of {sorted(HPS_FILES)}, got {version!r}")
    checkpoint = p.get("checkpoint", None)
    device, dtype = p.device(ctx), p.dtype()
    batch_size = p.positive_int("batch_size", 16)
    scale = p.number("scale", 1.0)
    p.done()
    oc = require("hpsv2.src.open_clip", "hpsv2", "hpsv2")
    if checkpoint is None:
        from huggingface_hub import hf_hub_download

        try:
            checkpoint = hf_hub_download(HPS_REPO, HPS_FILES[version])
        except Exception as e:  # noqa: BLE001
            raise RewardUnavailable(f"rewards: hpsv2: checkpoint {HPS_REPO}/{HPS_FILES[version]} is not available "
                                    f"({_first_line(e, 120)}); download it (`hf download {HPS_REPO} "
                                    f"{HPS_FILES[version]}`) or set params.checkpoint to the local file") from None
    path = Path(str(checkpoint)).expanduser()
    if not path.is_file():
        raise RewardUnavailable(f"rewards: hpsv2: params.checkpoint: {str(path)!r} does not exist; download "
                                f"{HPS_FILES[version]} from the hub repo {HPS_REPO}")
    try:
        model = oc.create_model_and_transforms("ViT-H-14", None, precision="fp32", device="cpu", jit=False,
                                               output_dict=True)[0]
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        tokenizer = oc.get_tokenizer("ViT-H-14")
    except Exception as e:  # noqa: BLE001
        raise RewardUnavailable(f"rewards: hpsv2: cannot build the model from {str(path)!r} "
                                f"({type(e).__name__}: {_first_line(e)})") from None
    return HpsV2Reward(model, tokenizer, device, dtype, batch_size, scale)


# ----------------------------------------------------------------------------------------------
# OCR


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character, each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_text_reward(recognized: str, target: str) -> float:
    """Flow-GRPO's OCR reward: spaces removed and lower-cased, 1 if ``target`` occurs in ``recognized``,
    else ``1 - min(levenshtein, len(target)) / len(target)`` (0 for an empty target)."""
    rec = "".join(recognized.split()).lower()
    tgt = "".join(target.split()).lower()
    if not tgt:
        return 0.0
    if tgt in rec:
        return 1.0
    return 1.0 - min(levenshtein(rec, tgt), len(tgt)) / len(tgt)


def quoted_text(prompt: str) -> str:
    """The text between the first pair of double quotes (Flow-GRPO's OCR prompts: ``... "TEXT" ...``)."""
    parts = prompt.split('"')
    if len(parts) < 3:
        raise ValueError(f"ocr: prompt {prompt[:80]!r} has no quoted text to render (use params.target)")
    return parts[1]


def _paddle_engine(lang: str) -> Callable:
    """PaddleOCR (2.x ``.ocr`` or 3.x ``.predict``) as ``uint8 (H, W, 3) RGB array -> [(text, confidence)]``."""
    mod = require("paddleocr", "ocr", "paddleocr paddlepaddle")
    try:
        if hasattr(mod.PaddleOCR, "predict"):  # 3.x
            ocr = mod.PaddleOCR(lang=lang, use_doc_orientation_classify=False, use_doc_unwarping=False,
                                use_textline_orientation=False)
        else:
            ocr = mod.PaddleOCR(use_angle_cls=False, lang=lang, show_log=False)
    except Exception as e:  # noqa: BLE001 - usually its model download failing offline
        raise RewardUnavailable(f"rewards: ocr: PaddleOCR could not load its models ({type(e).__name__}: "
                                f"{_first_line(e, 120)}); run it once with network access so that it downloads "
                                f"them, or set params.engine to another 'module:function'") from None

    def read(rgb) -> list[tuple[str, float]]:
        bgr = rgb[..., ::-1].copy()  # PaddleOCR takes OpenCV (BGR) arrays
        if hasattr(ocr, "predict"):
            found = []
            for res in ocr.predict(bgr):
                found += list(zip(res["rec_texts"], (float(c) for c in res["rec_scores"])))
            return found
        result = ocr.ocr(bgr, cls=False)
        lines = (result[0] if result else None) or []
        return [(line[1][0], float(line[1][1])) for line in lines]

    return read


class OcrReward:
    name = "ocr"

    def __init__(self, engine: Callable, target: str, min_confidence: float):
        self.engine, self.target, self.min_confidence = engine, target, min_confidence

    def _target(self, prompt: str, meta: dict) -> str:
        if self.target == "quoted":
            return quoted_text(prompt)
        if self.target == "prompt":
            return prompt
        key = self.target.split(":", 1)[1]
        if key not in meta:
            raise ValueError(f"ocr: metadata has no key {key!r} (params.target = {self.target!r})")
        return str(meta[key])

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        prompts = _check_inputs(self.name, images, prompts)
        metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
        rgb = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        rgb = rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb
        out = []
        for img, prompt, meta in zip(rgb, prompts, metadata):
            found = self.engine(img.permute(1, 2, 0).contiguous().numpy())
            text = "".join(t for t, c in found if c > self.min_confidence)
            out.append(ocr_text_reward(text, self._target(prompt, meta)))
        return torch.tensor(out, dtype=torch.float32)


def make_ocr(params: dict, ctx: RewardContext) -> OcrReward:
    """OCR accuracy of the rendered text (Flow-GRPO's text-rendering reward), in [0, 1].

    ``engine``: ``paddleocr`` (default; ``pip install paddleocr paddlepaddle``), a ``module:function``
    path or a callable; either way a factory ``f(lang) -> read`` or, for a callable given directly, the
    ``read`` function itself, where ``read(uint8 (H, W, 3) RGB array) -> [(text, confidence), ...]``.
    ``target``: ``quoted`` (default: the first "..." of the prompt), ``prompt`` (the whole prompt) or
    ``metadata:KEY``. Texts with confidence <= ``min_confidence`` (default 0) are ignored."""
    p = Params("ocr", params)
    engine = p.get("engine", "paddleocr")
    lang = p.get("lang", "en")
    target = p.get("target", "quoted")
    min_confidence = p.number("min_confidence", 0.0)
    p.done()
    if not (target in ("quoted", "prompt") or (isinstance(target, str) and target.startswith("metadata:")
                                                and len(target) > len("metadata:"))):
        raise p.error("target", f"expected 'quoted', 'prompt' or 'metadata:KEY', got {target!r}")
    if callable(engine):
        read = engine
    elif engine == "paddleocr":
        read = _paddle_engine(lang)
    elif isinstance(engine, str) and ":" in engine:
        module, attr = engine.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise p.error("engine", f"cannot import {engine!r} ({_first_line(e)})") from None
        read = factory(lang)
    else:
        raise p.error("engine", f"expected 'paddleocr', a 'module:function' path or a callable, got {engine!r}")
    return OcrReward(read, target, min_confidence)
