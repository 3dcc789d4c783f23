"""The ``gan-style`` command: train | translate | swap | bench | download | stylize."""

from __future__ import annotations

import argparse
import importlib
import logging
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
    from gan_style.engine.contract import config_from_overrides
    from gan_style.methods import get_method

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


def _check_writable(folder: Path, option: str) -> None:
    """Fail before any work when ``folder`` cannot be created or written."""
    import os

    from gan_style.errors import UserError

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {folder}: {existing} is a file, not a folder; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {folder}: cannot write in {existing} (permission denied); choose a folder you can write to")


def cmd_train(args: argparse.Namespace) -> int:
    from gan_style.config import apply_overrides, parse_set_arguments
    from gan_style.engine.checkpoint import LATEST, load_run_checkpoint
    from gan_style.engine.trainer import Trainer
    from gan_style.errors import UserError
    from gan_style.methods import get_method

    if args.resume:
        run_dir = Path(args.resume)
        ckpt, saved = load_run_checkpoint(run_dir)
        if ckpt.parent.name == "checkpoints":
            run_dir = ckpt.parent.parent
        method_cls = get_method(saved["method"])
        # Resume with the saved configuration; --set may change budgets and logging cadence.
        config = apply_overrides(apply_overrides(method_cls.Config(), saved["config"]), parse_set_arguments(args.set))
        _check_writable(run_dir, "--resume")
        trainer = Trainer(method_cls(config), run_dir)
        trainer.load(ckpt, saved)
        print(f"resuming {saved['method']} from {ckpt} at step {trainer.progress.step} (epoch {trainer.progress.epoch})")
    else:
        method_cls, config, run_name = _build_config(args)
        run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        checkpoints = run_dir / "checkpoints"
        if (checkpoints / LATEST).exists() or any(checkpoints.glob("step_*.pt")):
            raise UserError(f"{run_dir} already holds a run; resume it with --resume {run_dir} or pick another --run-dir")
        _check_writable(run_dir, "--run-dir")
        trainer = Trainer(method_cls(config), run_dir)
        if trainer.accelerator.is_main_process:
            print(f"training {method_cls.name} -> {run_dir}")
    trainer.fit()
    if trainer.accelerator.is_main_process:
        print(f"done at step {trainer.progress.step}.\n{trainer.summary()}")
        print(f"translate with: gan-style translate --checkpoint {run_dir} --input IMAGES --output OUT")
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    """Exit status 0 when every input was written, 1 when some were skipped (each named on
    stderr), 2 on an error (``--strict`` makes the first bad input one)."""
    from tqdm.auto import tqdm

    from gan_style.bench import peak_rss_mb
    from gan_style.errors import UserError
    from gan_style.translate import (
        check_options,
        check_output_folder,
        collect_inputs,
        load_translator,
        load_translators,
        plan_outputs,
        resolve_device,
        translate_images,
    )

    # Everything that can be checked without the model is checked first: loading takes a while.
    check_options(args.tile, args.tile_overlap, args.batch_size, args.max_pixels, args.fit)
    device = resolve_device(args.device)
    if not Path(args.checkpoint).exists():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist; give a run folder, a gan_style .pt or an official .pth file")
    from gan_style.translate import parse_inference_inputs

    extra = parse_inference_inputs(args.with_inputs)
    variants, flags = _style_variants(args)
    check_output_folder(args.input, args.output)
    _check_writable(Path(args.output), "--output")
    inputs = collect_inputs(args.input)
    input_root = Path(args.input) if Path(args.input).is_dir() else None
    for suffix in variants:  # refuses outputs that would overwrite an input
        plan_outputs(inputs, args.output, input_root, suffix)
    if flags:
        translators = load_translators(args.checkpoint, args.direction, device, [{**extra, **chosen} for chosen in variants.values()], flags)
    else:
        translators = [load_translator(args.checkpoint, args.direction, device, extra)]
    print(f"using {translators[0].description}" + (f", {len(translators)} styles" if len(translators) > 1 else ""))
    written = []
    for translator, suffix in zip(translators, variants):
        written += translate_images(
            translator,
            inputs,
            args.output,
            fit=args.fit,
            tile=args.tile,
            tile_overlap=args.tile_overlap,
            tile_mode=args.tile_mode,
            batch_size=args.batch_size,
            input_root=input_root,
            device=device,
            progress=not args.quiet,
            strict=args.strict,
            max_pixels=args.max_pixels,
            # tqdm.write keeps the progress bar intact below the message.
            report=lambda message: tqdm.write(f"warning: {message}", file=sys.stderr),
            suffix=suffix,
        )
    skipped = len(inputs) * len(translators) - len(written)
    if skipped:
        print(f"wrote {len(written)}, skipped {skipped} (see above); outputs in {args.output}")
        return 1
    print(f"wrote {len(written)} image(s) to {args.output} (peak memory {peak_rss_mb():.0f} MB)")
    return 0


def _style_variants(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """MUNIT's style flags as one set of translator inputs per output-name suffix, and the flag
    of each input (to name it when the model has no such input). No flags: one plain run."""
    from gan_style.errors import UserError

    if args.style_image is not None and (args.num_styles is not None or args.seed is not None):
        raise UserError("--style-image gives the style; --num-styles / --seed draw random ones: use one or the other")
    if args.style_image is not None:
        path = Path(args.style_image).expanduser()
        if not path.is_file():
            raise UserError(f"--style-image {args.style_image} is not an image file")
        return {"": {"style": path}}, {"style": "--style-image"}
    if args.num_styles is not None:
        if args.num_styles < 1:
            raise UserError(f"--num-styles must be 1 or more, got {args.num_styles}")
        # style k of the stream seeded by --seed: the same N styles for every image
        seed = 0 if args.seed is None else args.seed
        flags = {"style_number": "--num-styles", "seed": "--num-styles" if args.seed is None else "--seed"}
        return {f"_style{k}": {"seed": seed, "style_number": k} for k in range(args.num_styles)}, flags
    if args.seed is not None:
        return {"": {"seed": args.seed}}, {"seed": "--seed"}
    return {"": {}}, {}


def _alpha_path(output: Path, alpha: float, several: bool) -> Path:
    return output.with_name(f"{output.stem}_alpha{alpha:g}{output.suffix}") if several else output


def cmd_swap(args: argparse.Namespace) -> int:
    """The structure of one image with the texture of another (the Swapping Autoencoder)."""
    from PIL import Image

    from gan_style.api import load
    from gan_style.data.images import IMAGE_EXTENSIONS, load_rgb
    from gan_style.errors import UserError
    from gan_style.translate import check_options, collect_inputs, resolve_device

    output = Path(args.grid or args.output or "")
    if not args.grid and not args.output:
        raise UserError("swap needs --output OUT.png (or --grid GRID.png with folders of images)")
    if output.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UserError(f"{'--grid' if args.grid else '--output'} {output}: name an image file, e.g. out.png")
    if any(not 0.0 <= a <= 1.0 for a in args.alpha):
        raise UserError(f"--alpha values must lie in [0, 1], got {args.alpha}")
    check_options(tile=args.tile)
    for option, value in (("--structure", args.structure), ("--texture", args.texture), ("--checkpoint", args.checkpoint)):
        if not Path(value).exists():
            raise UserError(f"{option} {value} does not exist")
    structures, textures = collect_inputs(args.structure), collect_inputs(args.texture)
    if any(output.resolve() == p.resolve() for p in structures + textures):
        raise UserError(f"{output} is one of the input images; choose another output name")
    if not args.grid and (len(structures) > 1 or len(textures) > 1):
        raise UserError("--structure and --texture folders make a grid: give --grid GRID.png")
    _check_writable(output.parent if str(output.parent) else Path("."), "--output")
    model = load(args.checkpoint, device=resolve_device(args.device))
    if "texture" not in model.inputs():
        raise UserError(f"{args.checkpoint} is a {model.method} model; swap needs a Swapping Autoencoder (method swapae)")
    print(f"using {model.description}")
    if args.grid:
        size = args.size
        cells = {path: load_rgb(path).resize((size, size), Image.Resampling.BICUBIC) for path in structures + textures}
        grid = Image.new("RGB", ((len(textures) + 1) * size, (len(structures) + 1) * size), "white")
        for column, texture in enumerate(textures, 1):
            grid.paste(cells[texture], (column * size, 0))
        for row, structure in enumerate(structures, 1):
            grid.paste(cells[structure], (0, row * size))
            for column, texture in enumerate(textures, 1):
                grid.paste(model.swap(cells[structure], cells[texture], alpha=args.alpha[-1], seed=args.seed), (column * size, row * size))
        grid.save(output)
        print(f"wrote the {len(structures)} x {len(textures)} swapping grid {output} (structures as rows, textures as columns)")
        return 0
    structure, texture = load_rgb(structures[0]), load_rgb(textures[0])
    for alpha in args.alpha:
        path = _alpha_path(output, alpha, len(args.alpha) > 1)
        model.swap(structure, texture, alpha=alpha, seed=args.seed, tile=args.tile).save(path)
        print(f"wrote {path} (alpha {alpha:g})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from gan_style.bench import format_result, run_benchmark
    from gan_style.config import parse_set_arguments

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_benchmark(args.method, args.size, args.steps, args.warmup, args.batch_size, args.preset, parse_set_arguments(args.set), count_flops=not args.no_flops)
    print(format_result(result, args.json))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``gan-style`` parser. With ``command`` given, only that command's module (of those
    that live beside their code: eval, compare, export, serve, stylize) is imported for its
    arguments and the others are listed by name, so that ``gan-style --help`` or ``gan-style
    train`` imports no metric or serving code (nor torch); ``None``: every command complete."""
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
    translate.add_argument("--tile-overlap", type=int, default=64, metavar="PX", help="per-tile mode: overlap between tiles, blended linearly (default 64)")
    translate.add_argument("--tile-mode", choices=("exact", "per-tile"), default="exact",
                           help="exact: the whole-image result, normalisation statistics gathered over the whole image (default); "
                                "per-tile: each tile normalised on its own, seams blended (faster, tones differ)")
    translate.add_argument("--batch-size", type=int, default=1, help="images per forward pass (same-size images only; default 1)")
    translate.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="which generator of a two-way method")
    translate.add_argument("--with", dest="with_inputs", action="append", metavar="NAME=VALUE",
                           help="an input the method takes besides the image, e.g. --with style=painting.jpg --with alpha=0.8 (AdaIN)")
    translate.add_argument("--num-styles", type=int, default=None, metavar="N",
                           help="MUNIT: N random styles per image, the same N for every image (NAME_style0.png ... NAME_style{N-1}.png)")
    translate.add_argument("--seed", type=int, default=None, metavar="S", help="MUNIT: seed of the random styles (default 0)")
    translate.add_argument("--style-image", default=None, metavar="PATH",
                           help="MUNIT: translate with the style of this example image of the target domain")
    translate.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    translate.add_argument("--max-pixels", type=int, default=None, metavar="N",
                           help="decode images of up to N pixels (0: no limit; default: PIL's decompression-bomb guard, about 179 million, lifted by --tile)")
    translate.add_argument("--strict", action="store_true", help="stop at the first unreadable or untranslatable image (default: skip it, exit status 1)")
    translate.add_argument("--quiet", action="store_true", help="no progress bar")
    translate.set_defaults(func=cmd_translate)

    swap = sub.add_parser("swap", help="the structure of one image with the texture of another (Swapping Autoencoder)")
    swap.add_argument("--checkpoint", required=True, help="a swapae run folder, a gan_style .pt or the reference's latest_checkpoint.pth")
    swap.add_argument("--structure", required=True, help="the image (or, with --grid, folder) whose layout is kept")
    swap.add_argument("--texture", required=True, help="the image (or, with --grid, folder) whose texture is taken")
    swap.add_argument("--output", help="output image; with several --alpha values one file per alpha (OUT_alpha0.5.png ...)")
    swap.add_argument("--alpha", type=float, nargs="+", default=[1.0], help="texture interpolation: 0 = the structure image's own, 1 = the texture image's (default 1)")
    swap.add_argument("--grid", metavar="GRID.png", help="write the N x M swapping grid of two folders (structures as rows, textures as columns)")
    swap.add_argument("--size", type=int, default=256, help="grid cell side in pixels (default 256)")
    swap.add_argument("--seed", type=int, default=0, help="seed of the generator's noise, fixed across alphas (default 0)")
    swap.add_argument("--tile", type=int, default=None, metavar="PX",
                      help="compute in tiles of about PX pixels: the same image, memory bounded by the tile (huge images)")
    swap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    swap.set_defaults(func=cmd_swap)

    bench = sub.add_parser("bench", help="seconds per training iteration, peak memory and GFLOP/s on synthetic data")
    bench.add_argument("method", help="method name, e.g. cyclegan")
    bench.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    bench.add_argument("--steps", type=int, default=5, help="timed iterations (default 5)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    bench.add_argument("--batch-size", type=int, default=None, help="default: the method's timing unit (1; the Swapping Autoencoder 2)")
    bench.add_argument("--preset", default=None, help="preset (default: the method's paper preset)")
    bench.add_argument("--set", action="append", metavar="KEY=VALUE", help="override config fields")
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    bench.add_argument("--json", action="store_true", help="print one JSON line")
    bench.add_argument("--no-flops", action="store_true", help="skip counting the FLOPs of a step (an extra, slower step; the matmul peak is still timed)")
    bench.set_defaults(func=cmd_bench)

    # Listed for --help; main() hands `download ...` to gan_style.data.download.main.
    sub.add_parser("download", help="download a public CycleGAN dataset (gan-style download NAME [--dest DIR])")

    # Commands whose code lives beside what they use: each module has add_arguments(parser) and
    # run(args), and imports its heavy dependencies (onnx, the ASGI stack ...) only in run.
    for name, module_name, summary in _COMMAND_MODULES:
        if command is not None and command != name:
            sub.add_parser(name, help=summary)
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # not part of this installation
            raise
        command = sub.add_parser(name, help=summary)
        module.add_arguments(command)
        command.set_defaults(func=module.run)

    if command is not None and command != "stylize":
        sub.add_parser("stylize", help=STYLIZE_SUMMARY)
        return parser
    try:
        from gan_style.methods.nst import stylize
    except ImportError:  # the style-transfer baselines are optional at import time
        stylize = None
    if stylize is not None:
        style = sub.add_parser("stylize", help=STYLIZE_SUMMARY)
        stylize.add_arguments(style)
        style.set_defaults(func=stylize.run)
    return parser


STYLIZE_SUMMARY = "single-image neural style transfer (Gatys, AdaIN)"
_COMMAND_MODULES = (
    ("eval", "gan_style.evaluation.eval_command", "metrics of a model's translations (FID, KID, SWD, SSIM, content/style, LPIPS diversity, speed)"),
    ("compare", "gan_style.evaluation.compare_command", "run several models on the same photos: an HTML report, a preference study and its tally"),
    ("export", "gan_style.export", "export a generator to ONNX, TorchScript or a safetensors folder"),
    ("serve", "gan_style.serve.command", "a local web page (and HTTP API) that translates uploaded photos"),
)

DEBUG_ENV = "GAN_STYLE_DEBUG"


def _fatal_message(error: BaseException) -> tuple[str, int] | None:
    """The one-line message and exit status for a failure the user can act on, else None."""
    import errno

    import torch

    from gan_style.errors import UserError

    if isinstance(error, UserError):
        return str(error), 2
    text = str(error)
    out_of_memory = isinstance(error, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(error, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
    )
    if out_of_memory:
        return ("out of memory. Use smaller images or batches, or translate in tiles (--tile 512); "
                "for training, lower train.batch_size or data.crop_size"), 2
    disk_full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if disk_full or "No space left on device" in text or "file write failed" in text:
        where = f" writing {error.filename}" if isinstance(error, OSError) and error.filename else ""
        return f"no space left on the device{where}; free some space (the last complete checkpoint is kept) and resume", 2
    if isinstance(error, PermissionError) or (isinstance(error, OSError) and error.errno in (errno.EACCES, errno.EROFS)):
        return f"cannot write {error.filename or 'a file'}: {error.strerror}; choose a folder you can write to", 2
    if isinstance(error, FileNotFoundError):
        return f"{error.filename or text} does not exist; check the path", 2
    if isinstance(error, OSError) and error.filename:
        return f"cannot use {error.filename}: {error.strerror or text}; check the path", 2
    return None


class _StderrLines(logging.Handler):
    """Library messages (``logging``) as plain ``warning: ...`` lines on whatever ``sys.stderr`` is
    when they are written (tests and notebooks replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
            sys.stderr.write(f"{prefix}{text}\n")
        except Exception:
            self.handleError(record)


def _configure_logging(debug: bool) -> None:
    logger = logging.getLogger("gan_style")
    if not any(isinstance(handler, _StderrLines) for handler in logger.handlers):
        logger.addHandler(_StderrLines())
    logger.setLevel(logging.DEBUG if debug else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Run ``gan-style``. A user error ends with one ``error:`` line on stderr and status 2, no
    traceback; ``--debug`` (anywhere on the line) or GAN_STYLE_DEBUG=1 shows tracebacks."""
    import os

    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    argv = [a for a in argv if a != "--debug"]
    _configure_logging(debug)
    try:
        if argv[:1] == ["download"]:
            # The download command has its own parser; hand it every argument, options included.
            from gan_style.data.download import main as download_main

            return download_main(argv[1:], prog="gan-style download")
        # only the named command's module is imported for its arguments (none for the top-level --help)
        command = argv[0] if argv and not argv[0].startswith("-") else ""
        args = build_parser(command).parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        known = _fatal_message(error)
        if known is None:
            first_line = next((line for line in str(error).splitlines() if line.strip()), "")
            print(f"error: internal error {type(error).__name__}: {first_line} "
                  f"Run again with --debug (or {DEBUG_ENV}=1) for the traceback, and please report it.", file=sys.stderr)
            return 1
        message, status = known
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
