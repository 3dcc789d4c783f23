"""``gan-style stylize``: single-image style transfer with Gatys et al. or AdaIN.

    gan-style stylize --method gatys --content C --style S --output O [--size PX] [--iterations N]
    gan-style stylize --method adain --content C --style S --output O [--alpha A] [--decoder FILE]
    python -m gan_style.methods.nst.stylize ...                  (the same, without the CLI)
    python -m gan_style.methods.nst.stylize --bench              (timings on this machine)

The CLI (``gan_style/cli.py``) calls :func:`add_arguments` on its ``stylize`` sub-parser and
:func:`run` with the parsed arguments. Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["add_arguments", "benchmark", "load_image", "main", "run", "save_image"]

_GATYS_STYLE_LAYERS = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1"


def _layers(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``gan-style stylize``."""
    parser.add_argument("--method", choices=("gatys", "adain"), default="gatys", help="gatys: optimise the pixels (slow, no training); adain: one forward pass through a trained decoder (default gatys)")
    parser.add_argument("--content", metavar="IMAGE", help="content image")
    parser.add_argument("--style", nargs="+", metavar="IMAGE", help="style image(s); several are blended (--style-weights)")
    parser.add_argument("--style-weights", nargs="+", type=float, metavar="W", help="one weight per style image (normalised to sum 1; default equal)")
    parser.add_argument("--output", metavar="FILE", help="output image (PNG, JPEG, ...)")
    parser.add_argument("--size", type=int, default=512, metavar="PX", help="longest side of the output in pixels (default 512; 0: the content's size)")
    parser.add_argument("--original-colors", "--preserve-color", dest="original_colors", action="store_true", help="keep the content's colours: gatys transfers the luminance only; adain recolours the style to the content's colour statistics first")
    parser.add_argument("--vgg-weights", metavar="FILE", help="gatys: torchvision's vgg19-dcbb9e9d.pth (default: looked for in torchvision's cache); adain: vgg_normalised.pth (default: the one in the --decoder training checkpoint, else models/vgg_normalised.pth)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")

    gatys = parser.add_argument_group("gatys (Gatys, Ecker and Bethge, CVPR 2016; defaults of neural-style)")
    gatys.add_argument("--iterations", type=int, default=1000, help="optimiser iterations, per scale (default 1000)")
    gatys.add_argument("--optimizer", choices=("lbfgs", "adam"), default="lbfgs")
    gatys.add_argument("--learning-rate", type=float, default=None, help="default: 1 for L-BFGS, 10/255 for Adam")
    gatys.add_argument("--lbfgs-line-search", choices=("strong_wolfe", "none"), default="strong_wolfe", help="none: neural-style's plain L-BFGS step (default strong_wolfe)")
    gatys.add_argument("--content-weight", type=float, default=5.0)
    gatys.add_argument("--style-weight", type=float, default=100.0)
    gatys.add_argument("--tv-weight", type=float, default=1e-3)
    gatys.add_argument("--content-layers", type=_layers, default=("relu4_2",), metavar="L1,L2", help="default relu4_2")
    gatys.add_argument("--style-layers", type=_layers, default=_layers(_GATYS_STYLE_LAYERS), metavar="L1,L2", help=f"default {_GATYS_STYLE_LAYERS}")
    gatys.add_argument("--init", choices=("noise", "content"), default="noise", help="start from (almost flat) noise or from the content (default noise)")
    gatys.add_argument("--style-scale", type=float, default=1.0, help="style images are resized to this times --size (larger: larger brush strokes)")
    gatys.add_argument("--num-scales", type=int, default=1, metavar="K", help="coarse-to-fine: solve at size/2^(K-1), ..., size, each initialised from the previous (default 1)")
    gatys.add_argument("--pooling", choices=("max", "avg"), default="max")
    gatys.add_argument("--vgg-preprocess", choices=("imagenet", "caffe"), default="imagenet", help="imagenet: torchvision's weights; caffe: the Caffe VGG-19 of neural-style in torchvision's layout (vgg19-d01eb7cb.pth)")

    adain = parser.add_argument_group("adain (Huang and Belongie, ICCV 2017)")
    adain.add_argument("--decoder", metavar="FILE", help="decoder.pth, a training checkpoint or a run folder of `gan-style train train/adain.yaml` (default: models/decoder.pth)")
    adain.add_argument("--alpha", type=float, default=1.0, help="content-style trade-off in [0, 1] (Eq. 14; default 1)")
    adain.add_argument("--style-size", type=int, default=None, metavar="PX", help="longest side of the style images (default: --size)")
    adain.add_argument("--mask", nargs="+", metavar="IMAGE", help="spatial control: one mask (white: first style, black: second) or one mask per style (each white where its style goes)")

    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--bench", action="store_true", help="time Gatys (s/iteration) and AdaIN (images/s) with random weights and print JSON")
    bench.add_argument("--bench-sizes", nargs="+", type=int, default=(256, 512), metavar="PX", help="Gatys sizes to time (default 256 512)")
    bench.add_argument("--bench-iterations", type=int, default=10, help="timed L-BFGS iterations per size (default 10)")
    bench.add_argument("--bench-adain-size", type=int, default=512, metavar="PX")
    bench.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike[str], size: int | None = None) -> Tensor:
    """An image file as a (1, 3, H, W) float tensor in [0, 1], resized so that its longest side is
    ``size`` (None or 0: as stored)."""
    from gan_style.data.images import load_rgb, pil_to_tensor
    from gan_style.methods.nst.gatys import resize_longest_side

    image = ((pil_to_tensor(load_rgb(path)) + 1) / 2)[None]
    return resize_longest_side(image, size) if size else image


def save_image(image: Tensor, path: str | os.PathLike[str]) -> Path:
    """Save (1, 3, H, W) or (3, H, W) in [0, 1] (rounded to 8 bits); creates the folder."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.detach().float().cpu().clamp(0, 1)
    if array.dim() == 4:
        array = array[0]
    pixels = (array.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _mask_labels(paths: Sequence[str], num_styles: int, height: int, width: int) -> Tensor:
    """Which style each content pixel takes, from the --mask images (resized to the content)."""
    import torch
    import torch.nn.functional as F

    masks = [F.interpolate(load_image(p).mean(dim=1, keepdim=True), size=(height, width), mode="bilinear", align_corners=False)[0, 0] for p in paths]
    if len(masks) == 1 and num_styles == 2:
        return (masks[0] < 0.5).long()  # white -> style 0, black -> style 1
    if len(masks) != num_styles:
        raise ValueError(f"--mask takes one mask for two styles, or one per style; got {len(masks)} mask(s) for {num_styles} style(s)")
    return torch.stack(masks).argmax(dim=0)


# ---------------------------------------------------------------------------------------------
# The two methods
# ---------------------------------------------------------------------------------------------


def _run_gatys(args: argparse.Namespace) -> None:
    from gan_style.methods.nst.gatys import GatysConfig, stylize_gatys
    from gan_style.nn.vgg import load_vgg19
    from gan_style.translate import resolve_device

    device = resolve_device(args.device)
    content = load_image(args.content)
    styles = [load_image(p) for p in args.style]
    size = args.size or max(content.shape[-2:])
    config = GatysConfig(
        size=size,
        iterations=args.iterations,
        content_layers=tuple(args.content_layers),
        style_layers=tuple(args.style_layers),
        content_weight=args.content_weight,
        style_weight=args.style_weight,
        tv_weight=args.tv_weight,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        lbfgs_line_search=args.lbfgs_line_search,
        init=args.init,
        style_scale=args.style_scale,
        style_blend_weights=tuple(args.style_weights) if args.style_weights else None,
        original_colors=args.original_colors,
        num_scales=args.num_scales,
        seed=args.seed,
    )
    vgg = load_vgg19(args.vgg_weights, preprocessing=args.vgg_preprocess, pooling=args.pooling, device=device)
    result = stylize_gatys(vgg, content, styles, config, progress=not args.quiet)
    path = save_image(result.image, args.output)
    first, last = result.history[0]["total"], result.history[-1]["total"]
    print(f"wrote {path} ({result.image.shape[-1]}x{result.image.shape[-2]}); loss {first:.4g} -> {last:.4g} in {result.seconds:.1f} s")


def _run_adain(args: argparse.Namespace) -> None:
    import torch

    from gan_style.methods.nst.adain import AdaINStylizer, load_adain_decoder, match_colour, training_checkpoint
    from gan_style.nn.vgg import load_adain_encoder
    from gan_style.translate import resolve_device

    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    device = resolve_device(args.device)
    content = load_image(args.content, args.size)
    style_size = args.style_size if args.style_size is not None else args.size
    styles = [load_image(p, style_size) for p in args.style]
    if args.original_colors:
        styles = [match_colour(s, content) for s in styles]
    labels = _mask_labels(args.mask, len(styles), *content.shape[-2:]) if args.mask else None
    # A decoder trained here comes in a checkpoint that also holds the frozen encoder.
    checkpoint = training_checkpoint(args.decoder) if args.vgg_weights is None else None
    encoder = load_adain_encoder(args.vgg_weights or checkpoint, device=device)
    decoder = load_adain_decoder(args.decoder, device=device)
    model = AdaINStylizer(encoder, decoder).eval()
    start = time.perf_counter()
    with torch.inference_mode():
        output = model(
            content.to(device),
            [s.to(device) for s in styles],
            alpha=args.alpha,
            style_weights=args.style_weights,
            labels=labels.to(device) if labels is not None else None,
        )
    seconds = time.perf_counter() - start
    path = save_image(output, args.output)
    print(f"wrote {path} ({output.shape[-1]}x{output.shape[-2]}) in {seconds:.2f} s")


def run(args: argparse.Namespace) -> int:
    """Run ``gan-style stylize`` with parsed arguments; returns the exit status."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.bench:
        print(json.dumps(benchmark(args.bench_sizes, args.bench_iterations, args.bench_adain_size, progress=not args.quiet)))
        return 0
    missing = [f"--{name}" for name in ("content", "style", "output") if not getattr(args, name)]
    if missing:
        print(f"error: stylize needs {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.style_weights and len(args.style_weights) != len(args.style):
        print(f"error: {len(args.style_weights)} --style-weights for {len(args.style)} --style images", file=sys.stderr)
        return 2
    from gan_style.data.images import DatasetError

    try:
        if args.method == "gatys":
            _run_gatys(args)
        else:
            _run_adain(args)
    except (FileNotFoundError, DatasetError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------
# Benchmark
# ---------------------------------------------------------------------------------------------


def _bench_images(size: int) -> tuple[Tensor, Tensor, str]:
    """tubingen / starry night from shared/data/nst when present, else random images."""
    import torch

    # $GAN_STYLE_SHARED, else ../shared beside the repository (as the tests).
    repository = Path(__file__).resolve().parents[3]
    for root in (os.environ.get("GAN_STYLE_SHARED"), repository.parent / "shared"):
        if root:
            folder = Path(root) / "data" / "nst"
            content, style = folder / "content" / "tubingen.jpg", folder / "style" / "starry_night.jpg"
            if content.is_file() and style.is_file():
                return load_image(content, size), load_image(style, size), "shared/data/nst tubingen + starry_night"
    generator = torch.Generator().manual_seed(0)
    return torch.rand(1, 3, size, size, generator=generator), torch.rand(1, 3, size, size, generator=generator), "random images"


def benchmark(
    gatys_sizes: Sequence[int] = (256, 512),
    gatys_iterations: int = 10,
    adain_size: int = 512,
    progress: bool = False,
    adain_seconds: float = 5.0,
) -> dict[str, Any]:
    """Seconds per Gatys L-BFGS iteration at each size (median over the timed iterations) and
    AdaIN images per second (content and style encoded for every image, batch 1), with random
    weights (the speed does not depend on them) on this machine's default device."""
    import torch
    from torch import nn

    from gan_style.methods.nst.adain import AdaINDecoder, AdaINStylizer
    from gan_style.methods.nst.gatys import GatysConfig, stylize_gatys
    from gan_style.nn.vgg import NormalisedVGGEncoder, VGG19Features
    from gan_style.translate import resolve_device

    device = resolve_device("auto")
    torch.manual_seed(0)
    vgg = VGG19Features()
    for module in vgg.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.normal_(module.bias, std=0.1)
    vgg = vgg.requires_grad_(False).eval().to(device)
    result: dict[str, Any] = {
        "device": str(device),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "gatys": {},
    }
    for size in gatys_sizes:
        content, style, source = _bench_images(size)
        result["images"] = source
        stylize_gatys(vgg, content, [style], GatysConfig(size=size, iterations=2), progress=False)  # warm-up
        # neural-style's plain L-BFGS: one loss evaluation (forward + backward) and one update per
        # iteration; the time between two evaluations is the time of one iteration.
        stamps: list[tuple[float, float]] = []
        config = GatysConfig(size=size, iterations=gatys_iterations, lbfgs_line_search="none")
        timed = stylize_gatys(
            vgg, content, [style], config, progress=progress, on_iteration=lambda record, image, stamps=stamps: stamps.append((time.perf_counter(), time.process_time()))
        )
        # Between consecutive evaluations (the last one is the final, forward-only evaluation).
        steps = sorted(b[0] - a[0] for a, b in zip(stamps[:-2], stamps[1:-1]))
        cpu_steps = sorted(b[1] - a[1] for a, b in zip(stamps[:-2], stamps[1:-1]))
        per_iteration = steps[len(steps) // 2]
        result["gatys"][str(size)] = {
            "output": list(timed.image.shape[-2:]),
            "iterations": gatys_iterations,
            "sec_per_iteration": round(per_iteration, 3),
            "min_sec_per_iteration": round(steps[0], 3),
            # CPU seconds of this process (all threads): with one thread, what an idle core takes
            # even when other processes share the machine.
            "cpu_sec_per_iteration": round(cpu_steps[len(cpu_steps) // 2], 3),
            "projected_sec_500_iterations": round(per_iteration * 500, 1),
            "total_sec": round(timed.seconds, 2),
        }
    model = AdaINStylizer(NormalisedVGGEncoder(), AdaINDecoder()).eval().to(device)
    generator = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, adain_size, adain_size, generator=generator).to(device)
    style = torch.rand(1, 3, adain_size, adain_size, generator=generator).to(device)
    with torch.inference_mode():
        model(content, [style])  # warm-up
        count, start, cpu_start = 0, time.perf_counter(), time.process_time()
        while count < 3 or time.perf_counter() - start < adain_seconds:
            model(content, [style])
            count += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    result["adain"] = {
        "size": adain_size,
        "images": count,
        "images_per_sec": round(count / seconds, 3),
        "sec_per_image": round(seconds / count, 3),
        "cpu_sec_per_image": round(cpu_seconds / count, 3),
        "note": "content and style encoded per image, batch 1",
    }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gan_style.methods.nst.stylize", description="Single-image neural style transfer: Gatys et al. (2016) and AdaIN (2017).")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
