"""Built-in prompt generators for the paper's tasks, written as JSONL prompt files (:mod:`grpo_guard.prompts`).

* :func:`geneval_prompts`: GenEval's six task families over the 80 COCO classes, with GenEval's templates
  and metadata fields: ``tag`` (``single_object``, ``two_object``, ``counting``, ``colors``, ``position``,
  ``color_attr``), ``include`` (a list of ``{"class", "count"}`` with ``"color"`` or ``"position":
  [relation, index of the object it is relative to]``) and, for counting, ``exclude`` (one more than
  asked is a failure);
* :func:`ocr_prompts`: a scene with a quoted text of 1 to 4 words to render (metadata ``{"text": ...}``).

Both are seeded (``seed``) and split deterministically: a prompt belongs to ``test`` when the hash of its
text falls in the first ``test_fraction`` of the range, else to ``train``, whatever the seed, so the two
splits never share a prompt. The families (and, for OCR, the word counts) are drawn in turn, in equal
shares until a family runs out of distinct prompts (GenEval's single objects number 80, about 64 of them
in ``train``); the others then fill the rest.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

__all__ = ["COCO_CLASSES", "GENEVAL_COLORS", "GENEVAL_TAGS", "POSITIONS", "geneval_prompts", "ocr_prompts",
           "prompt_split", "write_jsonl", "GENERATORS"]

#: the 80 COCO object classes, in COCO's order (GenEval's object vocabulary)
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
#: GenEval's colour vocabulary (what its colour classifier chooses from)
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
#: relative positions: the first object's position relative to the second
POSITIONS = ("left of", "right of", "above", "below")
_NUMBERS = {2: "two", 3: "three", 4: "four"}
_PLURALS = {"person": "people", "mouse": "mice", "sheep": "sheep", "skis": "skis", "scissors": "scissors",
            "knife": "knives", "bus": "buses", "wine glass": "wine glasses", "bench": "benches", "couch": "couches",
            "sandwich": "sandwiches", "toothbrush": "toothbrushes", "tie": "ties", "tv": "tvs"}
_UNCOUNTABLE = ("skis", "scissors")  # a "photo of a skis" reads wrong: these take no article


def _a(noun: str) -> str:
    if noun in _UNCOUNTABLE:
        return noun
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _plural(noun: str) -> str:
    return _PLURALS.get(noun, noun + "s")


def _geneval_one(tag: str, rng: random.Random) -> dict:
    c1, c2 = rng.sample(COCO_CLASSES, 2)
    if tag == "single_object":
        return {"tag": tag, "include": [{"class": c1, "count": 1}], "prompt": f"a photo of {_a(c1)}"}
    if tag == "two_object":
        return {"tag": tag, "include": [{"class": c1, "count": 1}, {"class": c2, "count": 1}],
                "prompt": f"a photo of {_a(c1)} and {_a(c2)}"}
    if tag == "counting":
        n = rng.choice(sorted(_NUMBERS))
        return {"tag": tag, "include": [{"class": c1, "count": n}], "exclude": [{"class": c1, "count": n + 1}],
                "prompt": f"a photo of {_NUMBERS[n]} {_plural(c1)}"}
    if tag == "colors":
        color = rng.choice(GENEVAL_COLORS)
        return {"tag": tag, "include": [{"class": c1, "count": 1, "color": color}],
                "prompt": f"a photo of {_a(color + ' ' + c1)}"}
    if tag == "position":
        rel = rng.choice(POSITIONS)
        return {"tag": tag, "include": [{"class": c2, "count": 1}, {"class": c1, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of {_a(c1)} {rel} {_a(c2)}"}
    if tag == "color_attr":
        k1, k2 = rng.sample(GENEVAL_COLORS, 2)
        return {"tag": tag, "include": [{"class": c1, "count": 1, "color": k1}, {"class": c2, "count": 1, "color": k2}],
                "prompt": f"a photo of {_a(k1 + ' ' + c1)} and {_a(k2 + ' ' + c2)}"}
    raise ValueError(f"tag: unknown GenEval task family {tag!r}; expected one of {', '.join(GENEVAL_TAGS)}")


_OCR_SCENES = (
    'a storefront sign that reads "{}"', 'a handwritten note that says "{}"', 'a neon sign glowing with the words "{}"',
    'a coffee mug printed with "{}"', 'a chalkboard menu reading "{}"', 'a book cover titled "{}"',
    'a street sign that says "{}"', 'a birthday cake with "{}" written in icing', 'a billboard by a highway reading "{}"',
    'a t-shirt with "{}" printed on the front', 'a wooden door with "{}" carved into it', 'a poster that says "{}"',
    'a graffiti mural spelling "{}"', 'a label on a glass jar reading "{}"', 'a banner at a parade that says "{}"',
    'a road painted with the word "{}"', 'a vintage typewriter page showing "{}"', 'a sticky note with "{}"',
)
_OCR_WORDS = (
    "open", "closed", "welcome", "home", "coffee", "bakery", "sale", "exit", "stop", "hello", "world", "happy",
    "birthday", "fresh", "bread", "books", "music", "garden", "river", "north", "south", "city", "park", "love",
    "peace", "dream", "light", "night", "morning", "sunny", "blue", "green", "red", "golden", "silver", "tea",
    "pizza", "market", "station", "library", "hotel", "cafe", "bar", "shop", "local", "best", "daily", "news",
    "summer", "winter", "spring", "autumn", "quiet", "please", "thank", "you", "friends", "family", "school",
    "art", "studio", "gallery", "beach", "forest", "mountain", "ocean", "road", "trip", "time", "future",
    "energy", "power", "simple", "magic", "star", "moon", "sun", "cloud", "rain", "snow", "fire", "water",
)


def prompt_split(text: str, test_fraction: float = 0.2) -> str:
    """``"test"`` or ``"train"``: a fixed function of the prompt's text (its blake2b hash), so a split never
    depends on the seed or on which other prompts were drawn."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") / 2**64
    return "test" if h < test_fraction else "train"


#: draws in a row that give no new prompt before a kind counts as exhausted
_MAX_MISSES = 2000


def _draw(make, n: int, seed: int, split: str, test_fraction: float, kinds: tuple) -> list[dict]:
    if n < 1:
        raise ValueError(f"n: must be >= 1, got {n}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split: expected train, test or all, got {split!r}")
    rng, out, seen = random.Random(seed), [], set()
    live, turn, misses = list(kinds), 0, 0
    while live:
        kind = live[turn % len(live)]  # the kinds in turn: equal shares while each has prompts left
        row = make(kind, rng)
        text = row["prompt"]
        if text in seen or (split != "all" and prompt_split(text, test_fraction) != split):
            misses += 1
            if misses >= _MAX_MISSES:  # this kind has (almost surely) no new prompt left: the others go on
                live.remove(kind)
                misses = 0
            continue
        seen.add(text)
        out.append(row)
        turn, misses = turn + 1, 0
        if len(out) == n:
            return out
    raise ValueError(f"n: could not draw {n} distinct {split} prompts (got {len(out)}); ask for fewer")


def geneval_prompts(n: int, seed: int = 0, split: str = "train", test_fraction: float = 0.2) -> list[dict]:
    """``n`` distinct GenEval-style prompts of ``split`` (``train``, ``test`` or ``all``), the six families in
    turn; each a dict with ``prompt`` and GenEval's metadata."""
    return _draw(_geneval_one, n, seed, split, test_fraction, GENEVAL_TAGS)


def _ocr_one(words: int, rng: random.Random) -> dict:
    text = " ".join(rng.choice(_OCR_WORDS) for _ in range(words))
    text = text[0].upper() + text[1:] if rng.random() < 0.5 else text
    return {"prompt": rng.choice(_OCR_SCENES).format(text), "text": text, "words": words}


def ocr_prompts(n: int, seed: int = 0, split: str = "train", test_fraction: float = 0.2) -> list[dict]:
    """``n`` distinct text-rendering prompts of ``split``: a scene with a quoted text of 1 to 4 words (equal
    shares), metadata ``text`` (what the OCR reward compares against) and ``words``."""
    return _draw(_ocr_one, n, seed, split, test_fraction, (1, 2, 3, 4))


#: task name -> generator(n, seed, split) (``grpo-guard prompts TASK``)
GENERATORS = {"geneval": geneval_prompts, "ocr": ocr_prompts}


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write ``rows`` one JSON object per line, atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)
    return path
