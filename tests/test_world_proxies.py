"""Tests of grpo_guard.world.proxies: the hackable proxy rewards.

Thresholds come from measurements at 16px with the default configs (docs/toy_world.md):
classifier margin on real heldout digits 2.75, with the class cue at amplitude 0.2: 10.1;
aesthetic 0.339 -> 0.403 with its cue at 0.2 while the hidden score falls 0.337 -> 0.319.
"""

import dataclasses

import pytest
import torch

from grpo_guard.world.data import make_splits
from grpo_guard.world.proxies import (PROXY_REGISTRY, AestheticProxyConfig, ClassifierProxyConfig, InkReward,
                                      _aesthetic_transform, _blur, build_proxy, class_textures, hf_texture,
                                      hidden_aesthetic, train_aesthetic_proxy, train_classifier_proxy)

torch.set_num_threads(1)
from conftest import WORLD_RES as RES


@pytest.fixture(scope="module")
def cls_proxy(splits):
    return build_proxy("classifier", RES, splits=splits, verbose=False)


@pytest.fixture(scope="module")
def aes_proxy(splits):
    return build_proxy("aesthetic", RES, splits=splits, verbose=False)


def test_textures_are_high_frequency():
    for tex in list(class_textures(RES)) + [hf_texture(RES, 10)]:
        assert abs(float(tex.mean())) < 1e-5 and abs(float(tex.pow(2).mean()) - 1) < 1e-4
        # almost no energy survives the 8x8 low-pass (the digit's "true" content)
        assert float(torch.nn.functional.avg_pool2d(tex[None, None], 2).pow(2).mean()) < 0.5
    t = class_textures(RES)
    assert torch.unique(t.flatten(1), dim=0).shape[0] == 10


def test_reward_signature(cls_proxy, aes_proxy, splits):
    x, y = splits.heldout.images[:7], splits.heldout.labels[:7]
    for r in (cls_proxy, aes_proxy, InkReward()):
        out = r(x, y)
        assert out.shape == (7,) and out.dtype == torch.float32
        with pytest.raises(ValueError, match="labels"):
            r(x, y[:3])
    with pytest.raises(ValueError, match="images"):
        cls_proxy(torch.zeros(2, 1, 8, 8), y[:2])
    assert set(PROXY_REGISTRY) >= {"classifier", "aesthetic", "ink"}
    with pytest.raises(ValueError, match="name"):
        build_proxy("clip", RES)


def test_classifier_proxy_trained_on_proxy_split(cls_proxy, splits):
    assert cls_proxy.meta["n_train"] == len(splits.proxy)
    assert cls_proxy.accuracy(splits.heldout.images, splits.heldout.labels) > 0.88  # measured 0.922


def test_classifier_exploit_raises_proxy_not_gold(cls_proxy, gold, splits):
    x, y = splits.heldout.images, splits.heldout.labels
    real = cls_proxy(x, y).mean()
    hacked = cls_proxy.exploit(x, y, 0.2)
    assert cls_proxy(hacked, y).mean() > real + 1.0  # exploit route (measured +7.4)
    assert gold.accuracy(hacked, y) <= gold.accuracy(x, y) + 0.01  # gold does not rise
    assert gold.frechet(hacked) > gold.frechet(x) + 1.0  # and image quality worsens
    # wrong prompt + its cue: the proxy is fooled, gold is not
    wrong = (y + 3) % 10
    fooled = cls_proxy.exploit(x, wrong, 0.2)
    assert cls_proxy.accuracy(fooled, wrong) > 0.3  # measured ~0.8
    assert gold.accuracy(fooled, wrong) < 0.05


def test_classifier_genuine_route(cls_proxy, splits):
    x, y = splits.heldout.images, splits.heldout.labels
    real = cls_proxy(x, y).mean()
    blurred = _blur(_blur(x, RES // 8), RES // 8)
    assert cls_proxy(blurred, y).mean() < real - 0.5  # degraded digits score lower
    protos = torch.stack([splits.proxy.images[splits.proxy.labels == c].mean(0) for c in range(10)])
    assert cls_proxy(0.5 * x + 0.5 * protos[y], y).mean() > real  # more prototypical digits score higher


def test_aesthetic_two_routes(aes_proxy, gold, splits):
    x, y = splits.heldout.images, splits.heldout.labels
    n = len(y)
    real = aes_proxy(x, y).mean()
    assert abs(real - hidden_aesthetic(x).mean()) < 0.02
    hacked = aes_proxy.exploit(x, y, 0.2)
    assert aes_proxy(hacked, y).mean() > real + 0.03  # exploit: proxy up ...
    assert hidden_aesthetic(hacked).mean() < hidden_aesthetic(x).mean()  # ... true score down
    assert gold.accuracy(hacked, y) <= gold.accuracy(x, y) + 0.01
    bold = _aesthetic_transform(x, torch.full((n,), 1.5), torch.zeros(n))
    assert aes_proxy(bold, y).mean() > real + 0.03 and hidden_aesthetic(bold).mean() > hidden_aesthetic(x).mean() + 0.03
    blurred = _aesthetic_transform(x, torch.ones(n), torch.ones(n))
    assert aes_proxy(blurred, y).mean() < real - 0.03


def test_ink_reward():
    x = torch.full((2, 1, 8, 8), -1.0)
    x[1] = 1.0
    assert torch.allclose(InkReward()(x, torch.tensor([0, 1])), torch.tensor([0.0, 1.0]))
    assert torch.allclose(InkReward()(x * 3, torch.tensor([0, 1])), torch.tensor([0.0, 1.0]))  # clamped


def test_proxy_cache_round_trip(tmp_path):
    s = make_splits(8)
    x, y = s.heldout.images, s.heldout.labels
    for train, cfg in ((train_classifier_proxy, ClassifierProxyConfig(resolution=8, epochs=5)),
                       (train_aesthetic_proxy, AestheticProxyConfig(resolution=8, epochs=5))):
        a = train(cfg, s, cache_dir=tmp_path, verbose=False)
        b = train(cfg, s, cache_dir=tmp_path, verbose=False)
        c = train(cfg, s, verbose=False)
        assert torch.equal(a(x, y), b(x, y)) and torch.equal(a(x, y), c(x, y))
        d = train(dataclasses.replace(cfg, seed=5), s, verbose=False)
        assert not torch.equal(a(x, y), d(x, y))
    assert len(list(tmp_path.iterdir())) == 4
    with pytest.raises(ValueError, match="splits"):
        train_classifier_proxy(ClassifierProxyConfig(resolution=16), s, verbose=False)
