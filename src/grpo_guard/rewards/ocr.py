"""The OCR reward, on a real OCR engine.

The default engine is RapidOCR (``rapidocr-onnxruntime``, a dependency of this package): PaddleOCR's PP-OCRv4
detection and recognition models (the engine family Flow-GRPO's reward uses) converted to ONNX and shipped
inside the wheel, so it runs offline on the CPU with nothing downloaded; a test renders text with PIL and
reads it back. PaddleOCR itself stays an option (``engine: paddleocr``; it needs ``paddlepaddle`` and
downloads its models on first use, and was not run here). Engines are imported when the reward is built,
never at import time; a missing package raises one line (:class:`RewardUnavailable`, a ``ValueError``)
saying what to install.

* ``ocr``: Flow-GRPO's OCR reward: the text between the first pair of double quotes in the prompt is
  compared with the text the OCR engine reads (spaces removed, lower-cased): 1 if it is contained,
  else ``1 - min(levenshtein, len(target)) / len(target)``; in [0, 1].

  Two readings: the engine's whole pipeline (text detection, then recognition of each line; the default,
  for real images), or ``recognition_only: true``, its recognition model alone on the whole image, the
  images of a call read as one batch (about 15 ms per 16 x 64 image on this machine kind, against 0.25-1.2
  s for the pipeline: the text world's reward, whose images are one line of text). ``charset`` (e.g.
  ``"a-z0-9"``) drops every read character outside it, after lower-casing.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
from torch import Tensor

from .base import RewardContext
from .clip_rewards import Params, RewardUnavailable, check_reward_inputs, first_line

__all__ = ["RewardUnavailable", "require", "make_ocr", "OcrReward", "levenshtein", "ocr_text_reward", "quoted_text",
           "charset_filter", "rapidocr_recognizer"]



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
                                f"({first_line(e)}); pip install {install}") from None
    except Exception as e:  # noqa: BLE001 - a broken install (e.g. a torchvision built for another torch)
        raise RewardUnavailable(f"rewards: {reward}: importing {module!r} failed ({type(e).__name__}: "
                                f"{first_line(e)}); reinstall it beside this torch: pip install {install}") from None


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


def charset_filter(charset: str | None) -> Callable[[str], str]:
    """A function that lower-cases a string and keeps only the characters of ``charset`` (ranges such as
    ``a-z`` allowed); None keeps everything (lower-cased)."""
    if charset is None:
        return str.lower
    keep = set()
    i = 0
    while i < len(charset):
        if i + 2 < len(charset) and charset[i + 1] == "-":
            keep |= {chr(c) for c in range(ord(charset[i]), ord(charset[i + 2]) + 1)}
            i += 3
        else:
            keep.add(charset[i])
            i += 1
    return lambda text: "".join(c for c in text.lower() if c in keep)


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


def _rapidocr(reward: str = "ocr"):
    """A RapidOCR engine (its models ship in the wheel), or a one-line :class:`RewardUnavailable`."""
    mod = require("rapidocr_onnxruntime", reward, "rapidocr-onnxruntime")
    try:
        return mod.RapidOCR()
    except Exception as e:  # noqa: BLE001 - a broken onnxruntime install
        raise RewardUnavailable(f"rewards: {reward}: RapidOCR could not start ({type(e).__name__}: "
                                f"{first_line(e, 120)}); reinstall it: pip install rapidocr-onnxruntime") from None


def _rapidocr_engine(lang: str) -> Callable:
    """RapidOCR's whole pipeline (text detection, then recognition of each detected line) as
    ``uint8 (H, W, 3) RGB array -> [(text, confidence), ...]``, the lines in reading order. Its shipped models
    read English and Chinese (``lang`` is not used)."""
    engine = _rapidocr()

    def read(rgb) -> list[tuple[str, float]]:
        result, _ = engine(rgb[..., ::-1].copy())  # RapidOCR takes OpenCV (BGR) arrays
        return [(str(text).strip(), float(score)) for _, text, score in (result or [])]

    return read


def rapidocr_recognizer(reward: str = "ocr") -> Callable:
    """RapidOCR's recognition model alone (PP-OCRv4 rec, no detection, no direction classifier) as
    ``[uint8 (H, W, 3) RGB array, ...] -> [(text, confidence), ...]``: each whole image is one text line, all
    read in one batch."""
    engine = _rapidocr(reward)

    def read_lines(rgbs: list) -> list[tuple[str, float]]:
        found, _ = engine.text_rec([rgb[..., ::-1].copy() for rgb in rgbs])  # OpenCV (BGR) arrays
        return [(str(text).strip(), float(score)) for text, score in found]

    return read_lines


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
                                f"{first_line(e, 120)}); run it once with network access so that it downloads "
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
    """See :func:`make_ocr`. ``engine`` reads one image (``read``), or, with ``batched``, a list of images
    (``read_lines``: one (text, confidence) per image)."""

    name = "ocr"

    def __init__(self, engine: Callable, target: str, min_confidence: float, batched: bool = False,
                 charset: str | None = None):
        self.engine, self.target, self.min_confidence, self.batched = engine, target, min_confidence, batched
        self.keep = charset_filter(charset)

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
        prompts = check_reward_inputs(self.name, images, prompts)
        metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
        targets = [self.keep(self._target(prompt, meta)) for prompt, meta in zip(prompts, metadata)]
        return torch.tensor([ocr_text_reward(text, target) for text, target in zip(self.read(images), targets)],
                            dtype=torch.float32)

    def read(self, images: Tensor) -> list[str]:
        """The texts the engine reads in ``images`` (B, C, H, W) in [0, 1], after the character filter."""
        rgb = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        rgb = rgb.expand(-1, 3, -1, -1) if rgb.shape[1] == 1 else rgb
        arrays = [img.permute(1, 2, 0).contiguous().numpy() for img in rgb]
        found = [[line] for line in self.engine(arrays)] if self.batched else [self.engine(a) for a in arrays]
        return [self.keep("".join(t for t, c in lines if c > self.min_confidence)) for lines in found]


def make_ocr(params: dict, ctx: RewardContext) -> OcrReward:
    """OCR accuracy of the rendered text (Flow-GRPO's text-rendering reward), in [0, 1].

    ``engine``: ``rapidocr`` (default: PP-OCRv4 in ONNX, offline), ``paddleocr`` (``pip install paddleocr
    paddlepaddle``), a ``module:function`` path or a callable; either way a factory ``f(lang) -> read`` or,
    for a callable given directly, the ``read`` function itself, where ``read(uint8 (H, W, 3) RGB array) ->
    [(text, confidence), ...]``.
    ``target``: ``quoted`` (default: the first "..." of the prompt), ``prompt`` (the whole prompt) or
    ``metadata:KEY``. Texts with confidence <= ``min_confidence`` (default 0) are ignored.
    ``recognition_only`` (default false): RapidOCR's recognition model alone, each image one text line, the
    images of a call in one batch (``engine`` must be ``rapidocr``). ``charset`` (default none): keep only
    these characters of the reading and the target after lower-casing, e.g. ``"a-z0-9"``."""
    p = Params("ocr", params)
    engine = p.get("engine", "rapidocr")
    lang = p.get("lang", "en")
    target = p.get("target", "quoted")
    min_confidence = p.number("min_confidence", 0.0)
    recognition_only = p.get("recognition_only", False)
    charset = p.get("charset", None)
    p.done()
    if not isinstance(recognition_only, bool):
        raise p.error("recognition_only", f"expected true or false, got {recognition_only!r}")
    if charset is not None and (not isinstance(charset, str) or not charset):
        raise p.error("charset", f"expected a non-empty string such as 'a-z0-9', got {charset!r}")
    if recognition_only:
        if engine != "rapidocr":
            raise p.error("recognition_only", f"needs engine 'rapidocr', got {engine!r}")
        return OcrReward(rapidocr_recognizer(), target, min_confidence, batched=True, charset=charset)
    if not (target in ("quoted", "prompt") or (isinstance(target, str) and target.startswith("metadata:")
                                                and len(target) > len("metadata:"))):
        raise p.error("target", f"expected 'quoted', 'prompt' or 'metadata:KEY', got {target!r}")
    if callable(engine):
        read = engine
    elif engine == "rapidocr":
        read = _rapidocr_engine(lang)
    elif engine == "paddleocr":
        read = _paddle_engine(lang)
    elif isinstance(engine, str) and ":" in engine:
        module, attr = engine.split(":", 1)
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise p.error("engine", f"cannot import {engine!r} ({first_line(e)})") from None
        read = factory(lang)
    else:
        raise p.error("engine", f"expected 'rapidocr', 'paddleocr', a 'module:function' path or a callable, "
                                f"got {engine!r}")
    return OcrReward(read, target, min_confidence, charset=charset)
