"""A tiny test backbone: an MLP velocity on (1, 8, 8) latents with hashed prompt embeddings.

Named in configs as ``backbone.name: tiny_backbone:make_tiny_backbone`` (with ``tests/`` on the path)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from grpo_guard.backbones import Backbone, Conditioning
from grpo_guard.seeding import derive_generator


class TinyBackbone(Backbone):
    latent_shape = (1, 8, 8)
    image_size = 8

    def __init__(self, hidden: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(64 + 16 + 1, hidden), nn.SiLU(), nn.Linear(hidden, 64))
        self.frozen = None

    def encode_prompts(self, prompts):
        emb = torch.stack([torch.randn(16, generator=derive_generator(0, "prompt", p)) for p in prompts])
        return Conditioning(embeds=emb[:, None, :], null_embeds=torch.zeros_like(emb[:, None, :]))

    def _v(self, x, sigma, e):
        return self.net(torch.cat([x.flatten(1), e[:, 0], sigma[:, None]], 1)).view_as(x)

    def forward(self, latents, sigma, cond, guidance_scale):
        if guidance_scale > 1:
            both = self._v(torch.cat([latents, latents]), torch.cat([sigma, sigma]),
                           torch.cat([cond.embeds, cond.null_embeds]))
            vc, vu = both.chunk(2)
            return vu + guidance_scale * (vc - vu)
        return self._v(latents, sigma, cond.embeds)

    def decode(self, latents):
        return ((latents.float() + 1) / 2).clamp(0, 1)

    @contextmanager
    def reference(self):
        if self.frozen is None:
            import copy

            self.frozen = copy.deepcopy(self.net).requires_grad_(False)
        live, self.net = self.net, self.frozen
        try:
            yield
        finally:
            self.net = live

    def trainable_parameters(self):
        return list(self.net.parameters())

    def trainable_state_dict(self):
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def load_trainable_state_dict(self, state):
        self.net.load_state_dict(state)


def make_tiny_backbone(params, ctx):
    return TinyBackbone(**params)



class DropoutTinyBackbone(TinyBackbone):
    """Has dropout active in train mode: the training pass differs from the rollout (preflight must fail)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.net.insert(1, nn.Dropout(0.5))


def make_dropout_backbone(params, ctx):
    return DropoutTinyBackbone(**params)


class NaNReward:
    name = "nan_reward"

    def __call__(self, images, prompts, metadata):
        return torch.full((images.shape[0],), float("nan"))


def make_nan_reward(params, ctx):
    return NaNReward()


class ShapeReward:
    name = "shape_reward"

    def __call__(self, images, prompts, metadata):
        return torch.zeros(images.shape[0], 2)


def make_bad_shape_reward(params, ctx):
    return ShapeReward()


class NanTrainBackbone(TinyBackbone):
    """Returns NaN velocities in training mode for training-forward calls number ``nan_from`` to
    ``nan_to - 1`` (counted from 0; rollouts run in eval mode and stay finite)."""

    def __init__(self, nan_from: int = 0, nan_to: int = 10**9, **kw):
        super().__init__(**kw)
        self.nan_from, self.nan_to, self.calls = nan_from, nan_to, 0

    def forward(self, latents, sigma, cond, guidance_scale):
        v = super().forward(latents, sigma, cond, guidance_scale)
        if self.training:
            self.calls += 1
            if self.nan_from <= self.calls - 1 < self.nan_to:
                return v * float("nan")
        return v


def make_nan_backbone(params, ctx):
    return NanTrainBackbone(**params)


def make_brightness_reward(params, ctx):
    """Mean brightness of (B, C, H, W) images in [0, 1]: a trivial reward for any backbone."""

    def reward(images, prompts, metadata=None):
        return images.float().mean(dim=(1, 2, 3))

    return reward


def make_darkness_reward(params, ctx):
    """One minus the mean brightness: the direction a tiny random SD3 pipeline drifts in when trained hard."""

    def reward(images, prompts, metadata=None):
        return 1.0 - images.float().mean(dim=(1, 2, 3))

    return reward


def make_fails_on_size_reward(params, ctx):
    """Brightness, but raises ConnectionError for batches of exactly ``size`` images (e.g. the evaluation
    set) after letting the first ``skip_first`` of them through: a stand-in for a reward server that
    goes down."""
    size, skip = int(params.get("size", 20)), int(params.get("skip_first", 0))
    seen = {"n": 0}

    def reward(images, prompts, metadata=None):
        if images.shape[0] == size:
            seen["n"] += 1
            if seen["n"] > skip:
                raise ConnectionError("reward server unreachable")
        return images.float().mean(dim=(1, 2, 3))

    return reward


def tiny_cfg(cache, *extra):
    """The tiny training run of the tests: this backbone, the ``ink`` reward on 8 px grey images."""
    from grpo_guard.config import load_config

    return load_config(None, [
        "backbone.name=tiny_backbone:make_tiny_backbone", "rewards=[{name: ink}]", f"cache_dir={cache}",
        "eval.evaluator=null", "eval.samples_per_prompt=2", "sample.prompts_per_epoch=4", "sample.group_size=4",
        "sample.guidance_scale=2.0", "train.epochs=3", "log.progress=false", "log.checkpoint_every=1",
        "log.image_every=0", *extra])


def rows(run):
    """The rows of ``run/metrics.jsonl``."""
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class CountingTinyBackbone(TinyBackbone):
    """Counts what the trainer asks of it: network calls in eval (rollout) and train (update) mode,
    calls made inside ``reference()``, the rows of each call, and ``encode_prompts`` calls."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.counts = {"eval_calls": 0, "train_calls": 0, "reference_calls": 0, "encode_calls": 0,
                       "encoded_prompts": 0}
        self.train_rows: list[int] = []
        self._in_reference = False

    def encode_prompts(self, prompts):
        self.counts["encode_calls"] += 1
        self.counts["encoded_prompts"] += len(prompts)
        return super().encode_prompts(prompts)

    def forward(self, latents, sigma, cond, guidance_scale):
        if self._in_reference:
            self.counts["reference_calls"] += 1
        elif self.training:
            self.counts["train_calls"] += 1
            self.train_rows.append(latents.shape[0])
        else:
            self.counts["eval_calls"] += 1
        return super().forward(latents, sigma, cond, guidance_scale)

    @contextmanager
    def reference(self):
        with super().reference():
            self._in_reference = True
            try:
                yield
            finally:
                self._in_reference = False


#: the last CountingTinyBackbone built (the trainer builds its own; the test reads it afterwards)
LAST_COUNTING: list[CountingTinyBackbone] = []


def make_counting_backbone(params, ctx):
    bb = CountingTinyBackbone(**params)
    LAST_COUNTING[:] = [bb]
    return bb
