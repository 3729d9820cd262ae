"""The report tells every world's result: for tiny runs of the spectral world, the digits world's golds and a
tiny SD3 pipeline, Flow-GRPO against GRPO-Guard at matched proxy on the primary gold at the top, every
image link resolving, and no panel that is empty or a placeholder."""

import re
from pathlib import Path

import pytest
import torch

from grpo_guard.backbones.tiny_pipelines import save_tiny_pipeline
from grpo_guard.config import load_config
from grpo_guard.report import build_report
from grpo_guard.report import figures as report_figures
from grpo_guard.study import PRESETS
from grpo_guard.train.loop import train

TESTS = Path(__file__).resolve().parent
METHODS = {"flow_grpo": "Flow-GRPO", "grpo_guard": "GRPO-Guard"}


def train_pairs(root: Path, overrides: list[str], seeds=(0, 1)) -> list[Path]:
    """Flow-GRPO and GRPO-Guard, each seed, with the same world ``overrides`` (one torch thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = []
        for method in METHODS:
            for seed in seeds:
                cfg = load_config(method, [*overrides, f"seed={seed}", "log.progress=false", f"cache_dir={root / 'c'}"])
                runs.append(train(cfg, root / f"{method}_s{seed}", log=lambda *_: None))
        return runs
    finally:
        torch.set_num_threads(threads)


def report_of(runs: list[Path], out: Path, monkeypatch) -> tuple[str, list[str]]:
    """The report's page, and the placeholder notes any figure wrote (none is expected)."""
    notes = []
    monkeypatch.setattr(report_figures, "figure_note", lambda ax, text: notes.append(text))
    page = build_report(runs, out).read_text()
    return page, notes


def check_report(page: str, out: Path, notes: list[str], primary_label: str, images: bool) -> None:
    assert notes == []  # no figure panel said "nothing to plot"
    srcs = re.findall(r'<img src="([^"]+)"', page)
    assert srcs and all((out / s).is_file() and (out / s).stat().st_size > 1000 for s in srcs), srcs
    headline = page[page.index("<h2>Headline</h2>"):page.index("<h2>Summary</h2>")]
    assert primary_label in headline
    row = re.search(r"<tr><td class=\"l\">GRPO-Guard</td><td>([\d.]+)</td><td>([^<]+)</td><td>([^<]+)</td>"
                    r"<td><b>([^<]+)</b></td>", headline)
    assert row, headline  # GRPO-Guard against Flow-GRPO at a matched gain, with a paired difference
    assert float(row.group(1)) > 0 and re.fullmatch(r"[+-]\d+\.\d{3} ± \d+\.\d{3}( \([+-][\d.]+%\))?", row.group(4))
    assert "\u2014" not in headline and "n/a" not in headline
    for gone in ("No matched-proxy comparison", "no proxy gain", "No gold metric", "no gold logged"):
        assert gone not in page
    assert ('figures/image_stats.png' in page) == images  # image statistics only where samples are pictures
    assert ("Images over training" in page) == images


def test_the_spectral_world_report_headlines_the_true_attribute(tmp_path, monkeypatch):
    world = [*PRESETS["tiny"].world, "loss.clip_range=1e-3"]
    runs = train_pairs(tmp_path, world)
    page, notes = report_of(runs, tmp_path / "report", monkeypatch)
    check_report(page, tmp_path / "report", notes, "true attribute g", images=False)
    assert "read raw" in page  # its base value is near 0: no "base = 1" reading
    for dup in ("spectral_attribute", "spectral_exploit"):  # the gold rewards duplicate the evaluator's metrics
        assert f"{dup} " not in page.split("<h2>Runs</h2>")[0]


def test_the_digits_world_report_headlines_the_normalised_gold(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    world = ["backbone={name: 'tiny_backbone:make_tiny_backbone', params: {}}", "rewards=[{name: ink}]",
             "eval.evaluator=toy_gold",
             "eval.samples_per_prompt=2", "eval.every=1", "sample.prompts_per_epoch=4", "sample.group_size=4",
             "sample.guidance_scale=2.0", "train.epochs=3", "train.lr=3e-3", "log.checkpoint_every=0",
             "log.image_every=1"]
    runs = train_pairs(tmp_path, world)
    page, notes = report_of(runs, tmp_path / "report", monkeypatch)
    check_report(page, tmp_path / "report", notes, "normalised gold, average", images=True)
    assert "Frechet distance \u2191 (base = 1)" in page  # lower-is-better FD, read as base / value


@pytest.mark.slow
def test_a_tiny_sd3_report_reads_a_negative_gold_raw(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    pipe = save_tiny_pipeline("sd3", tmp_path / "sd3")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na blue dog\n")
    world = [f"backbone={{name: sd3, params: {{pretrained: '{pipe}', resolution: 64, lora_rank: 4, lora_alpha: 8}}}}",
             f"prompts={{source: file, path: '{prompts}'}}", "eval.evaluator=null",
             "rewards=[{name: 'tiny_backbone:make_darkness_reward'}, {name: jpeg_compressibility, role: gold}]",
             "eval.every=1", "eval.samples_per_prompt=2", "sample.num_steps=4", "sample.prompts_per_epoch=2",
             "sample.group_size=4", "sample.batch_size=8", "train.epochs=6", "train.lr=1e-1", "log.image_every=2",
             "loss.clip_range=1e-3", "train.grad_norm_every=1", "train.grad_norm_samples=2"]
    runs = train_pairs(tmp_path, world)
    page, notes = report_of(runs, tmp_path / "report", monkeypatch)
    check_report(page, tmp_path / "report", notes, "jpeg compressibility", images=True)
