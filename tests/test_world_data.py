"""Tests of grpo_guard.world.data: loading, rendering, disjoint splits, prompts."""

import pytest
import torch

from grpo_guard.world.data import (SPLIT_NAMES, SplitFractions, label_from_prompt, labels_from_prompts,
                                   load_digits_raw, make_splits, prompt_for_label, prompts_for_labels, render,
                                   split_indices)

torch.set_num_threads(1)


def test_raw_digits_range_and_shape():
    x, y = load_digits_raw()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))


@pytest.mark.parametrize("res", [8, 16, 32, 64])
def test_render_shape_range_and_smoothness(res):
    x, _ = load_digits_raw()
    up = render(x[:50], res)
    assert up.shape == (50, 1, res, res)
    assert float(up.min()) >= -1.0 and float(up.max()) <= 1.0
    # average-pooling back to 8x8 approximately recovers the original digit
    back = torch.nn.functional.avg_pool2d(up, res // 8) if res > 8 else up
    assert float((back - x[:50]).abs().mean()) < 0.15


def test_render_rejects_bad_resolution():
    x, _ = load_digits_raw()
    with pytest.raises(ValueError, match="resolution"):
        render(x[:2], 12)
    with pytest.raises(ValueError, match="mode"):
        render(x[:2], 16, mode="nearest")


def test_splits_disjoint_cover_and_stratified():
    s = make_splits(8, seed=0)
    idx = [s.get(n).indices for n in SPLIT_NAMES]
    allidx = torch.cat(idx)
    assert len(allidx) == 1797 and len(set(allidx.tolist())) == 1797  # disjoint and covering
    fr = SplitFractions().as_tuple()
    for part, f in zip(SPLIT_NAMES, fr):
        d = s.get(part)
        assert abs(len(d) / 1797 - f) < 0.01
        counts = torch.bincount(d.labels, minlength=10)
        assert int(counts.min()) > 0.8 * f * 170  # every class present in every split
        raw, lab = load_digits_raw()
        assert torch.equal(d.labels, lab[d.indices])
        assert torch.equal(d.images, raw[d.indices])


def test_splits_deterministic_and_seed_dependent():
    a, b = make_splits(8, seed=3), make_splits(8, seed=3)
    c = make_splits(8, seed=4)
    assert torch.equal(a.gold.indices, b.gold.indices)
    assert not torch.equal(a.gold.indices, c.gold.indices)


def test_split_validation():
    with pytest.raises(ValueError, match="fractions"):
        SplitFractions(0.5, 0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="fractions.gold"):
        SplitFractions(0.5, 0.5, 0.0, 0.0)
    with pytest.raises(ValueError, match="seed"):
        split_indices(torch.zeros(5, dtype=torch.int64), seed=-1)
    with pytest.raises(ValueError, match="name"):
        make_splits(8).get("train")


def test_prompt_round_trip():
    for c in range(10):
        assert label_from_prompt(prompt_for_label(c)) == c
    y = torch.tensor([3, 1, 4, 1, 5, 9])
    assert prompts_for_labels(y)[0] == "a handwritten 3"
    assert torch.equal(labels_from_prompts(prompts_for_labels(y)), y)
    assert label_from_prompt("  A Handwritten 7 ") == 7


@pytest.mark.parametrize("bad", ["a handwritten 12", "a handwritten x", "a drawing of 3", "", "a handwritten ٣"])
def test_bad_prompts(bad):
    with pytest.raises(ValueError, match="prompt"):
        label_from_prompt(bad)


def test_bad_labels_and_types():
    with pytest.raises(ValueError, match="prompt"):
        label_from_prompt(7)
    with pytest.raises(ValueError, match="label"):
        prompt_for_label(10)
    with pytest.raises(ValueError, match="label"):
        prompt_for_label(True)
    with pytest.raises(ValueError, match="labels"):
        prompts_for_labels(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="prompts"):
        labels_from_prompts("a handwritten 1")
