"""The training forward's memory bound (train.max_forward_mb): what autograd saves for the backward is
counted exactly (each storage once, parameters excluded), it grows linearly with the rows of a call,
and the loop turns the first call's measure into a row bound that later calls keep."""

import math

import pytest
import torch
from torch import nn

import tiny_backbone
from grpo_guard.train.forward_memory import count_saved_bytes, rows_for_budget
from grpo_guard.train.update import forward_chunks, row_bound
from tiny_backbone import rows, tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _Saves(torch.autograd.Function):
    """Saves exactly the tensors it is given (and returns the first one times 2)."""

    @staticmethod
    def forward(ctx, x, *others):
        ctx.save_for_backward(x, *others)
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return (grad * 2,) + (None,) * (len(ctx.saved_tensors) - 1)


def test_counts_each_saved_storage_once_and_skips_excluded():
    x = torch.randn(5, 3, requires_grad=True)  # 60 bytes
    big = torch.randn(10, 10)  # 400 bytes, saved twice through two views
    param = nn.Parameter(torch.randn(7))  # excluded
    with count_saved_bytes(exclude=[param]) as saved:
        _Saves.apply(x, big[:2], big[5:], param)
    assert (saved.bytes, saved.tensors) == (60 + 400, 2)
    with count_saved_bytes() as saved:
        _Saves.apply(x, param)
    assert saved.bytes == 60 + 28
    with count_saved_bytes() as saved, torch.no_grad():  # nothing is saved without autograd
        _Saves.apply(x, big)
    assert saved.bytes == 0
    outside = count_saved_bytes()
    _Saves.apply(x, big)  # no hook left behind: a context never entered counts nothing
    assert outside is not None


@pytest.mark.parametrize("layer", ["transformer", "mlp"])
def test_saved_bytes_are_linear_in_rows(layer):
    """The per-row premise of the bound: a call of 2r rows saves twice what a call of r rows saves."""
    torch.manual_seed(0)
    net = (nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True) if layer == "transformer"
           else nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)))

    def saved_for(r):
        with count_saved_bytes([*net.parameters()]) as saved:
            net(torch.randn(r, 6, 32)).sum()
        return saved.bytes

    one, two = saved_for(4), saved_for(8)
    assert one > 0 and two == 2 * one


def test_rows_for_budget_and_row_bound():
    assert rows_for_budget(1.0, 1024.0) == 1024
    assert rows_for_budget(1e-9, 1024.0) == 1  # at least one row
    with pytest.raises(ValueError, match="bytes_per_row"):
        rows_for_budget(1.0, 0.0)
    assert row_bound(0, 0.0, None) == 0  # no bound: one step per call
    assert row_bound(64, 0.0, None) == 64
    assert row_bound(0, 1.0, None) == 0  # a memory bound not yet measured binds nothing
    assert row_bound(0, 1.0, 2**20 / 128) == 128
    assert row_bound(64, 1.0, 2**20 / 128) == 64 and row_bound(500, 1.0, 2**20 / 128) == 128


def _train_rows(tmp_path, name, *extra):
    from grpo_guard.train.loop import train

    cfg = tiny_cfg(tmp_path / "cache", "backbone.name=tiny_backbone:make_counting_backbone", "eval.every=0",
                   "train.grad_norm_every=0", "train.epochs=2", "log.checkpoint_every=0", "sample.batch_size=6",
                   *extra)
    logs = []
    train(cfg, tmp_path / name, log=logs.append)
    return cfg, tiny_backbone.LAST_COUNTING[0].train_rows, rows(tmp_path / name), logs


def test_loop_measures_the_first_call_and_bounds_the_later_ones(tmp_path):
    # a budget far above the run: after the first minibatch, one call per minibatch
    cfg, got, rs, logs = _train_rows(tmp_path, "wide", "train.max_forward_mb=1000")
    s, t = cfg.sample, cfg.train
    b, steps = s.prompts_per_epoch * s.group_size, len(cfg.trained_step_indices())
    n = b // t.updates_per_epoch
    per_row = rs[0]["forward_mb_per_row"] * 2**20
    assert per_row > 0 and "forward_mb_per_row" not in rs[1]  # measured once per run
    assert any("saved activations per row" in line for line in logs)
    first = [n] * steps  # the run's first minibatch: one step per call (no row bound set)
    assert got[:steps] == first and got[steps:] == [n * steps] * (2 * t.updates_per_epoch - 1)

    # a budget of 2.5 steps' rows: later calls hold two steps of the minibatch
    mb = 2.5 * 2 * n * per_row / 2**20
    cfg, got, rs2, _ = _train_rows(tmp_path, "tight", f"train.max_forward_mb={mb}")
    assert rs2[0]["forward_mb_per_row"] == pytest.approx(rs[0]["forward_mb_per_row"])
    bound = rows_for_budget(mb, per_row)
    later = [sub.numel() * len(js) for sub, js in forward_chunks(torch.arange(n), steps, 2, bound)]
    assert later[0] == 2 * n and got == first + later * (2 * t.updates_per_epoch - 1)
    assert max(got) * 2 * per_row <= mb * 2**20  # the budget holds, counting CFG's doubled rows

    # with a row bound too, the smaller bound holds and the losses are those of any other grouping
    _, got3, rs3, _ = _train_rows(tmp_path, "both", f"train.max_forward_mb={mb}", "train.max_forward_rows=2")
    assert max(got3) == 1
    for a, c in zip(rs, rs3):
        assert c["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert c["clip_frac"] == pytest.approx(a["clip_frac"], abs=1e-7)
    assert all(math.isfinite(r["loss"]) for r in rs2)
