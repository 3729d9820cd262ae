"""SD3 and Flux through diffusers, on tiny random pipelines saved with save_pretrained and loaded back
through the real from_pretrained path: sampler = pipeline, a training epoch with the preflight, export."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo_guard.backbones import BackboneContext, build_backbone
from grpo_guard.backbones.flux import pack_latents, unpack_latents
from grpo_guard.backbones.tiny_pipelines import save_tiny_pipeline
from grpo_guard.cli import main
from grpo_guard.config import load_config
from grpo_guard.core import sde_step
from grpo_guard.train.loop import train

torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent
GUIDANCE = {"sd3": 4.5, "flux": 3.5}


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipes")
    return {kind: save_tiny_pipeline(kind, root / kind) for kind in ("sd3", "flux")}


def _backbone(pipes, kind, **params):
    return build_backbone(kind, {"pretrained": str(pipes[kind]), "resolution": 64, "lora_rank": 4, "lora_alpha": 8,
                                 **params}, BackboneContext(Path("/nonexistent"), torch.device("cpu")))


def _ode(bb, cond, x0, num_steps, guidance):
    sig = bb.sigmas(num_steps, 3.0)
    x = x0.clone()
    with torch.no_grad():
        for k in range(num_steps):
            v = bb(x, sig[k].expand(x.shape[0]), cond, guidance)
            x = sde_step(v, x, sig[k], sig[k + 1], 0.0).next_state
    return x


def _pipeline_latents(bb, kind, cond, x0, num_steps, guidance, pipe=None):
    pipe = pipe or bb.pipe
    with torch.no_grad():
        if kind == "sd3":
            return pipe(prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled,
                        negative_prompt_embeds=cond.null_embeds, negative_pooled_prompt_embeds=cond.null_pooled,
                        latents=x0, num_inference_steps=num_steps, guidance_scale=guidance, height=64, width=64,
                        output_type="latent").images
        out = pipe(prompt_embeds=cond.embeds, pooled_prompt_embeds=cond.pooled, latents=pack_latents(x0),
                   num_inference_steps=num_steps, guidance_scale=guidance, height=64, width=64,
                   output_type="latent").images
        return unpack_latents(out, 8, 8)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_sampler_at_noise_level_0_equals_the_diffusers_pipeline(pipes, kind):
    bb = _backbone(pipes, kind).eval()
    cond = bb.encode_prompts(["a red cat", "a blue dog", "a red cat"])
    x0 = torch.randn(3, *bb.latent_shape, generator=torch.Generator().manual_seed(0))
    ours = _ode(bb, cond, x0, 6, GUIDANCE[kind])
    theirs = _pipeline_latents(bb, kind, cond, x0, 6, GUIDANCE[kind])
    assert float(ours.abs().max()) > 0.5
    assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
    # the prompt cache gives the same rows as a fresh encoding, and the same prompt the same row
    assert torch.equal(cond.embeds[0], cond.embeds[2])
    assert len(bb._prompt_cache) == 2


def test_flux_pack_unpack_round_trip():
    x = torch.randn(2, 16, 8, 6)
    assert pack_latents(x).shape == (2, 12, 64)
    assert torch.equal(unpack_latents(pack_latents(x), 8, 6), x)


def _train_cfg(pipes, kind, tmp_path, *extra):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\na green tree\n")
    return load_config("grpo_guard", [
        f"backbone={{name: {kind}, params: {{pretrained: '{pipes[kind]}', resolution: 64, lora_rank: 4, "
        f"lora_alpha: 8}}}}",
        f"prompts={{source: file, path: '{prompts}'}}", "rewards=[{name: 'tiny_backbone:make_brightness_reward'}]",
        "eval.evaluator=null", "eval.every=1", "eval.samples_per_prompt=2", f"sample.guidance_scale={GUIDANCE[kind]}",
        "sample.num_steps=4", "sample.prompts_per_epoch=2", "sample.group_size=4", "sample.batch_size=8",
        "train.epochs=2", "train.lr=1e-2", "log.progress=false", "log.image_every=1", f"cache_dir={tmp_path / 'c'}",
        "train.grad_norm_every=1", "train.grad_norm_samples=2", *extra])


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_a_training_run_with_the_preflight_and_its_export(pipes, kind, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(TESTS))
    run = tmp_path / "run"
    train(_train_cfg(pipes, kind, tmp_path), run, log=lambda *_: None)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["preflight_max_abs_log_ratio"] <= 1e-5  # rollout and training compute the same log-probs
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert len(rows[0]["grad_norm_step"]) == 3 and (run / "images" / "epoch_0001.png").is_file()
    ckpt = sorted((run / "checkpoints").iterdir())[-1]
    lora = load_file(ckpt / "trainable.safetensors")
    assert lora and all("lora_" in k for k in lora)
    assert any(float(v.abs().max()) > 0 for k, v in lora.items() if "lora_B" in k)  # trained away from zero

    # export: the LoRA loads into the plain diffusers pipeline and reproduces the trained backbone
    out = tmp_path / "export"
    assert main(["export", str(run), "--out", str(out), "--merge"]) == 0
    assert (out / "pytorch_lora_weights.safetensors").is_file() and (out / "merged").is_dir()
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline
    trained = _backbone(pipes, kind).eval()
    trained.load_trainable_state_dict(lora)
    cond = trained.encode_prompts(["a red cat", "a blue dog"])
    x0 = torch.randn(2, *trained.latent_shape, generator=torch.Generator().manual_seed(1))
    ours = _ode(trained, cond, x0, 4, GUIDANCE[kind])
    base = cls.from_pretrained(pipes[kind])
    before = _pipeline_latents(trained, kind, cond, x0, 4, GUIDANCE[kind], pipe=base)
    base.load_lora_weights(out)
    after = _pipeline_latents(trained, kind, cond, x0, 4, GUIDANCE[kind], pipe=base)
    assert float((after - before).abs().max()) > 1e-4  # the LoRA changes the pipeline's output
    assert torch.allclose(after, ours, atol=1e-4), float((after - ours).abs().max())
    merged = cls.from_pretrained(out / "merged")
    assert torch.allclose(_pipeline_latents(trained, kind, cond, x0, 4, GUIDANCE[kind], pipe=merged), ours, atol=1e-4)
    # a second export into the same directory is refused, nothing changed
    assert main(["export", str(run), "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_kl_reference_is_the_base_model(pipes):
    bb = _backbone(pipes, "sd3")
    for name, p in bb.transformer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    cond = bb.encode_prompts(["a red cat"])
    x = torch.randn(1, *bb.latent_shape)
    s = torch.full((1,), 0.5)
    with torch.no_grad():
        v = bb(x, s, cond, 4.5)
        with bb.reference():
            v_ref = bb(x, s, cond, 4.5)
        base = _backbone(pipes, "sd3")
        assert torch.allclose(v_ref, base(x, s, base.encode_prompts(["a red cat"]), 4.5), atol=1e-6)
    assert not torch.allclose(v, v_ref)
    assert all(p.requires_grad for n, p in bb.transformer.named_parameters() if "lora_" in n)


def test_full_finetune_and_gradient_checkpointing(pipes):
    bb = _backbone(pipes, "flux", full_finetune=True, gradient_checkpointing=True).train()
    n_all = sum(p.numel() for p in bb.transformer.parameters())
    assert sum(p.numel() for p in bb.trainable_parameters()) == n_all
    cond = bb.encode_prompts(["a cat"])
    x = torch.randn(2, *bb.latent_shape)
    v = bb(x, torch.full((2,), 0.7), cond.repeat_interleave(2), 3.5)
    v.square().mean().backward()
    assert all(p.grad is not None for p in bb.trainable_parameters())


def test_bad_backbone_options_are_one_line_errors(pipes, tmp_path):
    ctx = BackboneContext(Path("/nonexistent"), torch.device("cpu"))
    with pytest.raises(ValueError, match="pretrained: required"):
        build_backbone("sd3", {}, ctx)
    with pytest.raises(ValueError, match="lora_rnak"):
        build_backbone("sd3", {"pretrained": str(pipes["sd3"]), "lora_rnak": 4}, ctx)
    with pytest.raises(ValueError, match=r"cannot load '.*nowhere' as a StableDiffusion3Pipeline") as e:
        build_backbone("sd3", {"pretrained": str(tmp_path / "nowhere")}, ctx)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="resolution"):
        build_backbone("flux", {"pretrained": str(pipes["flux"]), "resolution": 60}, ctx)
