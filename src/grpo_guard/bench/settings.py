"""What ``grpo-guard bench`` measures and what counts as met: the settings (a built-in config and its
overrides each), the measurement specs made from them, the targets and the results table."""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["SETTINGS", "PROMPTS", "EPOCH_FACTOR", "BenchError", "make_spec", "prepare_out", "setting_spec",
           "OVERHEAD_TARGET", "REFERENCE_TARGET", "WINDOW_TOLERANCE", "GROUP_EXPONENT_TARGET", "targets",
           "format_table", "LOSS_TOLERANCE", "MEMORY_WARMUP_EPOCHS"]

#: identical losses, ours against the reference-style loop: the largest absolute difference allowed in float32
LOSS_TOLERANCE = 1e-5

#: the memory run's warm-up: RSS is also sampled at this epoch, and flatness is judged from it on (the
#: run's first minibatch trains one step per call until the memory bound's bytes per row are measured,
#: so the allocator reaches its working size during the first epochs, as every timing drops epoch 0)
MEMORY_WARMUP_EPOCHS = 5


class BenchError(RuntimeError):
    """A measurement's subprocess failed; the message names the setting and its last error line."""


_COMMON = ["eval.every=0", "train.grad_norm_every=0", "log.image_every=0", "log.progress=false",
           "monitor.enabled=false"]


#: the settings whose main measurements (floor and in-situ child, paired child) run this many times the bench's
#: epochs: the MLP world's epochs take about 0.2 s, and the median of five moved between 1.08 and 1.13 from
#: run to run (in-situ overhead), where 60-epoch runs of the same code agree within 0.005
EPOCH_FACTOR: dict[str, int] = {"toy-mlp-8px": 5}


#: name -> (config, overrides); ``{tiny_sd3}`` is replaced by a saved tiny SD3 pipeline directory. The toy
#: settings keep the toy configs' memory bound on the training forward (1 GiB of saved activations: a
#: whole minibatch per call in both); the tiny SD3 settings bound it at 128 rows instead: on this CPU,
#: 512-row calls of the diffusers transformer ran slower per row than 32- to 128-row ones (the row sweep
#: below measures it).
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "toy-mlp-8px": ("grpo_guard", ["backbone.params={net: mlp, resolution: 8, layout: pixels, pretrain_steps: 300}",
                                   "sample.prompts_per_epoch=8", "sample.group_size=8"]),
    "toy-sd3-32px": ("grpo_guard", ["backbone.params={net: sd3, resolution: 32, layout: latent16, pretrain_steps: 1000, "
                                    "generator: {batch_size: 64}}", "sample.prompts_per_epoch=4",
                                    "sample.group_size=8", "train.inner_epochs=2"]),
    "sd3-tiny-64px": ("grpo_guard", ["backbone={name: sd3, params: {pretrained: '{tiny_sd3}', resolution: 64, "
                                     "lora_rank: 8, lora_alpha: 16}}", "sample.guidance_scale=4.5",
                                     "prompts={source: file, path: '{prompts}'}",
                                     "rewards=[{name: jpeg_compressibility}]", "eval.evaluator=null",
                                     "sample.prompts_per_epoch=4", "sample.group_size=8",
                                     "train.max_forward_rows=128", "train.max_forward_mb=0"]),
    "sd3-tiny-128px": ("grpo_guard", ["backbone={name: sd3, params: {pretrained: '{tiny_sd3}', resolution: 128, "
                                      "lora_rank: 8, lora_alpha: 16}}", "sample.guidance_scale=4.5",
                                      "prompts={source: file, path: '{prompts}'}",
                                      "rewards=[{name: jpeg_compressibility}]", "eval.evaluator=null",
                                      "sample.prompts_per_epoch=4", "sample.group_size=8",
                                      "train.max_forward_rows=128", "train.max_forward_mb=0"]),
}


PROMPTS = ["a red cube on a table", "two cats on a sofa", "a lighthouse at night", "a bowl of green apples"]


def make_spec(name: str, config: str, setting_overrides: list[str], *, tiny: Path, prompts: Path, epochs: int,
              user_overrides: list[str], **kw) -> dict:
    """One measurement's spec: the setting's overrides with ``{tiny_sd3}`` / ``{prompts}`` filled in, the
    common bench overrides, the epoch count, then the user's overrides (last, so they win)."""
    ov = [o.replace("{tiny_sd3}", str(tiny)).replace("{prompts}", str(prompts)) for o in setting_overrides]
    return {"name": name, "config": config,
            "overrides": [*ov, *_COMMON, f"train.epochs={epochs}", *user_overrides], **kw}


def prepare_out(out: Path, names) -> tuple[Path, Path]:
    """``out`` with what settings ``names`` need: the tiny SD3 pipeline (saved once) and the prompt file;
    returns ``(tiny_sd3_dir, prompts_file)``."""
    from ..backbones.tiny_pipelines import save_tiny_pipeline

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny = out / "tiny_sd3"
    if any("{tiny_sd3}" in " ".join(SETTINGS[n][1]) for n in names) and not (tiny / "model_index.json").is_file():
        save_tiny_pipeline("sd3", tiny)
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return tiny, prompts


def setting_spec(name: str, out: Path, epochs: int, user_overrides: list[str], **kw) -> dict:
    """The spec of bench setting ``name`` (see :func:`make_spec`), with ``out`` prepared for it; the
    ``benchmarks/`` scripts start from it."""
    tiny, prompts = prepare_out(out, [name])
    config, ov = SETTINGS[name]
    return make_spec(name, config, ov, tiny=tiny, prompts=prompts, epochs=epochs, user_overrides=user_overrides,
                     **kw)


#: the bench's targets: in-situ overhead (epoch / the network's time), our epoch over the reference-style
#: loop's, the SDE window's update-time ratio over its trained-step ratio, and the scaling exponent in
#: group size (time and memory at most linear, with room for the machine's spread)
OVERHEAD_TARGET, REFERENCE_TARGET, WINDOW_TOLERANCE, GROUP_EXPONENT_TARGET = 1.10, 0.7, 1.15, 1.1


def targets(res: dict) -> list[tuple[str, str, bool]]:
    """The speed and memory targets against the measured figures: ``(target, figure, met)``."""
    out = []
    for r in res["settings"]:
        if "overhead" in r:
            out.append((f"{r['name']}: overhead <= {OVERHEAD_TARGET:.2f}", f"isolated floor {r['overhead']:.2f}, "
                        f"in situ {r['insitu_overhead']:.2f}", r["insitu_overhead"] <= OVERHEAD_TARGET))
        if "ours_over_reference" in r:
            out.append((f"{r['name']}: epoch <= {REFERENCE_TARGET} x reference loop, identical losses",
                        f"{r['ours_over_reference']:.2f}, max loss diff {r['max_loss_diff']:.1e}"
                        + ("" if r.get("loss_epochs_compared") in (None, r.get("epochs")) else
                           f" (epoch 0 only: {r.get('mixed_precision')})"),
                        r["ours_over_reference"] <= REFERENCE_TARGET
                        and r["max_loss_diff"] <= r.get("loss_tolerance", LOSS_TOLERANCE)))
    for what, key in (("memory", "rss_curve_mb"), ("GPU memory", "gpu_curve_mb")):
        curve = (res.get("memory") or {}).get(key)
        if not curve:  # no memory run, or (GPU) a run on the CPU
            continue
        e_last, last = curve[-1]
        e_base, base = next(((e, m) for e, m in curve[:-1] if e == MEMORY_WARMUP_EPOCHS), curve[0])
        growth = max(m for e, m in curve if e >= e_base) - base
        label = "RSS" if key == "rss_curve_mb" else "allocated"
        out.append((f"{what} flat over epochs {e_base}-{e_last}",
                    f"{label} {curve[0][1]:.0f} MB at epoch 0, {base:.0f} at {e_base} -> {last:.0f} at {e_last} "
                    f"(max {max(m for _, m in curve):.0f})", growth <= max(0.02 * base, 10.0)))
    if res.get("scaling", {}).get("group_size"):
        sc = res["scaling"]["group_size"]
        worst = max(sc["time_exponent"], sc["memory_exponent"])
        out.append(("time and memory at most linear in group size", f"exponents {sc['time_exponent']:.2f} / "
                    f"{sc['memory_exponent']:.2f}", worst <= GROUP_EXPONENT_TARGET))
    if res.get("sde_window"):
        w = res["sde_window"]
        out.append(("SDE window: update time in proportion to trained steps", f"x{w['update_ratio']:.2f} for "
                    f"x{w['steps_ratio']:.2f} steps", w["update_ratio"] <= WINDOW_TOLERANCE * w["steps_ratio"]))
    return out


def format_table(res: dict) -> str:
    devices = sorted({r.get("device", "cpu") for r in res["settings"]})
    lines = [f"device: {', '.join(devices)}", "",
             "| setting | epoch s | rollout s | update s | images/s | trained steps/s | floor s | overhead | "
             "network s (in situ) | in-situ overhead | reference s | ours / reference | max loss diff | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["settings"]:
        floor = r.get("rollout_floor_s", math.nan) + r.get("update_floor_s", math.nan)
        lines.append(f"| {r['name']} | {r['epoch_s']:.3f} | {r['rollout_s']:.3f} | {r['update_s']:.3f} | "
                     f"{r['images_per_s']:.1f} | {r['trained_steps_per_s']:.1f} | {floor:.3f} | "
                     f"{r.get('overhead', math.nan):.2f} | {r['network_s']:.3f} | {r['insitu_overhead']:.2f} | "
                     f"{r.get('ref_epoch_s', math.nan):.3f} | "
                     f"{r.get('ours_over_reference', math.nan):.2f} | {r.get('max_loss_diff', math.nan):.1e} | "
                     f"{r['peak_rss_mb']:.0f}" + (f" (GPU {r['peak_gpu_mb']:.0f})" if r.get("peak_gpu_mb") else "")
                     + " |")
    for axis, sc in res.get("scaling", {}).items():
        pts = ", ".join(f"{p['value']}: {p['epoch_s']:.2f} s / {p['peak_rss_mb']:.0f} MB" for p in sc["points"])
        lines.append(f"\nscaling with {axis}: {pts}; time exponent {sc['time_exponent']:.2f}, "
                     f"memory exponent {sc['memory_exponent']:.2f}")
    if res.get("forward_rows"):
        lines.append("\ntraining-forward row bound (train.max_forward_rows): " + "; ".join(
            f"{p['setting']} {p['max_forward_rows']}: epoch {p['epoch_s']:.2f} s, update {p['update_s']:.2f} s, "
            f"{p['peak_rss_mb']:.0f} MB" for p in res["forward_rows"]))
    if res.get("forward_mb"):
        lines.append("\ntraining-forward memory bound (train.max_forward_mb, toy-sd3-32px): " + "; ".join(
            f"{p['max_forward_mb']} MiB: {p['mb_per_row']:.3g} MiB per row -> {p['rows']} rows, update "
            f"{p['update_s']:.2f} s, {p['peak_rss_mb']:.0f} MB" for p in res["forward_mb"]))
    if res.get("sde_window"):
        w = res["sde_window"]
        ratios = w.get("update_ratio_epochs")
        lines.append(f"\nSDE window [0, 5) vs all steps: update time x{w['update_ratio']:.2f} for trained steps "
                     f"x{w['steps_ratio']:.2f}" + (f" (median of {len(ratios)} epochs in turns: "
                                                   + ", ".join(f"{x:.2f}" for x in ratios) + ")" if ratios else ""))
    for label, key in (("RSS", "rss_curve_mb"), ("GPU memory allocated", "gpu_curve_mb")):
        if (res.get("memory") or {}).get(key):
            lines.append(f"\n{label} over {res['memory']['name'].split('-')[1]} epochs (epoch: MB): "
                         + ", ".join(f"{e}: {mb:.0f}" for e, mb in res["memory"][key]))
    lines.append("\n| target | measured | met |\n|---|---|---|")
    lines += [f"| {t} | {fig} | {'yes' if ok else 'NO'} |" for t, fig, ok in targets(res)]
    return "\n".join(lines)
