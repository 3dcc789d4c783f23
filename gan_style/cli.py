"""The ``gan-style`` command: train | translate | bench | download | stylize."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_METHOD = "cyclegan"
DEFAULT_PRESET = "demo"
RECIPE_KEYS = ("method", "preset")


def _build_config(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The method class and its config from: recipe YAML < --data < --set."""
    from gan_style.config import load_yaml, parse_set_arguments
    from gan_style.methods import get_method
    from gan_style.methods.base import config_from_overrides

    recipe: dict[str, Any] = load_yaml(args.recipe) if args.recipe else {}
    method_name = args.method or recipe.get("method") or DEFAULT_METHOD
    # With no recipe at all, `gan-style train` is the built-in demo.
    preset = args.preset or recipe.get("preset") or (DEFAULT_PRESET if not args.recipe and not args.method else None)
    overrides = {k: v for k, v in recipe.items() if k not in RECIPE_KEYS}
    if args.data:
        overrides["data.root"] = args.data
    overrides.update(parse_set_arguments(args.set))
    method_cls = get_method(method_name)
    config = config_from_overrides(method_cls, preset, overrides)
    run_name = Path(args.recipe).stem if args.recipe else f"{method_name}-{preset or 'default'}"
    return method_cls, config, run_name


def cmd_train(args: argparse.Namespace) -> int:
    from gan_style.config import apply_overrides, parse_set_arguments
    from gan_style.engine.checkpoint import load_checkpoint
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method

    if args.resume:
        run_dir = Path(args.resume)
        ckpt = run_dir / "checkpoints" / "latest.pt"
        if not ckpt.is_file():
            print(f"error: {run_dir} has no checkpoints/latest.pt to resume from", file=sys.stderr)
            return 2
        saved = load_checkpoint(ckpt)
        method_cls = get_method(saved["method"])
        # Resume with the saved configuration; --set may change budgets and logging cadence.
        config = apply_overrides(apply_overrides(method_cls.Config(), saved["config"]), parse_set_arguments(args.set))
        trainer = Trainer(method_cls(config), run_dir)
        trainer.load(ckpt)
        print(f"resuming {saved['method']} from {ckpt} at step {trainer.progress.step} (epoch {trainer.progress.epoch})")
    else:
        method_cls, config, run_name = _build_config(args)
        run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (run_dir / "checkpoints" / "latest.pt").exists():
            print(f"error: {run_dir} already holds a run; resume it with --resume {run_dir} or pick another --run-dir", file=sys.stderr)
            return 2
        trainer = Trainer(method_cls(config), run_dir)
        if trainer.accelerator.is_main_process:
            print(f"training {method_cls.name} -> {run_dir}")
    trainer.fit()
    if trainer.accelerator.is_main_process:
        print(f"done at step {trainer.progress.step}.\n{trainer.summary()}")
        print(f"translate with: gan-style translate --checkpoint {run_dir} --input IMAGES --output OUT")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    import torch

    from gan_style.bench import peak_rss_mb
    from gan_style.translate import collect_inputs, load_translator, translate_images

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    translator = load_translator(args.checkpoint, args.direction, device)
    print(f"using {translator.description}")
    inputs = collect_inputs(args.input)
    input_root = Path(args.input) if Path(args.input).is_dir() else None
    written = translate_images(
        translator,
        inputs,
        args.output,
        fit=args.fit,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        batch_size=args.batch_size,
        input_root=input_root,
        device=device,
        progress=not args.quiet,
    )
    print(f"wrote {len(written)} image(s) to {args.output} (peak memory {peak_rss_mb():.0f} MB)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from gan_style.bench import format_result, run_benchmark
    from gan_style.config import parse_set_arguments

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(args.method, args.size, args.steps, args.warmup, args.batch_size, args.preset, parse_set_arguments(args.set))
    print(format_result(result, args.json))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gan-style", description="Unpaired image-to-image translation and style transfer.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a method from a recipe (no recipe: the CycleGAN demo)")
    train.add_argument("recipe", nargs="?", help="YAML recipe, e.g. train/cyclegan_vangogh2photo.yaml")
    train.add_argument("--method", help="method name when no recipe names one (default cyclegan)")
    train.add_argument("--preset", help="named preset of the method (e.g. paper, demo)")
    train.add_argument("--data", help="dataset folder holding trainA/trainB (sets data.root)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field, e.g. --set lambda_A=5 --set train.batch_size=4")
    train.add_argument("--run-dir", help="output folder (default runs/<recipe>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    train.set_defaults(func=cmd_train)

    translate = sub.add_parser("translate", help="translate images of any size with a trained or official generator")
    translate.add_argument("--checkpoint", required=True, help="a run folder, a gan_style .pt, or an official reference .pth")
    translate.add_argument("--input", required=True, help="an image file or a folder (searched recursively)")
    translate.add_argument("--output", required=True, help="output folder (PNG files)")
    translate.add_argument("--fit", choices=("pad", "resize"), default="pad", help="pad: exact input size (default); resize: the reference's multiple-of-4 resize")
    translate.add_argument("--tile", type=int, default=None, metavar="PX", help="translate in overlapping tiles of PX pixels (bounded memory for huge images)")
    translate.add_argument("--tile-overlap", type=int, default=64, metavar="PX", help="overlap between tiles, blended linearly (default 64)")
    translate.add_argument("--batch-size", type=int, default=1)
    translate.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="which generator of a two-way method")
    translate.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    translate.add_argument("--quiet", action="store_true", help="no progress bar")
    translate.set_defaults(func=cmd_translate)

    bench = sub.add_parser("bench", help="seconds per training iteration and peak memory on synthetic data")
    bench.add_argument("method", help="method name, e.g. cyclegan")
    bench.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    bench.add_argument("--steps", type=int, default=5, help="timed iterations (default 5)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    bench.add_argument("--batch-size", type=int, default=1)
    bench.add_argument("--preset", default=None, help="preset (default: the method's paper preset)")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE", help="override config fields")
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    bench.add_argument("--json", action="store_true", help="print one JSON line")
    bench.set_defaults(func=cmd_bench)

    # Listed for --help; main() hands `download ...` to gan_style.data.download.main.
    sub.add_parser("download", help="download a public CycleGAN dataset (gan-style download NAME [--dest DIR])")

    try:
        from gan_style.methods.nst import stylize
    except ImportError:  # the style-transfer baselines are optional at import time
        stylize = None
    if stylize is not None:
        style = sub.add_parser("stylize", help="single-image neural style transfer (Gatys, AdaIN)")
        stylize.add_arguments(style)
        style.set_defaults(func=stylize.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["download"]:
        # The download command has its own parser; hand it every argument, options included.
        from gan_style.data.download import main as download_main

        return download_main(argv[1:], prog="gan-style download")
    parser = build_parser()
    args = parser.parse_args(argv)
    from gan_style.config import ConfigError
    from gan_style.data.images import DatasetError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
