"""``grpo-guard plan``: the recipes' real-shape models on the meta device (parameter counts of the published
architectures), the recipes' LoRA targets applied by the backbones' own code, and every GPU recipe planned as
fitting its documented hardware (one 80 GB GPU)."""

from __future__ import annotations

import json

import pytest

from grpo_guard.cli import main
from grpo_guard.config import available_configs, load_config
from grpo_guard.plan import format_plan, meta_backbone, plan_recipe

GPU_RECIPES = [n for n in available_configs() if n.startswith(("sd35m_", "flux_"))]


@pytest.mark.parametrize(("pretrained", "kind", "low", "high"), [
    ("stabilityai/stable-diffusion-3.5-medium", "sd3", 2.4e9, 2.6e9),   # "2.5 B" (with the position table)
    ("stabilityai/stable-diffusion-3.5-large", "sd3", 7.9e9, 8.3e9),    # "8.1 B"
    ("black-forest-labs/FLUX.1-dev", "flux", 11.8e9, 12.1e9),           # "12 B"
])
def test_published_architectures_have_their_known_sizes(pretrained, kind, low, high):
    bb, arch = meta_backbone(kind, {"pretrained": pretrained, "dtype": "bfloat16"})
    tr = bb.transformer
    total = sum(p.numel() for p in tr.parameters()) + sum(b.numel() for b in tr.buffers())
    assert low <= total <= high, total / 1e9
    assert all(p.is_meta for p in bb.parameters())  # nothing allocated
    assert {p.dtype for p in bb.trainable_parameters()} == {__import__("torch").float32}  # LoRA kept in float32
    if kind == "sd3":
        t5 = bb.text_encoders[2]
        assert 4.7e9 <= sum(p.numel() for p in t5.parameters()) <= 4.8e9  # T5-XXL's encoder


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_every_gpu_recipe_fits_one_80_gb_gpu(name, capsys):
    assert main(["plan", "--config", name, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["largest_max_forward_rows"] >= plan["max_forward_rows"] >= 1
    assert plan["lora_targets_matched"] > 100 and plan["trainable_params"] > 1e7
    assert plan["activations_per_row_checkpointed"] < plan["activations_per_row"] / 5
    assert plan["total"] == pytest.approx(plan["weights"] + plan["trainable_state"] + plan["reward_models"]
                                          + max(plan["rollout"], plan["update"]))


def test_plan_says_when_a_recipe_does_not_fit(capsys):
    assert main(["plan", "--config", "flux_grpo_guard_ocr", "--gpu-mem", "24", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] is False and plan["largest_max_forward_rows"] == 0 and plan["gpu_mem_gib"] == 24
    # sharding the transformer over 8 GPUs lowers each rank's weights
    one = plan_recipe(load_config("flux_grpo_guard_ocr", check_files=False), "x")
    eight = plan_recipe(load_config("flux_grpo_guard_ocr", ["train.fsdp=true"], check_files=False), "x", gpus=8)
    assert eight.weights < one.weights / 2 and eight.rollout < one.rollout
    text = format_plan(eight)
    assert "on 8 x 80 GiB" in text and "fits;" in text


@pytest.mark.parametrize(("args", "fragment"), [
    (["--config", "grpo_guard"], "the 'toy' backbone has no published architecture"),
    (["--config", "sd35m_grpo_guard_ocr", "--set", "backbone.params.lora_targets=[attn.to_qq]"],
     "lora_targets: ['attn.to_qq'] do not fit this transformer"),
    (["--config", "sd35m_grpo_guard_ocr", "--set", "backbone.params.pretrained=someone/sd3-finetune"],
     "no published architecture known for 'someone/sd3-finetune'"),
    (["--config", "sd35m_grpo_guard_ocr", "--gpus", "0"], "--gpus must be >= 1"),
])
def test_bad_plans_are_one_line_errors(args, fragment, capsys):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
