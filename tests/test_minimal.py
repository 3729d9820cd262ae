"""``train/minimal.py`` is the full recipe's algorithm: on the same config and seeds it computes the same
losses and proxy rewards, epoch by epoch."""

import pytest

from grpo_guard.train.loop import train
from grpo_guard.train.minimal import train_minimal
from tiny_backbone import rows, tiny_cfg

# what the minimal loop leaves out: evaluation, per-step gradient norms, memory bounds on the forward
PLAIN = ("eval.every=0", "train.grad_norm_every=0", "train.max_forward_rows=0", "train.max_forward_mb=0",
         "log.checkpoint_every=0")


@pytest.mark.parametrize("method", [
    ("loss.ratio_mode=ratio_norm", "loss.step_weight=inv_dt", "loss.clip_range=1e-5"),  # GRPO-Guard
    ("loss.ratio_mode=plain", "loss.clip_range=1e-4", "loss.kl_coef=0.01"),  # Flow-GRPO with its KL
])
def test_minimal_loop_gives_the_full_recipes_losses(tmp_path, method):
    cfg = tiny_cfg(tmp_path / "cache", "train.epochs=4", "train.inner_epochs=2", "train.lr=3e-3", *PLAIN, *method)
    full = rows(train(cfg, tmp_path / "run", log=lambda *_: None))
    mini = train_minimal(cfg)
    assert [r["epoch"] for r in mini] == [r["epoch"] for r in full] == [0, 1, 2, 3]
    for a, b in zip(mini, full):
        assert a["proxy_reward_mean"] == b["proxy_reward_mean"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9, abs=1e-15)
    # the policy moved (the comparison is not between two untrained runs)
    assert full[-1]["proxy_reward_mean"] != full[0]["proxy_reward_mean"]


def test_minimal_loop_fits_on_a_screen_or_two():
    from pathlib import Path

    import grpo_guard.train.minimal as minimal

    assert len(Path(minimal.__file__).read_text().splitlines()) <= 150
