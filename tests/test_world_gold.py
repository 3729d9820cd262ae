"""Tests of grpo_guard.world.gold: the gold classifier, feature metrics, normalisation and caching.

Thresholds come from measurements at 16px with the default GoldConfig (docs/toy_world.md):
heldout accuracy 0.972, FD heldout halves 46 vs uniform noise ~1500.
"""

import dataclasses
import math

import pytest
import torch

from grpo_guard.world.data import make_splits
from grpo_guard.world.gold import (GoldConfig, GoldScores, frechet_distance, hf_energy, knn_precision_recall,
                                   normalise_gold,
                                   train_gold, within_label_diversity)

torch.set_num_threads(1)
from conftest import WORLD_RES as RES


def test_gold_accuracy_on_heldout(gold, splits):
    assert gold.accuracy(splits.heldout.images, splits.heldout.labels) > 0.94  # measured 0.972
    # never trained on base: generalises there too
    assert gold.accuracy(splits.base.images, splits.base.labels) > 0.93  # measured 0.959


def test_gold_is_label_sensitive(gold, splits):
    x, y = splits.heldout.images, splits.heldout.labels
    assert gold.accuracy(x, (y + 1) % 10) < 0.05


def test_frechet_halves_vs_noise(gold, splits):
    f = gold.features(splits.heldout.images)
    halves = frechet_distance(f[::2], f[1::2])
    noise = gold.frechet(torch.rand(len(splits.heldout), 1, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert halves < 0.1 * noise
    assert gold.frechet(splits.heldout.images) < 1e-6  # identical sets


def test_frechet_distance_gaussian_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    b = torch.randn(4000, 3, generator=g) * 2 + 1
    # analytic: |mu|^2 = 3, tr(I + 4I - 2*2I) = 3  ->  6
    assert abs(frechet_distance(a, b) - 6.0) < 0.3
    with pytest.raises(ValueError, match="feats_a"):
        frechet_distance(a[:, :2], b)


def test_knn_precision_recall_and_diversity():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 4, generator=g)
    assert knn_precision_recall(real, torch.randn(300, 4, generator=g))[0] > 0.9
    far_p, far_r = knn_precision_recall(real, torch.randn(300, 4, generator=g) + 20)
    assert far_p == 0.0 and far_r == 0.0
    feats = torch.cat([torch.zeros(5, 2), torch.ones(5, 2)])
    assert within_label_diversity(feats, torch.tensor([0] * 5 + [1] * 5)) == 0.0
    assert within_label_diversity(feats, torch.tensor([0, 1] * 5)) > 0.5


def test_evaluate_fields(gold, splits):
    s = gold.evaluate(splits.base.images[:200], splits.base.labels[:200])
    assert s.n == 200 and 0.9 < s.accuracy <= 1.0 and s.frechet > 0 and 0 < s.precision <= 1
    assert s.diversity > 0 and 0 < s.hf_energy < 0.05  # real (upsampled) digits carry little HF energy
    with pytest.raises(ValueError, match="images"):
        gold.evaluate(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        gold.evaluate(splits.base.images[:4], torch.zeros(3, dtype=torch.int64))


def test_hf_energy_measures_only_high_frequencies():
    r = 16
    yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    low = 0.4 * torch.cos(2 * math.pi * 1 * xx / r)       # 1/8 of Nyquist (|low + high| <= 0.9: no clamping)
    high = 0.5 * torch.cos(2 * math.pi * 6 * (xx + yy) / r)  # radial 0.75 sqrt(2) x Nyquist
    assert hf_energy(low[None, None]) < 1e-10  # float32 rounding only
    assert hf_energy(high[None, None]) == pytest.approx(0.125, rel=1e-5)  # a cosine's power: amp^2 / 2
    assert hf_energy((low + high)[None, None]) == pytest.approx(0.125, rel=1e-5)
    assert hf_energy(torch.stack([low, high])[:, None]) == pytest.approx(0.0625, rel=1e-5)  # image mean


def test_normalise_gold():
    base = GoldScores(accuracy=0.9, frechet=10.0, precision=0.8, recall=0.7, diversity=5.0, hf_energy=0.01, n=100)
    n = normalise_gold(base, base)
    for f in ("accuracy", "frechet", "precision", "recall", "diversity", "hf_energy", "mean"):
        assert getattr(n, f) == pytest.approx(1.0)
    worse = dataclasses.replace(base, accuracy=0.45, frechet=20.0)
    w = normalise_gold(worse, base, average=("accuracy", "frechet"))
    assert w.accuracy == pytest.approx(0.5) and w.frechet == pytest.approx(0.5) and w.mean == pytest.approx(0.5)
    with pytest.raises(ValueError, match="average"):
        normalise_gold(base, base, average=("fid",))
    with pytest.raises(ValueError, match="base.frechet"):
        normalise_gold(base, dataclasses.replace(base, frechet=0.0))


def test_cache_round_trip_and_determinism(tmp_path):
    cfg = GoldConfig(resolution=8, epochs=8)
    s = make_splits(8)
    a = train_gold(cfg, s, cache_dir=tmp_path, verbose=False)
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".safetensors"]
    b = train_gold(cfg, s, cache_dir=tmp_path, verbose=False)  # loaded, not retrained
    assert b.meta["hash"] == a.meta["hash"] and math.isclose(b.meta["train_seconds"], a.meta["train_seconds"])
    x = s.heldout.images
    assert torch.equal(a.logits(x), b.logits(x))
    c = train_gold(cfg, s, verbose=False)  # retrained from scratch: deterministic on CPU
    assert torch.equal(a.logits(x), c.logits(x))
    d = train_gold(dataclasses.replace(cfg, seed=1), s, cache_dir=tmp_path, verbose=False)
    assert not torch.equal(a.logits(x), d.logits(x)) and len(list(tmp_path.iterdir())) == 4


def test_train_network_reports_progress_at_most_every_interval():
    import torch.nn.functional as F

    from grpo_guard.world.gold import train_network

    x, y = torch.randn(20, 3, generator=torch.Generator().manual_seed(0)), torch.randn(20, 1)
    lines = []
    train_network(torch.nn.Linear(3, 1), x, y, F.mse_loss, lambda a, b, g: (a, b), epochs=3, batch_size=8, lr=1e-2,
                  seed=0, progress=lines.append, progress_every=0.0)
    assert [line.split(" loss ")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    lines.clear()
    train_network(torch.nn.Linear(3, 1), x, y, F.mse_loss, lambda a, b, g: (a, b), epochs=3, batch_size=8, lr=1e-2,
                  seed=0, progress=lines.append, progress_every=3600.0)
    assert lines == []  # a short training is silent
