"""The structural speed targets of the training loop, checked by counting what it asks of the backbone:
no reference-model forward when the KL is off (one per training call when it is on), prompts encoded
once per epoch and reused by the update, CFG inside one call per forward, the rollout batched by
``sample.batch_size`` and the training forward grouping several steps per call up to the row bound."""

import math

import pytest

import tiny_backbone
from grpo_guard.train.update import forward_chunks
from tiny_backbone import tiny_cfg

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _run(tmp_path, *extra):
    from grpo_guard.train.loop import train

    cfg = tiny_cfg(tmp_path / "cache", "backbone.name=tiny_backbone:make_counting_backbone", "eval.every=0",
                   "train.grad_norm_every=0", "train.epochs=2", "log.checkpoint_every=0", *extra)
    train(cfg, tmp_path / "run", log=lambda *_: None)
    return cfg, tiny_backbone.LAST_COUNTING[0]


def _expected_train_calls(cfg) -> list[int]:
    """Rows of every training call the loop should make in one epoch."""
    import torch

    s, t = cfg.sample, cfg.train
    b = s.prompts_per_epoch * s.group_size
    steps = len(cfg.trained_step_indices())
    copies = 1 if s.guidance_scale == 1 else 2
    rows = []
    for _ in range(t.inner_epochs):
        for idx in torch.arange(b).chunk(t.updates_per_epoch):
            rows += [sub.numel() * len(js) for sub, js in forward_chunks(idx, steps, copies, t.max_forward_rows)]
    return rows


@pytest.mark.parametrize("max_rows", [0, 16, 1000])
def test_calls_per_epoch_match_the_batching(tmp_path, max_rows):
    cfg, bb = _run(tmp_path, f"train.max_forward_rows={max_rows}", "sample.batch_size=6", "train.inner_epochs=2")
    s, epochs = cfg.sample, cfg.train.epochs
    b = s.prompts_per_epoch * s.group_size
    assert bb.counts["eval_calls"] == epochs * s.num_steps * math.ceil(b / s.batch_size)
    per_epoch = _expected_train_calls(cfg)
    assert bb.train_rows == per_epoch * epochs
    if max_rows:
        assert max(bb.train_rows) * 2 <= max_rows  # the row bound holds, counting CFG's doubled rows
    if max_rows == 1000:  # everything of a minibatch in one call: one call per optimizer update
        assert len(per_epoch) == cfg.train.updates_per_epoch * cfg.train.inner_epochs
    # prompts are encoded once per epoch, each distinct prompt once, and reused by the update
    assert bb.counts["encode_calls"] == epochs
    assert bb.counts["encoded_prompts"] == epochs * s.prompts_per_epoch  # each distinct prompt once
    assert bb.counts["reference_calls"] == 0


def test_reference_forward_only_with_kl(tmp_path):
    _, off = _run(tmp_path / "off", "loss.kl_coef=0")
    assert off.counts["reference_calls"] == 0
    _, on = _run(tmp_path / "on", "loss.kl_coef=0.04")
    assert on.counts["reference_calls"] == on.counts["train_calls"] > 0
