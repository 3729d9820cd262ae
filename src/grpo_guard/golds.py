"""How a run's gold metrics are read: which one is the headline, which way is better, whether a value
relative to the base model means something, and whether the samples are pictures.

A run's golds come from its evaluator (set-level metrics, logged as ``gold/<metric>``) and its gold-role
rewards (per-image scores, logged as ``eval/<name>_mean``). Each of them declares how it is read with a
few optional attributes, so that a new world or reward is one declaration and the report, ``study.md``
and the run summary need no edit:

* an **evaluator** has ``higher_is_better`` (metric -> bool, required) and may have ``primary`` (the
  headline metric; ``"average"`` for the normalised average ``gold_normalized_avg``), ``true_attribute``
  (the metric that is the world's true attribute), ``average`` (the
  metrics averaged), ``raw_metrics`` (metrics whose ratio to the base model is meaningless, e.g. a base
  value at or near zero, or a drift that can be negative: they are read raw, next to the base's value)
  and ``labels`` (metric -> display name);
* a **gold reward** may have ``higher_is_better`` (bool, default True), ``normalise`` (default True),
  ``true_attribute`` (default False),
  ``same_as`` (the evaluator metric it duplicates: the reward is then not declared a second time) and
  ``label``;
* a **backbone** may have ``samples_are_images`` (default True; the spectral world's samples are mode
  coefficients, so image statistics say nothing about them).

:func:`declare_golds` turns those attributes into a :class:`GoldDeclaration`, which a run writes to
``RUN_DIR/golds.json``; :func:`read_golds` reads it back (and infers one from the logged keys for a run
directory that has none). Normalised metrics are relative to the base model: ``gold_norm/<name>`` is
value / base (base / value where lower is better), so 1 is the base model and higher is better.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["GoldMetric", "GoldDeclaration", "declare_golds", "read_golds", "infer_golds", "GOLDS_FILE",
           "AVERAGE_KEY"]

GOLDS_FILE = "golds.json"
#: the normalised average of the averaged golds (the paper's Table 1 convention)
AVERAGE_KEY = "gold_normalized_avg"


@dataclass(frozen=True)
class GoldMetric:
    """One gold metric of a run.

    ``key``: its raw key in ``metrics.jsonl`` (``gold/<metric>``, ``eval/<reward>_mean`` or
    :data:`AVERAGE_KEY`); ``norm_key``: the key of its base-relative value (``gold_norm/<name>``), or None
    when it is read raw; ``higher_is_better``: the direction of the raw value (normalised values are
    always higher-is-better); ``primary``: the headline gold; ``in_average``: part of the normalised
    average; ``true_attribute``: the world's true attribute (what the proxy is meant to measure; the
    one-screen summaries show it beside the primary gold)."""

    key: str
    label: str
    higher_is_better: bool = True
    norm_key: str | None = None
    primary: bool = False
    in_average: bool = False
    true_attribute: bool = False

    @property
    def normalised(self) -> bool:
        """True when the metric is read relative to the base model."""
        return self.norm_key is not None

    def reading_key(self, logged: Iterable[str] | None = None) -> str:
        """The key the metric is read from: its normalised key when declared (and, given ``logged``, when
        the run logged it; a base value <= 0 leaves it unlogged), else the raw key."""
        if self.norm_key is not None and (logged is None or self.norm_key in logged):
            return self.norm_key
        return self.key

    def better(self, reading_key: str) -> bool:
        """The direction of the value read from ``reading_key``: normalised values are higher-is-better."""
        return True if reading_key != self.key or self.key == AVERAGE_KEY else self.higher_is_better


@dataclass
class GoldDeclaration:
    """The gold metrics of a run, the primary one first, and whether its samples are pictures."""

    metrics: list[GoldMetric] = field(default_factory=list)
    samples_are_images: bool = True

    @property
    def primary(self) -> GoldMetric | None:
        """The headline gold (None when the run has no gold)."""
        return next((m for m in self.metrics if m.primary), self.metrics[0] if self.metrics else None)

    def readings(self, logged: Iterable[str]) -> list[tuple[GoldMetric, str]]:
        """``(metric, reading key)`` for every metric the run logged, the primary first: normalised where
        declared and logged, else raw (:meth:`GoldMetric.reading_key`)."""
        logged = set(logged)
        out = []
        for metric in self.metrics:
            key = metric.reading_key(logged)
            if key in logged:
                out.append((metric, key))
        return out

    def get(self, key: str) -> GoldMetric | None:
        """The metric whose raw or normalised key is ``key``."""
        return next((m for m in self.metrics if key in (m.key, m.norm_key)), None)

    def to_dict(self) -> dict:
        return {"samples_are_images": self.samples_are_images, "metrics": [asdict(m) for m in self.metrics]}

    @classmethod
    def from_dict(cls, d: Mapping) -> GoldDeclaration:
        """The declaration written by :meth:`to_dict`. Raises ValueError on a malformed one."""
        try:
            metrics = [GoldMetric(key=str(m["key"]), label=str(m.get("label", m["key"])),
                                  higher_is_better=bool(m.get("higher_is_better", True)),
                                  norm_key=None if m.get("norm_key") is None else str(m["norm_key"]),
                                  primary=bool(m.get("primary", False)),
                                  in_average=bool(m.get("in_average", False)),
                                  true_attribute=bool(m.get("true_attribute", False))) for m in d.get("metrics", [])]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed gold declaration ({type(e).__name__}: {e})") from None
        return cls(metrics=metrics, samples_are_images=bool(d.get("samples_are_images", True)))


def _label(name: str) -> str:
    return name.replace("_", " ")


def declare_golds(evaluator=None, gold_rewards: Mapping[str, object] | None = None, *,
                  samples_are_images: bool = True) -> GoldDeclaration:
    """The declaration of a run with this ``evaluator`` (or None) and these gold-role rewards
    (name -> reward object), from their optional attributes (see the module docstring).

    Order: the primary gold first, then the evaluator's metrics, then the gold rewards. The normalised
    average is declared when an average is formed: over the evaluator's ``average`` metrics, or, with no
    evaluator, over the normalisable gold rewards. Without a declared primary, the average is primary
    when there is one, else the first metric."""
    metrics: list[GoldMetric] = []
    primary_name = None
    covered: set[str] = set()
    has_average = False
    if evaluator is not None:
        higher = dict(evaluator.higher_is_better)
        raw = set(getattr(evaluator, "raw_metrics", ()))
        labels = dict(getattr(evaluator, "labels", {}) or {})
        average = tuple(getattr(evaluator, "average", tuple(higher)))
        has_average = any(k in higher and k not in raw for k in average)
        primary_name = getattr(evaluator, "primary", None)
        attribute_name = getattr(evaluator, "true_attribute", None)
        for k, hib in higher.items():
            metrics.append(GoldMetric(key=f"gold/{k}", label=labels.get(k, _label(k)), higher_is_better=bool(hib),
                                      norm_key=None if k in raw else f"gold_norm/{k}", primary=k == primary_name,
                                      in_average=k in average and k not in raw, true_attribute=k == attribute_name))
            covered.add(k)
    reward_metrics = []
    for name, reward in (gold_rewards or {}).items():
        if getattr(reward, "same_as", None) in covered:
            continue  # the evaluator logs the same quantity: declared once
        normalise = bool(getattr(reward, "normalise", True))
        reward_metrics.append(GoldMetric(
            key=f"eval/{name}_mean", label=str(getattr(reward, "label", None) or _label(name)),
            higher_is_better=bool(getattr(reward, "higher_is_better", True)),
            norm_key=f"gold_norm/{name}" if normalise else None, in_average=evaluator is None and normalise,
            true_attribute=bool(getattr(reward, "true_attribute", False))))
    metrics += reward_metrics
    if evaluator is None:
        has_average = any(m.in_average for m in reward_metrics)
    if has_average:
        average_metric = GoldMetric(key=AVERAGE_KEY, label="normalised gold, average", norm_key=AVERAGE_KEY,
                                    primary=primary_name in (None, "average"))
        metrics.insert(0, average_metric)
    if metrics and not any(m.primary for m in metrics):
        metrics[0] = GoldMetric(**{**asdict(metrics[0]), "primary": True})
    metrics.sort(key=lambda m: not m.primary)  # stable: the primary first, the rest in declaration order
    return GoldDeclaration(metrics=metrics, samples_are_images=samples_are_images)


def infer_golds(keys: Iterable[str]) -> GoldDeclaration:
    """A declaration for a run directory without ``golds.json``: every ``gold_norm/*`` key as a normalised
    gold (higher is better), the normalised average first when logged, then the raw ``gold/*`` metrics
    that have no normalised twin (direction unknown: taken as higher-is-better)."""
    keys = set(keys)
    metrics = []
    if AVERAGE_KEY in keys:
        metrics.append(GoldMetric(AVERAGE_KEY, "normalised gold, average", norm_key=AVERAGE_KEY, primary=True))
    for k in sorted(keys):
        if k.startswith("gold_norm/"):
            name = k.split("/", 1)[1]
            raw = f"gold/{name}" if f"gold/{name}" in keys else f"eval/{name}_mean"
            metrics.append(GoldMetric(raw, _label(name), norm_key=k))
    named = {m.key for m in metrics}
    metrics += [GoldMetric(k, _label(k.split("/", 1)[1])) for k in sorted(keys)
                if k.startswith("gold/") and k not in named]
    if metrics and not any(m.primary for m in metrics):
        metrics[0] = GoldMetric(**{**asdict(metrics[0]), "primary": True})
    return GoldDeclaration(metrics=metrics)


def read_golds(run_dir: str | Path, logged_keys: Iterable[str] = ()) -> GoldDeclaration:
    """The declaration in ``run_dir/golds.json``; inferred from ``logged_keys`` (:func:`infer_golds`)
    when the file is missing or unreadable."""
    path = Path(run_dir) / GOLDS_FILE
    try:
        return GoldDeclaration.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return infer_golds(logged_keys)
