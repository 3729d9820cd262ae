"""GenEval's scoring rules, on detections already made: pure functions, no model.

GenEval (Ghosh et al. 2023) checks an image against its prompt's metadata (the layout
:mod:`grpo_guard.prompt_sets` writes): ``tag`` (the task family), ``include`` (a list of
``{"class", "count"}`` requirements, some with ``"color"`` or ``"position": [relation, i]``, the latter
relative to the ``i``-th include) and ``exclude`` (``{"class", "count"}``: that many or more is a failure).

Conventions, as in GenEval's ``evaluate_images.py``:

* a detection is a box ``(x1, y1, x2, y2)`` in pixels (y grows downwards), a confidence and optionally a
  mask; per class, detections are kept above the confidence threshold (0.3; 0.9 for the ``counting`` family),
  most confident first, at most 16 per class;
* an ``include`` requirement looks at the ``count`` most confident detections of its class: fewer than
  ``count`` fails; with ``color``, each of them must be classified as that colour; with ``position``, each
  must stand in that relation to every detection kept for the include it refers to, and that include must
  itself have passed;
* an ``exclude`` requirement fails when ``count`` or more detections of its class were kept;
* the strict verdict (GenEval's accuracy) is True when no requirement failed.

The training score (the "fraction of the prompt's requirements met" that Flow-GRPO trains on) is the mean of
one credit per requirement of the strict verdict, in [0, 1]:

* every include's count: ``min(n, count) / count``, ``n`` the number of kept detections of its class;
* with ``color``: the fraction of its ``count`` most confident detections classified as that colour (0 when
  fewer than ``count`` were found);
* with ``position``: 1 if the relation holds as in the strict rule, else 0;
* every exclude: 1 if fewer than ``count`` detections of its class were kept, else 0.

So the score is 1 exactly when the strict verdict passes, and each unmet requirement costs its share. (Flow-GRPO's
own partial-credit formula could not be consulted offline; this one is defined here and tested.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["Detection", "GenevalVerdict", "DETECTION_THRESHOLD", "COUNTING_THRESHOLD", "MAX_OBJECTS",
           "POSITION_THRESHOLD", "RELATIONS", "keep_detections", "relative_position", "judge", "check_metadata"]

#: confidence a detection needs to count (GenEval's ``threshold``)
DETECTION_THRESHOLD = 0.3
#: the same for the ``counting`` family (GenEval's ``counting_threshold``)
COUNTING_THRESHOLD = 0.9
#: at most this many detections per class are kept (GenEval's ``max_objects``)
MAX_OBJECTS = 16
#: fraction of the two boxes' summed size an offset must exceed to count (GenEval's ``position_threshold``)
POSITION_THRESHOLD = 0.1
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` ``(x1, y1, x2, y2)`` in pixels of the scored image, ``score`` in [0, 1],
    ``mask`` an optional (H, W) boolean array or tensor (used to crop the object for its colour)."""

    box: tuple[float, float, float, float]
    score: float
    mask: Any = field(default=None, compare=False, repr=False)


@dataclass
class GenevalVerdict:
    """``passed``: GenEval's strict verdict; ``score``: the partial-credit training score in [0, 1];
    ``reasons``: one line per failed requirement."""

    passed: bool
    score: float
    reasons: list[str]


def keep_detections(detections: dict[str, Sequence[Detection]], tag: str | None, *,
                    threshold: float = DETECTION_THRESHOLD, counting_threshold: float = COUNTING_THRESHOLD,
                    max_objects: int = MAX_OBJECTS) -> dict[str, list[Detection]]:
    """The detections GenEval keeps: per class, those with ``score > threshold`` (``counting_threshold`` when
    ``tag == "counting"``), most confident first, at most ``max_objects``; classes with none are dropped."""
    cut = counting_threshold if tag == "counting" else threshold
    kept = {}
    for name, dets in detections.items():
        ordered = sorted((d for d in dets if d.score > cut), key=lambda d: -d.score)[:max_objects]
        if ordered:
            kept[name] = ordered
    return kept


def relative_position(a: Detection, b: Detection, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Where ``a`` stands relative to ``b``: a subset of :data:`RELATIONS`.

    With centres ``c`` and sizes ``s = (w, h)`` of the boxes, the offset ``o = c_a - c_b`` is shrunk
    towards 0 by ``threshold * (s_a + s_b)`` per axis (overlapping objects are not beside each other); the
    shrunk offset divided by ``|o|`` gives ``(dx, dy)``, and a relation holds when its component exceeds
    0.5 (``dx < -0.5``: left of; ``dy < -0.5``: above, as y grows downwards). Empty when the shrunk offset
    vanishes."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = a.box, b.box
    offset = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2, (ay1 + ay2) / 2 - (by1 + by2) / 2)
    size = (abs(ax2 - ax1) + abs(bx2 - bx1), abs(ay2 - ay1) + abs(by2 - by1))
    shrunk = [math.copysign(max(abs(o) - threshold * s, 0.0), o) for o, s in zip(offset, size)]
    if all(abs(v) < 1e-3 for v in shrunk):
        return set()
    norm = math.hypot(*offset)
    dx, dy = shrunk[0] / norm, shrunk[1] / norm
    out = set()
    if dx < -0.5:
        out.add("left of")
    if dx > 0.5:
        out.add("right of")
    if dy < -0.5:
        out.add("above")
    if dy > 0.5:
        out.add("below")
    return out


def check_metadata(meta: dict, prompt: str = "") -> None:
    """Raise a one-line ``ValueError`` unless ``meta`` is GenEval metadata (``include`` a non-empty list of
    ``{"class": str, "count": int >= 1}``, optional ``color`` / ``position``; ``exclude`` likewise)."""
    where = f"geneval: metadata of prompt {prompt[:60]!r}" if prompt else "geneval: metadata"
    if not isinstance(meta, dict) or not isinstance(meta.get("include"), list) or not meta["include"]:
        raise ValueError(f"{where} has no 'include' list (train on GenEval prompts with their metadata: "
                         f"prompts.source: jsonl, e.g. from `grpo-guard prompts geneval`)")
    for key in ("include", "exclude"):
        for i, req in enumerate(meta.get(key, [])):
            if not (isinstance(req, dict) and isinstance(req.get("class"), str) and isinstance(req.get("count"), int)
                    and not isinstance(req.get("count"), bool) and req["count"] >= 1):
                raise ValueError(f"{where}: {key}[{i}] must be {{'class': NAME, 'count': N >= 1}}, got {req!r}")
            pos = req.get("position")
            if pos is not None and not (isinstance(pos, (list, tuple)) and len(pos) == 2 and pos[0] in RELATIONS
                                        and isinstance(pos[1], int) and 0 <= pos[1] < i):
                raise ValueError(f"{where}: {key}[{i}].position must be [relation, index of an earlier include] "
                                 f"with relation one of {', '.join(RELATIONS)}, got {pos!r}")


def judge(meta: dict, detections: dict[str, Sequence[Detection]],
          colours_of: Callable[[str, list[Detection]], list[str]], *, threshold: float = DETECTION_THRESHOLD,
          counting_threshold: float = COUNTING_THRESHOLD, max_objects: int = MAX_OBJECTS,
          position_threshold: float = POSITION_THRESHOLD) -> GenevalVerdict:
    """GenEval's verdict and the training score of one image.

    Args:
        meta: the prompt's GenEval metadata (see the module docstring).
        detections: class name -> all detections of that class (any order, unfiltered).
        colours_of: ``(class name, detections) -> one colour name per detection`` (CLIP in the reward;
            anything in tests); called only for includes with a ``color``.
    """
    check_metadata(meta)
    kept = keep_detections(detections, meta.get("tag"), threshold=threshold, counting_threshold=counting_threshold,
                           max_objects=max_objects)
    passed, reasons, credits = True, [], []
    matched: list[list[Detection] | None] = []
    for req in meta["include"]:
        name, count = req["class"], req["count"]
        found = kept.get(name, [])
        top = found[:count]
        credits.append(min(len(found), count) / count)
        ok = len(top) == count
        if not ok:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        if "color" in req:
            if ok:
                colours = colours_of(name, top)
                right = sum(c == req["color"] for c in colours)
                credits.append(right / count)
                if right < count:
                    ok = False
                    reasons.append(f"expected {req['color']} {name}>={count}, found {right} {req['color']} "
                                   f"({', '.join(colours)})")
            else:
                credits.append(0.0)
        if "position" in req:
            relation, target = req["position"]
            targets = matched[target]
            if ok and targets is None:
                ok = False
                reasons.append(f"no target for {name} to be {relation}")
            elif ok:
                wrong = next(((o, t) for o in top for t in targets
                              if relation not in relative_position(o, t, position_threshold)), None)
                if wrong is not None:
                    ok = False
                    found_rel = relative_position(*wrong, position_threshold)
                    reasons.append(f"expected {name} {relation} target, found "
                                   f"{' and '.join(sorted(found_rel)) or 'no relation'}")
            credits.append(1.0 if ok else 0.0)
        passed = passed and ok
        matched.append(top if ok else None)
    for req in meta.get("exclude", []):
        n = len(kept.get(req["class"], []))
        if n >= req["count"]:
            passed = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
        credits.append(float(n < req["count"]))
    return GenevalVerdict(passed, sum(credits) / len(credits), reasons)
