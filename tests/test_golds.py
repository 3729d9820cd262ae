"""The gold declarations (grpo_guard.golds): what each world declares, how normalisation follows it, and
the round trip through golds.json."""

import json
from types import SimpleNamespace

import pytest

from grpo_guard.golds import AVERAGE_KEY, GoldDeclaration, declare_golds, infer_golds, read_golds
from grpo_guard.rewards import RewardContext, build_evaluator, build_reward
from grpo_guard.train.evaluate import normalise_gold


def keys(decl: GoldDeclaration) -> list[str]:
    return [m.key for m in decl.metrics]


def test_the_spectral_world_reads_its_true_attribute_raw_and_once(tmp_path):
    ctx = RewardContext(tmp_path, "cpu", image_size=8)
    evaluator = build_evaluator("spectral_gold", {}, ctx)
    rewards = {name: build_reward(name, {}, ctx) for name in ("spectral_attribute", "spectral_exploit")}
    decl = declare_golds(evaluator, rewards, samples_are_images=False)
    # the rewards duplicate the evaluator's attribute and exploit: declared once; nothing normalised (base near 0)
    assert keys(decl) == ["gold/attribute", "gold/exploit", "gold/drift_lf", "gold/drift_hf"]
    assert decl.primary.key == "gold/attribute" and decl.primary.label == "true attribute g"
    assert not any(m.normalised for m in decl.metrics) and not decl.samples_are_images
    assert [m.higher_is_better for m in decl.metrics] == [True, False, False, False]
    base = {"gold/attribute": 0.01, "gold/exploit": 0.02, "gold/drift_lf": 0.5, "gold/drift_hf": 1.0}
    assert normalise_gold(base, base, decl) == {}  # no gold_norm/* key: none would mean anything
    # without the evaluator, the rewards are the golds (still raw); the exploit reward is lower-is-better
    alone = declare_golds(None, rewards)
    assert keys(alone) == ["eval/spectral_attribute_mean", "eval/spectral_exploit_mean"]
    assert alone.primary.key == "eval/spectral_attribute_mean" and not alone.metrics[1].higher_is_better


def test_the_digits_world_headlines_the_normalised_average(tmp_path):
    evaluator = SimpleNamespace(higher_is_better={"accuracy": True, "frechet": False, "recall": True},
                                average=("accuracy", "frechet"), primary="average")
    aesthetic = SimpleNamespace()  # a gold reward that declares nothing: normalised, higher is better
    decl = declare_golds(evaluator, {"hidden": aesthetic})
    assert keys(decl) == [AVERAGE_KEY, "gold/accuracy", "gold/frechet", "gold/recall", "eval/hidden_mean"]
    assert decl.primary.key == AVERAGE_KEY
    assert [m.in_average for m in decl.metrics] == [False, True, True, False, False]
    base = {"gold/accuracy": 0.8, "gold/frechet": 10.0, "gold/recall": 0.5, "eval/hidden_mean": 2.0}
    now = {"gold/accuracy": 0.4, "gold/frechet": 20.0, "gold/recall": 0.5, "eval/hidden_mean": 3.0}
    out = normalise_gold(now, base, decl)
    assert out == pytest.approx({"gold_norm/accuracy": 0.5, "gold_norm/frechet": 0.5, "gold_norm/recall": 1.0,
                                 "gold_norm/hidden": 1.5, AVERAGE_KEY: 0.5})  # lower-is-better FD: base / value


def test_gold_rewards_alone_are_averaged_and_a_declared_direction_is_kept():
    lower = SimpleNamespace(higher_is_better=False)
    decl = declare_golds(None, {"a": SimpleNamespace(), "size": lower, "raw": SimpleNamespace(normalise=False)})
    assert keys(decl) == [AVERAGE_KEY, "eval/a_mean", "eval/size_mean", "eval/raw_mean"]
    out = normalise_gold({"eval/a_mean": 1.0, "eval/size_mean": 4.0, "eval/raw_mean": 9.0},
                         {"eval/a_mean": 2.0, "eval/size_mean": 2.0, "eval/raw_mean": 3.0}, decl)
    assert out == pytest.approx({"gold_norm/a": 0.5, "gold_norm/size": 0.5, AVERAGE_KEY: 0.5})
    assert declare_golds(None, {}).metrics == [] and declare_golds(None, {}).primary is None


def test_a_declared_primary_and_the_reading_key():
    evaluator = SimpleNamespace(higher_is_better={"x": True, "y": False}, primary="y", raw_metrics=("x",))
    decl = declare_golds(evaluator)
    assert keys(decl) == ["gold/y", AVERAGE_KEY, "gold/x"]  # the primary first; y alone is averaged
    y = decl.primary
    assert y.reading_key({"gold/y", "gold_norm/y"}) == "gold_norm/y" and y.better("gold_norm/y")
    assert y.reading_key({"gold/y"}) == "gold/y" and not y.better("gold/y")  # a base <= 0 left it raw
    assert decl.get("gold_norm/y") is y and decl.get("nope") is None


def test_golds_json_round_trip_and_inference_for_older_runs(tmp_path):
    decl = declare_golds(SimpleNamespace(higher_is_better={"a": True}, labels={"a": "A"}), {"r": SimpleNamespace()},
                         samples_are_images=False)
    (tmp_path / "golds.json").write_text(json.dumps(decl.to_dict()))
    assert read_golds(tmp_path) == decl
    (tmp_path / "golds.json").write_text("{torn")  # unreadable: inferred from what the run logged
    inferred = read_golds(tmp_path, {AVERAGE_KEY, "gold_norm/a", "gold/a", "gold/b", "eval/r_mean"})
    assert keys(inferred) == [AVERAGE_KEY, "gold/a", "gold/b"] and inferred.primary.key == AVERAGE_KEY
    assert infer_golds({"gold/b"}).primary.key == "gold/b"
    with pytest.raises(ValueError, match="malformed"):
        GoldDeclaration.from_dict({"metrics": [{"label": "no key"}]})
