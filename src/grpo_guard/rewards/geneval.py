"""The GenEval reward, in-process: Mask2Former and CLIP through transformers, GenEval's rules, no mmdet.

GenEval detects objects with a Mask2Former instance-segmentation model (through mmdet, which is what its
users cannot install) and names each object's colour with CLIP zero-shot. Here:

* **Detection**: ``transformers.Mask2FormerForUniversalSegmentation`` with COCO instance classes (default
  ``facebook/mask2former-swin-small-coco-instance``, GenEval's backbone size). Input as mmdet's test
  pipeline: shortest side resized to ``resolution`` (800) with the longest at most ``max_size`` (1333),
  ImageNet mean/std, zero-padded to a multiple of 32. Output as mmdet's Mask2Former instance
  post-processing (:func:`instance_detections`): the ``max_per_image`` (100) best (query, class) pairs of
  the class softmax, each scored ``class probability x mean sigmoid inside its binary mask``, the box
  being the mask's extent.
* **Colour**: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``, the weights of GenEval's OpenCLIP
  ``ViT-L-14`` / ``openai``): the object is cut out with its mask over a grey (#999999) background,
  cropped to its box, and classified among :data:`~grpo_guard.prompt_sets.GENEVAL_COLORS` by the cosine to
  a class embedding per colour, the normalised mean of three normalised prompt embeddings ("a photo of a
  {colour} {object}", "a photo of a {colour}-colored {object}", "a photo of a {colour} object").
* **Rules**: :mod:`grpo_guard.rewards.geneval_rules`.

Two registered rewards share one engine (built once per process for the same params, and a batch scored
by both is detected once): ``geneval`` returns the partial-credit training score in [0, 1] (a proxy), and
``geneval_strict`` GenEval's strict pass, 0 or 1 (its mean over an evaluation set is GenEval's accuracy).
Whether this detector's scores equal mmdet's checkpoint on GenEval's prompts has not been measured (no
weights can be downloaded where this was written); docs/gpu.md gives the command that measures it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..prompt_sets import COCO_CLASSES, GENEVAL_COLORS
from .base import RewardContext
from .clip_rewards import (ClipEmbedder, Params, RewardUnavailable, check_reward_inputs, dtype_kwarg, first_line,
                           clip_preprocess, load_pretrained)
from .geneval_rules import (COUNTING_THRESHOLD, DETECTION_THRESHOLD, MAX_OBJECTS, POSITION_THRESHOLD, Detection,
                            GenevalVerdict, check_metadata, judge)

__all__ = ["GENEVAL_DETECTOR", "GENEVAL_CLIP", "IMAGENET_MEAN", "IMAGENET_STD", "COLOUR_TEMPLATES", "BACKGROUND_GREY",
           "detector_input", "instance_detections", "class_names", "object_crop", "Mask2FormerDetector",
           "ClipColourClassifier", "GenevalEngine", "GenevalReward", "make_geneval", "make_geneval_strict"]

GENEVAL_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
GENEVAL_CLIP = "openai/clip-vit-large-patch14"
#: mmdet's ImageNet normalisation (of 0-255 pixels), as fractions
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
COLOUR_TEMPLATES = ("a photo of a {colour} {object}", "a photo of a {colour}-colored {object}",
                    "a photo of a {colour} object")
#: the background an object is cut out onto before its colour is classified (GenEval's "#999")
BACKGROUND_GREY = 0x99 / 255


def detector_input(images: Tensor, resolution: int, max_size: int, divisor: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """mmdet's test-time input: (B, C, H, W) in [0, 1] -> ((B, 3, Hp, Wp) normalised and zero-padded, (h, w)).

    The image is resized (bilinear) so that its shorter side is ``resolution`` unless its longer side would
    then exceed ``max_size`` (then the longer side is ``max_size``); ``(h, w)`` is that size, and ``Hp``,
    ``Wp`` are it rounded up to a multiple of ``divisor``, the padding being zeros after normalisation."""
    x = images.float().clamp(0, 1)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    H, W = x.shape[-2:]
    scale = min(resolution / min(H, W), max_size / max(H, W))
    h, w = max(1, int(H * scale + 0.5)), max(1, int(W * scale + 0.5))
    if (h, w) != (H, W):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    hp, wp = math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor
    return F.pad(x, (0, wp - w, 0, hp - h)), (h, w)


def instance_detections(class_logits: Tensor, mask_logits: Tensor, max_per_image: int = 100):
    """mmdet's Mask2Former instance post-processing of one image.

    Args:
        class_logits: (Q, C + 1) per-query class logits, the last column "no object".
        mask_logits: (Q, H, W) per-query mask logits already at the scored image's size.
        max_per_image: how many (query, class) pairs are kept, by class probability.

    Returns:
        ``(labels, scores, boxes, masks)``: (K,) class indices, (K,) scores = class probability x the mean
        sigmoid of the mask logits inside the binary mask (``logit > 0``), (K, 4) boxes ``(x1, y1, x2, y2)``
        = the binary mask's extent (x2, y2 exclusive; zeros for an empty mask), (K, H, W) boolean masks;
        K = min(max_per_image, Q * C), ordered by class probability.
    """
    q, c1 = class_logits.shape
    probs = class_logits.float().softmax(-1)[:, :-1].flatten()
    top, index = probs.topk(min(max_per_image, probs.numel()))
    labels, query = index % (c1 - 1), index // (c1 - 1)
    logits = mask_logits[query].float()
    masks = logits > 0
    mask_score = (logits.sigmoid() * masks).flatten(1).sum(1) / (masks.flatten(1).sum(1) + 1e-6)
    boxes = torch.zeros(len(query), 4)
    rows, cols = masks.any(2), masks.any(1)  # (K, H), (K, W)
    for k in torch.nonzero(rows.any(1)).flatten().tolist():
        ys, xs = torch.nonzero(rows[k]).flatten(), torch.nonzero(cols[k]).flatten()
        boxes[k] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return labels, top * mask_score.to(top.device), boxes, masks


class Mask2FormerDetector:
    """A frozen transformers Mask2Former: ``detect(images) -> [{class name: [Detection]}]`` per image, boxes and
    masks in the pixels of ``images``. All ``max_per_image`` detections are returned (GenEval's thresholds are
    applied by the rules)."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype, *, resolution: int = 800,
                 max_size: int = 1333, max_per_image: int = 100, batch_size: int = 4):
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        self.resolution, self.max_size, self.max_per_image = resolution, max_size, max_per_image
        self.batch_size = batch_size
        self.class_names = class_names(model.config.id2label)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[dict[str, list[Detection]]]:
        out = []
        H, W = images.shape[-2:]
        for i in range(0, images.shape[0], self.batch_size):
            x, (h, w) = detector_input(images[i:i + self.batch_size].to(self.device), self.resolution, self.max_size)
            res = self.model(pixel_values=x.to(self.dtype))
            masks = F.interpolate(res.masks_queries_logits.float(), size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)[..., :h, :w]
            masks = F.interpolate(masks, size=(H, W), mode="bilinear", align_corners=False)
            for cls_logits, mask_logits in zip(res.class_queries_logits, masks):
                labels, scores, boxes, bin_masks = instance_detections(cls_logits, mask_logits, self.max_per_image)
                found: dict[str, list[Detection]] = {}
                for lab, s, box, m in zip(labels.tolist(), scores.tolist(), boxes.tolist(), bin_masks.cpu()):
                    found.setdefault(self.class_names[lab], []).append(Detection(tuple(box), s, m))
                out.append(found)
        return out


def class_names(id2label: dict) -> list[str]:
    """The model's class names by index, lower-cased with ``-`` / ``_`` as spaces; every one of GenEval's 80
    COCO classes must be among them (a one-line ``ValueError`` names those missing)."""
    n = len(id2label)
    names = [" ".join(str(id2label.get(i, id2label.get(str(i), ""))).lower().replace("-", " ").replace("_", " ")
                      .split()) for i in range(n)]
    missing = [c for c in COCO_CLASSES if c not in names]
    if missing:
        raise ValueError(f"the detector's classes lack {len(missing)} of GenEval's COCO classes "
                         f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}): use a COCO "
                         f"instance-segmentation checkpoint")
    return names


class ClipColourClassifier:
    """CLIP zero-shot colour of detected objects (see the module docstring); one class embedding matrix
    per object class, built on first use."""

    def __init__(self, embedder: ClipEmbedder, colours=GENEVAL_COLORS, templates=COLOUR_TEMPLATES):
        self.embedder, self.colours, self.templates = embedder, tuple(colours), tuple(templates)
        self._heads: dict[str, Tensor] = {}

    def head(self, object_name: str) -> Tensor:
        """(n_colours, dim): per colour, the normalised mean of its templates' normalised text embeddings."""
        if object_name not in self._heads:
            texts = [t.format(colour=c, object=object_name) for c in self.colours for t in self.templates]
            emb = self.embedder.text_features(texts).view(len(self.colours), len(self.templates), -1)
            self._heads[object_name] = F.normalize(emb.mean(1), dim=-1)
        return self._heads[object_name]

    @torch.no_grad()
    def __call__(self, image: Tensor, object_name: str, detections: list[Detection]) -> list[str]:
        """``image`` (C, H, W) in [0, 1]; one colour name per detection."""
        if not detections:
            return []
        side = self.embedder.image_size  # CLIP's resize and centre crop per crop; normalised by the embedder
        batch = torch.cat([clip_preprocess(object_crop(image, d)[None], side, mean=(0, 0, 0), std=(1, 1, 1))
                           for d in detections])
        feats = self.embedder.image_features(batch)
        pick = (feats @ self.head(object_name).to(feats.device).t()).argmax(-1)
        return [self.colours[i] for i in pick.tolist()]


def object_crop(image: Tensor, det: Detection) -> Tensor:
    """The object cut out over :data:`BACKGROUND_GREY` with its mask (when it has one), cropped to its box
    (at least 1 x 1 pixel): (3, h, w) in [0, 1]."""
    img = image.float().clamp(0, 1)
    img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
    if det.mask is not None:
        mask = torch.as_tensor(det.mask, device=img.device).bool()
        img = torch.where(mask[None], img, torch.full_like(img, BACKGROUND_GREY))
    H, W = img.shape[-2:]
    x1, y1, x2, y2 = det.box
    x1, y1 = min(max(int(x1), 0), W - 1), min(max(int(y1), 0), H - 1)
    x2, y2 = max(min(int(math.ceil(x2)), W), x1 + 1), max(min(int(math.ceil(y2)), H), y1 + 1)
    return img[:, y1:y2, x1:x2]


class GenevalEngine:
    """Detector + colour classifier + rules; :meth:`verdicts` scores a batch, remembering the last one so that
    ``geneval`` and ``geneval_strict`` on the same images detect once."""

    def __init__(self, detector: Mask2FormerDetector, colours: Callable[[Tensor, str, list[Detection]], list[str]],
                 *, threshold: float = DETECTION_THRESHOLD, counting_threshold: float = COUNTING_THRESHOLD,
                 max_objects: int = MAX_OBJECTS, position_threshold: float = POSITION_THRESHOLD):
        self.detector, self.colours = detector, colours
        self.rules = dict(threshold=threshold, counting_threshold=counting_threshold, max_objects=max_objects,
                          position_threshold=position_threshold)
        self._last: tuple[str, list[GenevalVerdict]] | None = None

    def verdicts(self, images: Tensor, prompts: list[str], metadata: list[dict]) -> list[GenevalVerdict]:
        for p, m in zip(prompts, metadata):
            check_metadata(m, p)
        key = _batch_key(images, prompts, metadata)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        found = self.detector.detect(images)
        out = [judge(m, dets, lambda name, ds, img=img: self.colours(img, name, ds), **self.rules)
               for img, m, dets in zip(images, metadata, found)]
        self._last = (key, out)
        return out


def _batch_key(images: Tensor, prompts: list[str], metadata: list[dict]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str((tuple(images.shape), images.dtype)).encode())
    h.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([prompts, metadata], sort_keys=True, default=str).encode())
    return h.hexdigest()


class GenevalReward:
    """``geneval`` (the training score) or ``geneval_strict`` (the strict pass as 0/1), per image."""

    def __init__(self, name: str, engine: GenevalEngine, strict: bool):
        self.name, self.engine, self.strict = name, engine, strict

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Tensor:
        prompts = check_reward_inputs(self.name, images, prompts)
        metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
        verdicts = self.engine.verdicts(images, prompts, metadata)
        return torch.tensor([float(v.passed) if self.strict else v.score for v in verdicts], dtype=torch.float32)


#: engines built in this process, by their params (``geneval`` and ``geneval_strict`` share one)
_ENGINES: dict[str, GenevalEngine] = {}


def _engine(p: Params, ctx: RewardContext) -> GenevalEngine:
    # transformers: imported where used (seconds to import; runs that need none skip it)
    from transformers import AutoTokenizer, CLIPModel, Mask2FormerForUniversalSegmentation

    detector_ref = p.get("detector", GENEVAL_DETECTOR)
    clip_ref = p.get("clip", GENEVAL_CLIP)
    device, dtype = p.device(ctx), p.dtype()
    resolution = p.positive_int("resolution", 800)
    max_size = p.positive_int("max_size", 1333)
    max_per_image = p.positive_int("max_per_image", 100)
    batch_size = p.positive_int("batch_size", 4)
    rules = dict(threshold=p.number("threshold", DETECTION_THRESHOLD),
                 counting_threshold=p.number("counting_threshold", COUNTING_THRESHOLD),
                 max_objects=p.positive_int("max_objects", MAX_OBJECTS),
                 position_threshold=p.number("position_threshold", POSITION_THRESHOLD))
    cache_dir = p.get("cache_dir", None)
    p.done()
    for key in ("threshold", "counting_threshold"):
        if not 0 <= rules[key] < 1:
            raise p.error(key, f"expected a confidence in [0, 1), got {rules[key]}")
    key = json.dumps([detector_ref, clip_ref, str(device), str(dtype), resolution, max_size, max_per_image,
                      batch_size, rules, cache_dir], default=str)
    if key in _ENGINES:
        return _ENGINES[key]
    model = load_pretrained(Mask2FormerForUniversalSegmentation.from_pretrained, detector_ref, reward=p.reward,
                            key="detector", cache_dir=cache_dir, **{dtype_kwarg(): dtype})
    try:
        detector = Mask2FormerDetector(model, device, dtype, resolution=resolution, max_size=max_size,
                                       max_per_image=max_per_image, batch_size=batch_size)
    except ValueError as e:
        raise RewardUnavailable(f"rewards: {p.reward}: params.detector {detector_ref!r}: {first_line(e)}") from None
    clip = ClipEmbedder(
        load_pretrained(CLIPModel.from_pretrained, clip_ref, reward=p.reward, key="clip", cache_dir=cache_dir,
                        **{dtype_kwarg(): dtype}),
        load_pretrained(AutoTokenizer.from_pretrained, clip_ref, reward=p.reward, key="clip", cache_dir=cache_dir),
        device, dtype)
    engine = GenevalEngine(detector, ClipColourClassifier(clip), **rules)
    _ENGINES[key] = engine
    return engine


def make_geneval(params: dict, ctx: RewardContext) -> GenevalReward:
    """GenEval's training score (partial credit, in [0, 1]) of each image against its prompt's metadata.

    Params: ``detector`` (a Mask2Former COCO instance checkpoint, hub id or local directory; default
    ``facebook/mask2former-swin-small-coco-instance``), ``clip`` (default ``openai/clip-vit-large-patch14``),
    ``resolution`` / ``max_size`` (800 / 1333), ``max_per_image`` (100), ``batch_size`` (4), GenEval's
    ``threshold`` (0.3), ``counting_threshold`` (0.9), ``max_objects`` (16), ``position_threshold`` (0.1),
    ``device``, ``dtype``, ``cache_dir``."""
    return GenevalReward("geneval", _engine(Params("geneval", params), ctx), strict=False)


def make_geneval_strict(params: dict, ctx: RewardContext) -> GenevalReward:
    """GenEval's strict verdict (1 if every requirement is met, else 0); its mean is GenEval's accuracy.
    The same params as ``geneval``; with the same params both share one engine."""
    return GenevalReward("geneval_strict", _engine(Params("geneval_strict", params), ctx), strict=True)
