"""``gan-style eval``: the metrics of a model's translations of test photos (or of ready outputs).

    gan-style eval --checkpoint RUN --input testB --real testA --metrics fid,kid,swd,ssim,speed
    gan-style eval --fake OUTPUTS --input testB --real testA --metrics swd,ssim --json

Heavy imports (torch, torchmetrics) happen inside ``run``, so ``gan-style --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_METRICS = "swd,ssim"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from gan_style.evaluation.metrics import METRICS

    parser.add_argument("--checkpoint", default=None, help="the model: a run folder, a gan_style .pt, or an official reference file")
    parser.add_argument("--input", default=None, help="folder of test photos (the sources): translated with --checkpoint; "
                        "ssim and content compare each output with its photo")
    parser.add_argument("--real", default=None, help="folder of real images of the target domain (the test paintings)")
    parser.add_argument("--fake", default=None, help="folder of ready outputs to evaluate instead of translating (paired with --input by file name)")
    parser.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated, from {','.join(METRICS)} (default {DEFAULT_METRICS})")
    parser.add_argument("--json", action="store_true", help="print one JSON object of every metric instead of the table")
    parser.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"), help="which way the model translates (default AtoB)")
    parser.add_argument("--with", dest="with_inputs", action="append", metavar="NAME=VALUE",
                        help="an input the model takes besides the image, as for gan-style translate (e.g. --with style=painting.jpg)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--image-size", type=int, default=256, metavar="PX",
                        help="every set is brought to PX x PX (shorter side resized, centre crop) before the metrics (default 256)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N images of --input / --fake only")
    parser.add_argument("--inception-weights", default=None, metavar="FILE",
                        help="fid, kid: torch-fidelity's weights-inception-2015-12-05-6726825d.pth (default: torch hub's cache)")
    parser.add_argument("--vgg-weights", default=None, metavar="FILE",
                        help="content, style: torchvision's vgg19-dcbb9e9d.pth (default: torch hub's cache)")
    parser.add_argument("--style", default=None, metavar="PATH",
                        help="style: the style target, an image or a folder (default: the --real set)")
    parser.add_argument("--lpips-weights", default=None, metavar="FILE",
                        help="lpips_diversity: the LPIPS lin layers, lpips' weights/v0.1/vgg.pth (default: the copy torchmetrics bundles)")
    parser.add_argument("--lpips-vgg16-weights", default=None, metavar="FILE",
                        help="lpips_diversity: torchvision's vgg16-397923af.pth (default: torch hub's cache)")
    parser.add_argument("--num-styles", type=int, default=10, metavar="K", help="lpips_diversity: random styles per input (default 10)")
    parser.add_argument("--diversity-inputs", type=int, default=20, metavar="N", help="lpips_diversity: how many inputs (default 20)")
    parser.add_argument("--speed-images", type=int, default=20, metavar="N", help="speed: how many inputs are timed (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random styles, patches and subsets (default 0)")
    parser.add_argument("--cache-dir", default=None, metavar="DIR", help="where real-set features are cached (default: <gan_style cache>/eval_features)")


def pair_sources(fakes: list[Path], sources: list[Path]) -> list[Path]:
    """The source photo of each output: the input of the same file stem (or whose stem, plus
    ``_``, starts the output's, as ``photo_style3.png`` of ``photo.jpg``); when names do not match,
    by sorted order if the counts are equal (with a warning)."""
    from gan_style.errors import UserError

    by_stem = {path.stem: path for path in sources}
    paired: list[Path] = []
    for fake in fakes:
        match = by_stem.get(fake.stem)
        if match is None:
            prefixes = [stem for stem in by_stem if fake.stem.startswith(stem + "_")]
            match = by_stem[max(prefixes, key=len)] if prefixes else None
        if match is None:
            break
        paired.append(match)
    else:
        return paired
    if len(fakes) == len(sources):
        log.warning("the --fake and --input file names do not match; pairing outputs with photos by sorted order")
        return list(sources)
    raise UserError(f"--fake: {fakes[len(paired)].name} has no photo of the same name in --input, and the folders hold "
                    f"{len(fakes)} and {len(sources)} images; give the photos the outputs were made from")


def _folder_images(folder: str | None, option: str, limit: int | None = None) -> list[Path]:
    from gan_style.data.images import DatasetError, find_images
    from gan_style.errors import UserError

    if folder is None:
        raise UserError(f"{option} is needed for these metrics")
    try:
        paths = find_images(folder)
    except DatasetError as error:
        raise UserError(f"{option}: {' '.join(str(error).split())}") from None
    return paths[:limit] if limit is not None else paths


def run(args: argparse.Namespace) -> int:
    from gan_style.data.images import load_rgb
    from gan_style.errors import UserError
    from gan_style.evaluation.metrics import check_metrics, evaluate_images, format_table, measure_speed
    from gan_style.translate import resolve_device

    metrics = check_metrics(args.metrics.split(","))
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.image_size < 16:
        raise UserError(f"--image-size must be >= 16 px (the coarsest level of swd), got {args.image_size}")
    if args.num_styles < 2 and "lpips_diversity" in metrics:
        raise UserError(f"--num-styles must be >= 2 for lpips_diversity, got {args.num_styles}")
    needs_model = [m for m in metrics if m in ("speed", "lpips_diversity")]
    if args.fake is None and args.checkpoint is None:
        raise UserError("give --checkpoint CKPT --input PHOTOS to translate the photos, or --fake DIR of ready outputs")
    if needs_model and args.checkpoint is None:
        raise UserError(f"{', '.join(needs_model)} run the model: give --checkpoint")
    if args.checkpoint is not None and not Path(args.checkpoint).exists():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist; give a run folder, a gan_style .pt or an official .pth file")
    if args.real is None and ({"fid", "kid", "swd"} & set(metrics) or ("style" in metrics and args.style is None)):
        raise UserError("--real is needed: the folder of real images of the target domain (e.g. testA of vangogh2photo)")
    device = resolve_device(args.device)
    inputs = _folder_images(args.input, "--input", args.limit) if args.input is not None else None
    model, extra = None, {}
    if args.checkpoint is not None:
        from gan_style.api import load
        from gan_style.translate import parse_inference_inputs

        extra = {name: load_rgb(value) if isinstance(value, Path) else value for name, value in parse_inference_inputs(args.with_inputs).items()}
        model = load(args.checkpoint, device=device)
        print(f"using {model.description}", file=sys.stderr)
    if inputs is None and (model is not None and args.fake is None or {"ssim", "content"} & set(metrics)):
        raise UserError("--input is needed: the folder of test photos" + (" (ssim and content compare outputs with them)" if args.fake else ""))
    sources: list[Any] | None
    if args.fake is not None:
        fakes: list[Any] = _folder_images(args.fake, "--fake", args.limit)
        sources = pair_sources(fakes, inputs) if inputs is not None and {"ssim", "content"} & set(metrics) else None
    else:
        photos = [load_rgb(path) for path in inputs]
        fakes = [model.translate(photo, args.direction, **extra) for photo in photos]
        sources = photos
    diverse = None
    if "lpips_diversity" in metrics:
        diverse = _diverse_outputs(model, inputs[: args.diversity_inputs], args, extra)
    image_metrics = [m for m in metrics if m != "speed"]
    result = evaluate_images(
        fakes, args.real, sources, image_metrics,
        inception_weights=args.inception_weights, vgg_weights=args.vgg_weights, lpips_weights=args.lpips_weights,
        lpips_vgg16_weights=args.lpips_vgg16_weights, style_image=args.style, diverse_outputs=diverse,
        device=device, cache_dir=args.cache_dir, image_size=args.image_size, seed=args.seed,
    ) if image_metrics else {}
    if "speed" in metrics:
        timed = [load_rgb(path) for path in inputs[: args.speed_images]]
        result["images_per_second"] = measure_speed(model, timed, args.direction, **extra)
    if args.json:
        print(json.dumps(result))
    else:
        made = f"translated by {args.checkpoint}" if args.fake is None else f"from {args.fake}"
        print(f"{len(fakes)} outputs {made}" + (f"; real set {args.real}" if args.real else ""))
        print(format_table(result))
    return 0


def _diverse_outputs(model: Any, inputs: list[Path], args: argparse.Namespace, extra: dict[str, Any]) -> list[list[Any]]:
    """``--num-styles`` outputs of each input under random styles: MUNIT's codes 0 .. K-1 of the
    ``--seed`` stream (``style_number``), or K seeds for a model that takes only ``seed``."""
    from gan_style.data.images import load_rgb
    from gan_style.errors import UserError

    accepted = model.inputs(args.direction)
    if "style_number" in accepted:
        variants = [{"seed": args.seed, "style_number": k} for k in range(args.num_styles)]
    elif "seed" in accepted:
        variants = [{"seed": args.seed + k} for k in range(args.num_styles)]
    else:
        takes = f"takes only {', '.join(accepted)}" if accepted else "takes no inputs besides the image"
        raise UserError(f"lpips_diversity: {model.description} has no random styles ({takes}); it is for multimodal models such as MUNIT")
    fixed = {name: value for name, value in extra.items() if name not in ("seed", "style_number", "style")}
    groups = []
    for path in inputs:
        photo = load_rgb(path)
        groups.append([model.translate(photo, args.direction, **fixed, **variant) for variant in variants])
    return groups
