"""The faithful-recipe options: official_compat averaged micro-batch by micro-batch (against a transcription of
the official loss), EMA every N updates, dropping zero-advantage samples, the ODE evaluation protocol, and the
GPU recipes' settings."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import pytest
import torch

from tiny_backbone import TinyBackbone, tiny_cfg

from grpo_guard.config import ConfigError, LossConfig, available_configs, load_config
from grpo_guard.core import flow_sigmas
from grpo_guard.train.ema import EMA
from grpo_guard.train.epoch import kept_positions
from grpo_guard.train.evaluate import eval_sampler
from grpo_guard.train.loop import train
from grpo_guard.train.rollout import per_sample_noise, rollout
from grpo_guard.train.schedule import StepSchedule
from grpo_guard.train.update import UpdateSettings, compat_chunks, update_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- official_compat, micro-batch by micro-batch ---------------------------------------------------------------

class _Accelerator:
    """What update_policy asks of accelerate, for one CPU process."""

    distributed_type, scaler, num_processes, device = "NO", None, 1, torch.device("cpu")

    def no_sync(self, model):
        return nullcontext()

    def autocast(self):
        return nullcontext()

    def backward(self, loss):
        loss.backward()


class _Recorder(torch.optim.SGD):
    """An optimizer that keeps the gradients of its first step and changes nothing."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.grads = None

    def step(self, closure=None):
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]


def _sde_transition(bb, traj, cond, idx, j, sigmas, k, a):
    """The Flow-GRPO SDE step of method.md 2, by hand, for samples ``idx`` at stored position ``j`` (schedule
    step ``k``): ``(mean, log-prob averaged over dims, sigma_t, dt)`` under the current ``bb``."""
    t, t_next = sigmas[k], sigmas[k + 1]
    dt = t_next - t
    x, x_next = traj.latents[idx, j], traj.next_latents[idx, j]
    v = bb(x, t.expand(len(idx)), cond.index(idx), 1.0)
    sigma_t = a * torch.sqrt(t / (1 - (sigmas[1] if t >= 1 else t)))
    mu = x + (v + sigma_t**2 / (2 * t) * (x + (1 - t) * v)) * dt
    std = sigma_t * torch.sqrt(-dt)
    lp = (-(x_next - mu) ** 2 / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).flatten(1).mean(1)
    return mu, lp, sigma_t, dt


def _official_loss(bb, traj, cond, adv, sigmas, trained, micro, eps, a, inv_dt):
    """A transcription of the official GRPO-Guard script's loss, written from its description (method.md 4.2):
    for each micro-batch and each trained step, the policy mean from the SDE formula, the mean-over-dims
    Gaussian log-prob, the bias ``mean_batch(mean_dims((mu - mu_old)^2))`` and ONE scale
    ``s = mean(sigma_t) * mean(sqrt|dt|)`` over the micro-batch, ``r = exp(s * (log r + bias / (2 s^2)))``,
    the clipped surrogate (times 1/|dt| with the reweighting); each call's loss is divided by the number of
    calls (gradient accumulation)."""
    calls, total = 0, 0.0
    n = len(traj)
    for start in range(0, n, micro):
        idx = torch.arange(start, min(start + micro, n))
        for j, k in enumerate(trained):
            mu, lp, sigma_t, dt = _sde_transition(bb, traj, cond, idx, j, sigmas, k, a)
            log_ratio = lp - traj.log_probs[idx, j]
            bias = ((mu - traj.means[idx, j]) ** 2).flatten(1).mean(1).mean()
            s = sigma_t * torch.sqrt(-dt)  # mean(sigma_t) * mean(sqrt|dt|): every row is at step k
            ratio = torch.exp(s * (log_ratio + bias / (2 * s**2)))
            A = adv[idx]
            per = torch.maximum(-A * ratio, -A * ratio.clamp(1 - eps, 1 + eps))
            total = total + per.mean() * (1 / dt.abs() if inv_dt else 1.0)
            calls += 1
    return total / calls


@pytest.mark.parametrize("inv_dt", [False, True])
def test_official_compat_equals_the_official_loss_over_several_micro_batches(inv_dt):
    torch.manual_seed(0)
    bb = TinyBackbone(hidden=32)
    prompts = [f"p{i}" for i in range(6)]
    cond = bb.encode_prompts(prompts)
    sigmas = flow_sigmas(5, 3.0)
    trained = [1, 2, 3]
    a = 0.7
    schedule = StepSchedule(sigmas, trained, list(range(5)), a)
    noise = per_sample_noise(0, "rollout", 0, range(6), 6, bb.latent_shape)
    traj = rollout(lambda x, s, c: bb(x, s, c, 1.0), cond, noise, schedule, batch_size=6)
    with torch.no_grad():  # move the policy away from the rollout's, so that the ratio and the bias matter
        for p in bb.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adv = torch.tensor([1.5, -0.5, 0.8, -1.2, 0.3, -0.9])
    eps = 2e-3
    loss_cfg = LossConfig(ratio_mode="ratio_norm", step_weight="inv_dt" if inv_dt else "none", clip_range=eps,
                          official_compat=True)
    settings = UpdateSettings(schedule=schedule, guidance_scale=1.0, loss=loss_cfg, updates_per_epoch=1,
                              inner_epochs=1, max_grad_norm=1e9, preflight_tol=None, max_forward_rows=2)
    opt = _Recorder(bb.parameters())
    result = update_policy(model=bb, backbone=bb, optimizer=opt, accelerator=_Accelerator(), traj=traj, cond=cond,
                           advantages=adv, local_orders=[torch.arange(6)], settings=settings)
    ref = _official_loss(bb, traj, cond, adv, sigmas, trained, micro=2, eps=eps, a=a, inv_dt=inv_dt)
    expected = torch.autograd.grad(ref, list(bb.parameters()))
    for got, want in zip(opt.grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert result.scalars["clip_frac"] > 0  # the clip acts on some entries: the test covers the clipped branch
    # averaging over the whole minibatch instead (one micro-batch of 6) gives other gradients
    whole = _official_loss(bb, traj, cond, adv, sigmas, trained, micro=6, eps=eps, a=a, inv_dt=inv_dt)
    other = torch.autograd.grad(whole, list(bb.parameters()))
    assert any(not torch.allclose(g, o, rtol=1e-4) for g, o in zip(opt.grads, other))


def test_compat_calls_are_one_step_of_one_micro_batch():
    idx = torch.arange(5)
    chunks = compat_chunks(idx, 3, 2, 4)  # CFG: 2 rows per sample, 4 rows -> micro-batches of 2 samples
    assert [(c.tolist(), js) for c, js in chunks] == [
        ([0, 1], [0]), ([0, 1], [1]), ([0, 1], [2]), ([2, 3], [0]), ([2, 3], [1]), ([2, 3], [2]), ([4], [0]),
        ([4], [1]), ([4], [2])]
    assert [(c.tolist(), js) for c, js in compat_chunks(idx, 2, 2, 0)] == [(list(range(5)), [0]),
                                                                          (list(range(5)), [1])]


# ---- EMA every N updates ---------------------------------------------------------------------------------------

def test_ema_moves_every_n_steps():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], 0.9, every=3)
    for step in range(1, 7):
        with torch.no_grad():
            p.fill_(float(step))
        ema.update()
        if step == 1 or step == 2:
            assert torch.all(ema.shadow[0] == 0)
    # updates at steps 3 (p = 3) and 6 (p = 6): 0.9 * (0.1 * 3) + 0.1 * 6
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.9 * 0.3 + 0.6))
    assert ema.steps == 6
    with pytest.raises(ValueError, match="every"):
        EMA([p], 0.9, every=0)


def test_ema_every_survives_a_resume(tmp_path):
    cfg = ["train.ema_decay=0.9", "train.ema_every=3", "train.updates_per_epoch=2", "eval.every=0",
           "log.checkpoint_every=1"]
    full = train(tiny_cfg(tmp_path / "c", *cfg, "train.epochs=4"), tmp_path / "full", log=lambda *_: None)
    train(tiny_cfg(tmp_path / "c", *cfg, "train.epochs=3"), tmp_path / "part", log=lambda *_: None)
    resumed = train(tiny_cfg(tmp_path / "c", *cfg, "train.epochs=4"), tmp_path / "part", resume=True,
                    log=lambda *_: None)
    from safetensors.torch import load_file

    a = load_file(full / "checkpoints" / "epoch_000004" / "ema.safetensors")
    b = load_file(resumed / "checkpoints" / "epoch_000004" / "ema.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((full / "checkpoints" / "epoch_000004" / "state.json").read_text())["ema_steps"] == 8


# ---- dropping zero-advantage samples --------------------------------------------------------------------------

def test_kept_positions():
    adv = torch.tensor([0.0, 1.0, 0.0, -1.0, 0.0, 0.5])
    assert kept_positions(adv, 3).tolist() == [1, 3, 5]
    assert kept_positions(adv, 4).tolist() == [0, 1, 3, 5]  # topped up with the first zero ones
    assert kept_positions(adv, 2).tolist() == [1, 3, 5]  # never fewer than the nonzero ones
    assert kept_positions(torch.zeros(4), 0).tolist() == []


def make_half_flat_reward(params, ctx):
    """Prompts of even digits get a constant reward (a flat group), odd digits the image mean."""
    def reward(images, prompts, metadata):
        odd = torch.tensor([int(p.split()[-1]) % 2 for p in prompts], dtype=torch.float32)
        return odd * images.mean((1, 2, 3))
    return reward


def test_drop_zero_advantage_trains_on_the_groups_with_spread(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    spec = "rewards=[{name: 'test_recipes:make_half_flat_reward'}]"
    common = ["sample.prompts_per_epoch=4", "sample.group_size=4", "train.updates_per_epoch=2", "eval.every=0",
              "train.epochs=3", spec]
    run = train(tiny_cfg(tmp_path / "c", *common, "train.drop_zero_advantage=true"), tmp_path / "drop",
                log=lambda *_: None)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        flat = r["zero_spread_groups"]
        assert r["trained_samples"] == 16 - 4 * flat  # the 4 samples of each flat group dropped
    assert any(r["zero_spread_groups"] > 0 for r in rows)
    keep = train(tiny_cfg(tmp_path / "c", *common), tmp_path / "keep", log=lambda *_: None)
    other = [json.loads(x) for x in (keep / "metrics.jsonl").read_text().splitlines()]
    assert "trained_samples" not in other[0]
    assert rows[0]["loss"] != other[0]["loss"]  # the mean is over the kept samples only


# ---- the evaluation protocol -----------------------------------------------------------------------------------

def test_ode_evaluation_uses_its_own_steps_and_guidance(tmp_path):
    cfg = tiny_cfg(tmp_path / "c", "eval.sampler=ode", "eval.num_steps=7", "eval.guidance_scale=2.0")
    schedule, guidance = eval_sampler(cfg, TinyBackbone())
    assert schedule.num_steps == 7 and schedule.levels() == [0.0] * 7 and guidance == 2.0
    sde, g = eval_sampler(tiny_cfg(tmp_path / "c"), TinyBackbone())
    assert sde.num_steps == cfg.sample.num_steps and max(sde.levels()) == cfg.sample.noise_level
    assert g == cfg.sample.guidance_scale
    with pytest.raises(ConfigError, match="eval.num_steps"):
        tiny_cfg(tmp_path / "c", "eval.num_steps=7")
    with pytest.raises(ConfigError, match="eval.sampler"):
        tiny_cfg(tmp_path / "c", "eval.sampler=ddim")
    # an ODE evaluation in a run is deterministic: two evaluations of the base model agree exactly
    run = train(tiny_cfg(tmp_path / "c", "eval.sampler=ode", "eval.num_steps=7", "train.epochs=1", "train.lr=1e-12"),
                tmp_path / "run", log=lambda *_: None)
    base = json.loads((run / "base_eval.json").read_text())
    assert math.isfinite(base["eval/proxy_reward_mean"])


# ---- the GPU recipes ---------------------------------------------------------------------------------------------

GPU = [n for n in available_configs() if n.startswith(("sd35m_", "flux_"))]


@pytest.mark.parametrize("name", GPU)
def test_gpu_recipes_state_their_provenance_and_the_papers_protocol(name, tmp_path):
    from grpo_guard.config import CONFIG_DIR

    header = (CONFIG_DIR / f"{name}.yaml").read_text().split("\n\n")[0]
    assert "Paper:" in header and "Official:" in header, header
    prompts = tmp_path / ("p.jsonl" if "geneval" in name else "p.txt")
    prompts.write_text('{"prompt": "a cat", "tag": "single_object", "include": [{"class": "cat", "count": 1}]}\n'
                       if "geneval" in name else "a cat\n")
    cfg = load_config(name, [f"prompts.path={prompts}"])
    assert cfg.eval.sampler == "ode" and cfg.eval.num_steps == 40
    assert cfg.train.ema_decay == 0.9 and cfg.train.ema_every == 8 and cfg.train.drop_zero_advantage
    if cfg.backbone.name == "sd3":
        assert cfg.backbone.params["max_sequence_length"] == 128 and cfg.eval.guidance_scale == 4.5
        guard = cfg.loss.ratio_mode == "ratio_norm"
        assert cfg.train.lr == (1e-4 if guard else 3e-4)


# ---- DanceGRPO's sampling: random per-sample step subsets, one initial noise per group, Flux's static shift ----

def _by_hand_plain_loss(bb, traj, cond, adv, sigmas, stored, positions, eps, a):
    """Flow-GRPO's plain clipped loss averaged over each sample's own (sample, step) entries, from the SDE
    formulas (method.md 2-3)."""
    terms = []
    for i in range(len(traj)):
        for j in positions[i].tolist():
            _, lp, _, _ = _sde_transition(bb, traj, cond, torch.tensor([i]), j, sigmas, stored[j], a)
            ratio = torch.exp(lp - traj.log_probs[i, j])
            terms.append(torch.maximum(-adv[i] * ratio, -adv[i] * ratio.clamp(1 - eps, 1 + eps)))
    return torch.cat(terms).mean()


def test_random_step_subsets_train_each_samples_own_steps():
    from grpo_guard.train.rollout import step_subsets

    torch.manual_seed(1)
    bb = TinyBackbone(hidden=32)
    cond = bb.encode_prompts([f"p{i}" for i in range(4)])
    sigmas = flow_sigmas(6, 3.0)
    stored = list(range(6))
    schedule = StepSchedule(sigmas, stored, stored, 0.7)
    noise = per_sample_noise(0, "rollout", 0, range(4), 7, bb.latent_shape)
    traj = rollout(lambda x, s, c: bb(x, s, c, 1.0), cond, noise, schedule, batch_size=4)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.05 * torch.randn_like(p))
    positions = step_subsets(0, 0, [0, 1, 2, 3], 6, 3)
    assert positions.shape == (4, 3) and len({tuple(r) for r in positions.tolist()}) > 1  # samples differ
    assert torch.equal(positions, step_subsets(0, 0, [0, 1, 2, 3], 6, 3))  # seeded per sample
    assert torch.equal(step_subsets(0, 0, [2], 6, 3)[0], positions[2])  # independent of the other samples
    adv = torch.tensor([1.0, -0.5, 0.7, -1.1])
    settings = UpdateSettings(schedule=schedule, guidance_scale=1.0, loss=LossConfig(clip_range=2e-3),
                              updates_per_epoch=1, inner_epochs=1, max_grad_norm=1e9, preflight_tol=None,
                              max_forward_rows=5)  # calls of several slots and of slices of samples
    opt = _Recorder(bb.parameters())
    update_policy(model=bb, backbone=bb, optimizer=opt, accelerator=_Accelerator(), traj=traj, cond=cond,
                  advantages=adv, local_orders=[torch.arange(4)], settings=settings, step_positions=positions)
    ref = _by_hand_plain_loss(bb, traj, cond, adv, sigmas, stored, positions, 2e-3, 0.7)
    for got, want in zip(opt.grads, torch.autograd.grad(ref, list(bb.parameters()))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_group_initial_noise_is_shared_within_groups():
    from grpo_guard.train.epoch import group_initial_noise

    noise = group_initial_noise(0, 3, torch.tensor([0, 1, 2, 3, 4, 5]), 3, (1, 4, 4))
    assert torch.equal(noise[0], noise[1]) and torch.equal(noise[1], noise[2])
    assert not torch.equal(noise[2], noise[3]) and torch.equal(noise[3], noise[5])
    assert torch.equal(group_initial_noise(0, 3, torch.tensor([4]), 3, (1, 4, 4))[0], noise[4])


def test_flux_static_shift_follows_sample_shift():
    from grpo_guard.backbones.flux import FluxBackbone
    from grpo_guard.backbones.tiny_pipelines import tiny_flux_pipeline

    static = FluxBackbone(tiny_flux_pipeline(), resolution=64, lora_rank=2, dynamic_shift=False)
    torch.testing.assert_close(static.sigmas(16, 3.0), flow_sigmas(16, 3.0))
    dynamic = FluxBackbone(tiny_flux_pipeline(), resolution=64, lora_rank=2)
    assert not torch.allclose(dynamic.sigmas(16, 3.0), flow_sigmas(16, 3.0))
    assert torch.equal(dynamic.sigmas(16, 3.0), dynamic.sigmas(16, 1.0))  # the dynamic shift ignores shift


def test_a_dance_grpo_run_trains_random_subsets_of_every_step(tmp_path):
    cfg = tiny_cfg(tmp_path / "c", "sample.sde_type=dance_grpo", "sample.noise_level=0.3", "sample.num_steps=8",
                   "sample.same_initial_noise=true", "train.timestep_fraction=0.5", "train.timestep_sampling=random",
                   "loss={ratio_mode: ratio_norm, step_weight: inv_dt, clip_range: 2.0e-6}", "train.epochs=2")
    assert cfg.trained_step_indices() == list(range(8)) and cfg.steps_per_sample() == 4
    run = train(cfg, tmp_path / "run", log=lambda *_: None)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["preflight_max_abs_log_ratio"] <= 1e-5
    assert rows[1]["trained_steps"] == list(range(8)) and len(rows[1]["step_stats"]["count"]) == 8
    assert sum(rows[1]["step_stats"]["count"]) == 16 * 4 / 2  # the off-policy half: 8 samples x 4 own steps
    with pytest.raises(ConfigError, match="official_compat"):
        tiny_cfg(tmp_path / "c", "train.timestep_sampling=random", "loss.official_compat=true")


# ---- Flow-GRPO-Fast: a random SDE window per epoch ----------------------------------------------------------

def test_a_random_sde_window_is_drawn_every_epoch(tmp_path):
    cfg = tiny_cfg(tmp_path / "c", "sample.num_steps=10", "sample.sde_window_size=2", "train.timestep_fraction=1.0",
                   "train.epochs=8", "eval.every=0")
    assert cfg.trained_step_indices() == [0, 1] and cfg.steps_per_sample() == 2
    sigmas = flow_sigmas(10, 3.0)
    windows = [StepSchedule.for_epoch(cfg, sigmas, e).sde_steps for e in range(8)]
    assert all(len(w) == 2 and w[0] + 1 == w[1] and 0 <= w[0] and w[1] < 5 for w in windows)
    assert len({tuple(w) for w in windows}) > 1  # the window moves
    assert windows == [StepSchedule.for_epoch(cfg, sigmas, e).sde_steps for e in range(8)]  # seeded
    sched = StepSchedule.for_epoch(cfg, sigmas, 3)
    assert sched.levels().count(0.0) == 8 and list(sched.trained_steps) == list(sched.sde_steps)
    run = train(cfg, tmp_path / "run", log=lambda *_: None)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["preflight_max_abs_log_ratio"] <= 1e-5
    assert [r["trained_steps"] for r in rows] == [list(w) for w in windows]
    for bad, key in (("sample.sde_window_range=[0, 1]", "sample.sde_window_range"),
                     ("sample.sde_window=[0, 4]", "sample.sde_window_size")):
        with pytest.raises(ConfigError, match=key):
            tiny_cfg(tmp_path / "c", "sample.sde_window_size=2", bad)
