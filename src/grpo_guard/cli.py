"""The ``grpo-guard`` command line: thin verbs that parse, call the library and print.

Each verb imports what it runs inside its own function: torch, diffusers and the model code take seconds
to import, which ``grpo-guard --help``, a usage error or ``grpo-guard prompts`` should not wait for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .cache_entry import atomic_write_text
from .errors import UsageError


def _cmd_mechanism(args: argparse.Namespace) -> int:
    from .mechanism import MechanismSettings, format_table, plot_mechanism, simulate_mechanism

    cfg = MechanismSettings(num_steps=args.steps, shift=args.shift, noise_level=args.noise_level,
                            trained_steps=args.trained_steps if args.trained_steps is not None else args.steps - 1,
                            dims=args.dims, samples_per_step=args.samples, velocity_drift=args.velocity_drift,
                            clip_plain=args.clip_plain, clip_guard=args.clip_guard, seed=args.seed)
    try:
        cfg.validate()
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    result = simulate_mechanism(cfg)
    print(format_table(result))
    if out is not None:
        atomic_write_text(out / "mechanism.json", json.dumps(result, indent=1))
        png = out / "mechanism.png"
        tmp = out / "mechanism.tmp.png"
        plot_mechanism(result, tmp)
        os.replace(tmp, png)
        print(f"wrote {out / 'mechanism.json'} and {png}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .train.loop import (OutputWriteError, PreflightError, RunDirError, TrainingInterrupted, TrainingStopped,
                             train)

    if args.resume and args.config:
        raise UsageError("--resume and --config are exclusive (a resumed run keeps its own config.yaml)")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"--resume: {run_dir} holds no run (no config.yaml)")
        config_source, resume = str(run_dir / "config.yaml"), True
    else:
        if not args.output_dir:
            raise UsageError("--output-dir is required (or --resume RUN_DIR)")
        run_dir, config_source, resume = Path(args.output_dir), args.config or "grpo_guard", False
    try:
        cfg = load_config(config_source, args.set)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    try:
        train(cfg, run_dir, resume=resume, log=lambda msg: print(msg, file=sys.stderr))
    except (RunDirError, ConfigError) as e:
        raise UsageError(str(e)) from None
    except ValueError as e:  # bad parameters found while building components
        raise UsageError(str(e)) from None
    except PreflightError as e:
        print(f"grpo-guard train: preflight failed: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"grpo-guard train: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    except OutputWriteError as e:
        print(f"grpo-guard train: {e}", file=sys.stderr)
        return 1
    except TrainingStopped as e:
        print(f"grpo-guard train: {e}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"run finished: {run_dir} (summary.json, metrics.jsonl, images/, checkpoints/, best/)")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import time

    import torch

    from .backbones import BackboneContext, build_backbone
    from .config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set)
    except ConfigError as e:
        raise UsageError(str(e)) from None
    t0 = time.perf_counter()
    try:
        backbone = build_backbone(cfg.backbone.name, cfg.backbone.params,
                                  BackboneContext(Path(cfg.cache_dir).expanduser(), torch.device("cpu"), cfg.seed))
    except ValueError as e:
        raise UsageError(str(e)) from None
    n_train = sum(p.numel() for p in backbone.trainable_parameters())
    print(f"backbone {cfg.backbone.name} ready in {time.perf_counter() - t0:.1f} s: latent {tuple(backbone.latent_shape)}"
          f", {n_train} trainable parameters")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    try:
        path = build_report(args.run_dirs, Path(args.out), title=args.title, baseline=args.baseline)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"report: {path}")
    return 0


def _stopped(command: str, e: Exception, how_to_continue: str) -> int:
    """A run of a demo or study stopped: one line, and the exit code ``grpo-guard train`` would give."""
    from .train.loop import TrainingInterrupted

    if isinstance(e, TrainingInterrupted):
        print(f"grpo-guard {command}: {e}; {how_to_continue}", file=sys.stderr)
        return 128 + int(e.signum)
    print(f"grpo-guard {command}: {e}", file=sys.stderr)
    return 1


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .config import ConfigError
    from .demo import DemoSettings, run_demo
    from .train.loop import TrainingStopped

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise UsageError(f"--out: {out} is not empty (use another directory, or --resume to finish an interrupted demo)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    settings = DemoSettings(out=out, seeds=tuple(range(args.seeds)), epochs=args.epochs, quick=args.quick,
                            overrides=args.set, workers=args.workers)
    t0 = time.perf_counter()
    try:
        report = run_demo(settings, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ConfigError, ValueError) as e:
        raise UsageError(str(e)) from None
    except TrainingStopped as e:
        return _stopped("demo", e, "run the same command with --resume to continue")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; open the report: {report}")
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import ConfigError, load_config
    from .study import ARMS, PRESETS, run_study
    from .train.loop import TrainingStopped

    if args.preset not in PRESETS:
        raise UsageError(f"--preset: unknown preset {args.preset!r} (known: {', '.join(PRESETS)})")
    plan = PRESETS[args.preset]
    if args.arms:
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        bad = [a for a in arms if a not in ARMS]
        if bad or not arms:
            raise UsageError(f"--arms: unknown arm {bad[0] if bad else '(none)'!r} (known: {', '.join(ARMS)})")
        if plan.baseline not in arms:
            arms.insert(0, plan.baseline)  # gold at matched proxy is measured against the baseline
        plan = dataclasses.replace(plan, arms=arms)
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise UsageError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
        plan = dataclasses.replace(plan, seeds=seeds)
    if args.conditions:
        names = [c.strip() for c in args.conditions.split(",") if c.strip()]
        known = {c.name: c for c in plan.conditions}
        bad = [c for c in names if c not in known]
        if bad or not names:
            raise UsageError(f"--conditions: unknown condition {bad[0] if bad else '(none)'!r} "
                             f"(known: {', '.join(known)})")
        plan = dataclasses.replace(plan, conditions=[known[c] for c in names])
    try:  # validate every run's config before anything is written
        for cond in plan.conditions:
            for arm in plan.arms_of(cond):
                load_config(arm, [*plan.world, *cond.overrides, *args.set])
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    workers = args.workers or (os.cpu_count() or 1)
    try:
        md = run_study(plan, Path(args.out), extra=args.set, workers=workers,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except TrainingStopped as e:
        return _stopped("study", e, "run the same command again to continue")
    print(f"study finished; summary: {md}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .train.checkpoint import CheckpointError
    from .train.standalone import export_run

    try:
        written = export_run(Path(args.run_dir), Path(args.out), merge=args.merge,
                             checkpoint=Path(args.checkpoint) if args.checkpoint else None, use_ema=not args.no_ema)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        raise UsageError(str(e)) from None
    print(f"exported to {args.out}: " + ", ".join(p.name for p in written))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchError, format_table, run_bench
    from .config import ConfigError, load_config

    if args.epochs < 2:
        raise UsageError(f"--epochs: need at least 2 (the first is warm-up), got {args.epochs}")
    try:
        load_config("grpo_guard", args.set)  # bad overrides fail here, in one line, before any run starts
    except ConfigError as e:
        raise UsageError(str(e)) from None
    try:
        res = run_bench(Path(args.out), epochs=args.epochs, quick=args.quick, overrides=args.set,
                        settings=[n.strip() for n in args.settings.split(",") if n.strip()] if args.settings else None,
                        log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (BenchError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(format_table(res))
    print(f"wrote {Path(args.out) / 'bench.json'} and {Path(args.out) / 'bench.png'}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .config import ConfigError, load_config
    from .plan import format_plan, plan_recipe

    try:
        cfg = load_config(args.config, args.set, check_files=False)
        plan = plan_recipe(cfg, args.config, gpus=args.gpus, gpu_mem_gib=args.gpu_mem)
    except (ConfigError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(json.dumps(plan.to_dict(), indent=1) if args.json else format_plan(plan))
    return 0 if plan.fits else 1


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train.checkpoint import CheckpointError
    from .train.standalone import checkpoint_gold_lines, evaluate_checkpoint, paper_table_markdown, run_dir_of

    try:
        result = evaluate_checkpoint(Path(args.checkpoint), samples_per_prompt=args.samples_per_prompt,
                                     use_ema=not args.no_ema, protocol=args.protocol, prompts=args.prompts)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        raise UsageError(str(e)) from None
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out), text)
    if args.protocol == "paper":  # the paper's table beside the run, as JSON and Markdown
        run = run_dir_of(Path(args.checkpoint))
        table = paper_table_markdown(result["paper_table"], Path(args.checkpoint))
        atomic_write_text(run / "paper_eval.json", json.dumps(result["paper_table"], indent=1))
        atomic_write_text(run / "paper_eval.md", table)
        print(table + f"(written to {run / 'paper_eval.md'} and paper_eval.json)", file=sys.stderr)
    # the same gold lines as a run's summary, for a reader (stdout stays the JSON)
    for line in checkpoint_gold_lines(result, Path(args.checkpoint)):
        print(line, file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grpo-guard",
        description="Flow-GRPO and GRPO-Guard for flow-matching image generators, with diagnostics.",
    )
    parser.add_argument("--version", action="version", version=f"grpo-guard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "mechanism",
        help="simulate the importance-ratio mechanism (left shift, one-sided clipping, gradient imbalance) "
             "on a synthetic Gaussian policy and print per-step statistics",
        description="Monte-Carlo of Flow-GRPO's raw ratio vs GRPO-Guard's RatioNorm per denoising step for a "
                    "given latent size and schedule; no model or data needed.",
    )
    p.add_argument("--steps", type=int, default=10, help="sampling steps K (default 10)")
    p.add_argument("--trained-steps", type=int, default=None, help="trained steps (default K - 1)")
    p.add_argument("--shift", type=float, default=3.0, help="schedule shift (default 3, SD3)")
    p.add_argument("--noise-level", type=float, default=0.7, help="SDE noise level a (default 0.7)")
    p.add_argument("--dims", type=int, default=16 * 64 * 64, help="latent dimensions D (default 65536)")
    p.add_argument("--samples", type=int, default=256, help="samples per step (default 256)")
    p.add_argument("--velocity-drift", type=float, default=0.01,
                   help="rms change of the velocity between rollout and update policy (default 0.01)")
    p.add_argument("--clip-plain", type=float, default=1e-4, help="Flow-GRPO clip range (default 1e-4)")
    p.add_argument("--clip-guard", type=float, default=2e-6, help="RatioNorm clip range (default 2e-6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="directory for mechanism.json and mechanism.png")
    p.set_defaults(func=_cmd_mechanism)

    from .config import available_configs

    p = sub.add_parser("train", help="train a backbone with Flow-GRPO / GRPO-Guard (or resume a run)",
                       description="Online RL of a flow-matching generator. Built-in configs: "
                                   + ", ".join(available_configs()) + ".")
    p.add_argument("--config", help="built-in config name or a YAML path (default: grpo_guard)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable; values parsed as YAML)")
    p.add_argument("--output-dir", help="run directory (must be new or empty)")
    p.add_argument("--resume", metavar="RUN_DIR", help="resume the run in RUN_DIR from its last valid checkpoint")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("pretrain", help="pretrain (or load from the cache) the base model of a config's backbone",
                       description="Builds the backbone of a config: for the toy world this trains the base "
                                   "generator by flow matching on the digits' base split (seeded) and caches it "
                                   "under cache_dir; later runs load it.")
    p.add_argument("--config", default="grpo_guard", help="config name or YAML path (default: grpo_guard)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("report", help="build report.html with figures from run directories",
                       description="Groups runs into methods (runs differing only in seed are one method; "
                                   "LABEL=RUN_DIR names a method), draws the figures and writes OUT/report.html.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (optionally LABEL=RUN_DIR)")
    p.add_argument("--out", required=True, help="output directory for report.html and figures/")
    p.add_argument("--title", default=None)
    p.add_argument("--baseline", default=None, metavar="LABEL",
                   help="the method the others are compared with (default: Flow-GRPO when present, else the first)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("demo", help="train Flow-GRPO and GRPO-Guard on the toy world and build the report",
                       description="Makes or loads the toy base model, trains Flow-GRPO and GRPO-Guard with the same "
                                   "proxy reward and seeds, and writes OUT/report.html.")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per method (default 2)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the configs')")
    p.add_argument("--quick", action="store_true", help="a small-D world and 4 epochs (a smoke test, for CI)")
    p.add_argument("--resume", action="store_true", help="finish an interrupted demo in --out")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained at once, each in its own process (default: one per run up to the number of "
                        "cores; 1 = one after the other in this process)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("study", help="run a reproduction study: arms x conditions x seeds, clips calibrated per arm",
                       description="Calibrates each arm's clip range on its own ratio spread, trains every arm for "
                                   "every condition and seed, and writes OUT/study.md, OUT/study.json and a "
                                   "report per condition. Re-running finishes an interrupted study.")
    p.add_argument("--preset", required=True, help="digits, spectral, map, regime, text or tiny (see docs/results.md)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--arms", default=None, help="comma-separated subset of the preset's arms")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's, 0,1,2)")
    p.add_argument("--conditions", default=None, help="comma-separated subset of the preset's conditions")
    p.add_argument("--workers", type=int, default=None,
                   help="runs trained at once, each in its own process (default: the number of cores; 1 = one "
                        "after the other in this process)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value in every run")
    p.set_defaults(func=_cmd_study)

    p = sub.add_parser("export", help="export a run's LoRA (or merged weights) for diffusers",
                       description="Writes the trained LoRA of an sd3 / flux run in the layout that "
                                   "StableDiffusion3Pipeline / FluxPipeline .load_lora_weights(OUT) loads "
                                   "(pytorch_lora_weights.safetensors); --merge also writes OUT/merged, the whole "
                                   "pipeline with the LoRA fused (from_pretrained(OUT/merged)).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="a new (or empty) output directory")
    p.add_argument("--merge", action="store_true", help="also write the full pipeline with the LoRA merged")
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory (default: the newest valid one; "
                                                      "RUN/best for the best-gold weights)")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even when EMA weights exist")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="speed and memory: epoch time vs the model's own compute and a reference loop",
                       description="Runs the benchmark settings (toy worlds, tiny SD3 at 64 and 128 px) in "
                                   "subprocesses and prints epoch time, throughput, the floor (the network calls "
                                   "alone), overhead, a Flow-GRPO-style reference loop, scaling, memory over 200 "
                                   "epochs and the SDE window; writes OUT/bench.json and a figure, OUT/bench.png. "
                                   "It measures on the device training uses (CUDA when torch sees one, else the "
                                   "CPU). Run it alone on the machine.")
    p.add_argument("--out", default="runs/bench", help="output directory (default runs/bench)")
    p.add_argument("--epochs", type=int, default=6,
                   help="epochs per measurement (default 6; the first is warm-up, the median of the rest is "
                        "reported; toy-mlp-8px, whose epochs take 0.2 s, runs 5 times as many)")
    p.add_argument("--quick", action="store_true", help="one small setting only (a smoke test)")
    p.add_argument("--settings", default=None, metavar="NAME[,NAME...]",
                   help="measure only these settings (floor, in situ, paired reference loop), without the sweeps, "
                        "the SDE window and the memory run; e.g. sd3-tiny-64px,sd3-tiny-128px for a short GPU "
                        "session (an unknown name is refused with the list of known ones)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override applied to every measured run (e.g. cache_dir=/tmp/cache); repeatable")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("plan", help="check that a GPU recipe fits its GPUs before any GPU hour is spent",
                       description="Builds the recipe's transformer, VAE and text encoders from their published "
                                   "configurations on the meta device (no weights downloaded), applies its LoRA, "
                                   "and prints parameter counts and the per-rank memory of weights, optimizer "
                                   "state, reward models, rollout and update, whether it fits, and the largest "
                                   "train.max_forward_rows that does. Exit code 0 when it fits, 1 when not.")
    p.add_argument("--config", required=True, help="a GPU recipe (e.g. sd35m_grpo_guard_ocr) or its YAML file")
    p.add_argument("--gpus", type=int, default=1, help="GPUs (processes) the run uses (default 1)")
    p.add_argument("--gpu-mem", type=float, default=80.0, metavar="GIB", help="memory of each GPU in GiB (default 80)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override (e.g. train.max_forward_rows=8); repeatable")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)

    from .rewards.server import add_serve_reward_parser

    add_serve_reward_parser(sub)

    p = sub.add_parser("eval", help="evaluate a checkpoint on the run's fixed evaluation set",
                       description="Loads RUN/checkpoints/epoch_N (or RUN/best) with its run's config, samples the "
                                   "evaluation set and prints proxy and gold metrics as JSON.")
    p.add_argument("checkpoint", help="a checkpoint directory (RUN/checkpoints/epoch_N or RUN/best)")
    p.add_argument("--samples-per-prompt", type=int, default=None, help="override eval.samples_per_prompt")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights even when the checkpoint has EMA")
    p.add_argument("--protocol", choices=("run", "paper"), default="run",
                   help="run: as the run evaluated (default); paper: the ODE sampler at 40 steps, and the table "
                        "the paper reports for the run's task (GenEval per family and overall, OCR accuracy, "
                        "PickScore, the golds), written to RUN/paper_eval.md and .json")
    p.add_argument("--prompts", help="evaluate on this prompt file (of the run's prompt source kind, e.g. the "
                                     "test split) instead of the run's")
    p.add_argument("--out", help="also write the JSON here")
    p.set_defaults(func=_cmd_eval)
    _add_prompts_parser(sub)
    return parser


def _cmd_prompts(args: argparse.Namespace) -> int:
    from .prompt_sets import GENERATORS, write_jsonl

    try:
        rows = GENERATORS[args.task](args.n, seed=args.seed, split=args.split)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        write_jsonl(rows, args.out)
    except OSError as e:
        raise UsageError(f"--out: cannot write {args.out} ({e.strerror or e})") from None
    print(f"wrote {len(rows)} {args.task} prompts ({args.split} split, seed {args.seed}) to {args.out}; train on "
          f"them with --set \"prompts={{source: jsonl, path: {args.out}}}\"")
    return 0


def _add_prompts_parser(sub) -> None:
    p = sub.add_parser("prompts", help="write a prompt set with metadata (JSONL) for the paper's tasks",
                       description="GenEval's six task families over the 80 COCO classes (geneval), or scenes with "
                                   "a quoted text of 1-4 words (ocr), seeded, with a fixed train / test split by "
                                   "prompt; one JSON object per line, the prompt and its metadata.")
    p.add_argument("task", choices=["geneval", "ocr"])
    p.add_argument("--n", type=int, default=1000, help="number of distinct prompts (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", choices=["train", "test", "all"], default="train",
                   help="which split's prompts (default train; test holds about 20%% of all prompts)")
    p.add_argument("--out", required=True, help="the JSONL file to write")
    p.set_defaults(func=_cmd_prompts)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from .malloc import tune_glibc_malloc

    tune_glibc_malloc()  # large tensors' memory reused instead of page-faulted in at every call (CPU)
    from . import stopping

    try:
        with stopping.installed():  # SIGINT / SIGTERM: one mechanism for every phase (grpo_guard/stopping.py)
            return args.func(args)
    except UsageError as e:
        print(f"grpo-guard {args.command}: error: {e}", file=sys.stderr)
        return 2
    except stopping.StopRequested as e:
        print(f"grpo-guard {args.command}: {e}; {_AFTER_STOP.get(args.command, 'run the same command again')}",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print(f"grpo-guard {args.command}: interrupted", file=sys.stderr)
        return 130


#: what the one-line message of a stop tells the user to do next, per command
_AFTER_STOP = {
    "train": "nothing of that phase was kept: the same command redoes it (--resume RUN_DIR continues a run "
             "from its last checkpoint)",
    "demo": "run the same command with --resume to continue",
    "study": "run the same command again to continue",
    "pretrain": "nothing was kept: the same command redoes it",
}


if __name__ == "__main__":
    sys.exit(main())
