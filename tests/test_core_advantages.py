import numpy as np
import pytest
import torch

from grpo_guard import group_advantages


def _reference(rewards, ids, std_mode, eps, clip):
    rewards, ids = np.asarray(rewards, dtype=np.float64), np.asarray(ids)
    out = np.zeros_like(rewards)
    for g in np.unique(ids):
        m = ids == g
        std = rewards.std() if std_mode == "global" else rewards[m].std()
        out[m] = (rewards[m] - rewards[m].mean()) / (std + eps)
    return np.clip(out, -clip, clip)


@pytest.mark.parametrize("std_mode", ["group", "global"])
def test_matches_per_group_loop(gen, std_mode):
    rewards = torch.randn(24, generator=gen) * 3 + 1
    ids = torch.tensor([7, 3, 11] * 8)  # non-contiguous, interleaved ids
    res = group_advantages(rewards, ids, std_mode=std_mode, eps=1e-4, clip_max=5.0)
    expected = _reference(rewards.numpy(), ids.numpy(), std_mode, 1e-4, 5.0)
    np.testing.assert_allclose(res.advantages.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert int(res.num_groups) == 3 and int(res.zero_spread_groups) == 0
    # per group: zero mean, unit population std (group mode)
    for g in (3, 7, 11):
        a = res.advantages[ids == g].double()
        assert abs(float(a.mean())) < 1e-6
        if std_mode == "group":
            assert abs(float(a.std(unbiased=False)) - 1) < 1e-3


def test_zero_spread_groups_counted_and_zero():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 2.0, 3.0, 5.0, 5.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    res = group_advantages(rewards, ids)
    assert int(res.zero_spread_groups) == 2
    assert torch.equal(res.advantages[ids != 1], torch.zeros(5))
    assert float(res.advantages[3]) < 0 < float(res.advantages[5])


def test_clipping():
    rewards = torch.tensor([0.0] * 99 + [1.0])  # one outlier: its z-score is ~9.9
    ids = torch.zeros(100, dtype=torch.long)
    assert float(group_advantages(rewards, ids, clip_max=5.0).advantages.max()) == 5.0
    assert float(group_advantages(rewards, ids, clip_max=None).advantages.max()) > 9.0


def test_gathered_batch_equals_single_batch(gen):
    """Groups split across two 'ranks' and gathered (concatenated) give the same advantages."""
    rewards = torch.randn(16, generator=gen)
    ids = torch.arange(4).repeat_interleave(4)
    whole = group_advantages(rewards, ids).advantages
    perm = torch.randperm(16, generator=gen)
    shuffled = group_advantages(rewards[perm], ids[perm]).advantages
    torch.testing.assert_close(shuffled, whole[perm])


def test_dtype():
    r = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert group_advantages(r, torch.tensor([0, 0])).advantages.dtype == torch.float64
    assert group_advantages(r.half(), torch.tensor([0, 0])).advantages.dtype == torch.float32


def test_bad_inputs():
    r, ids = torch.randn(4), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(r, ids[:3])
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(r, ids.float())
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.tensor([1.0, float("nan"), 0.0, 1.0]), ids)
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(r.view(2, 2), ids.view(2, 2))
    with pytest.raises(ValueError, match="std_mode"):
        group_advantages(r, ids, std_mode="batch")
    with pytest.raises(ValueError, match="eps"):
        group_advantages(r, ids, eps=0.0)
    with pytest.raises(ValueError, match="clip_max"):
        group_advantages(r, ids, clip_max=-1.0)
