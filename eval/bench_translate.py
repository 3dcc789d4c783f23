"""Time and peak memory of translating one large photo with a full-size generator.

    python eval/bench_translate.py --width 3840 --height 2160 --tile 512                       # exact tiles
    python eval/bench_translate.py --width 3840 --height 2160 --tile 512 --tile-mode per-tile  # before
    python eval/bench_translate.py --width 1024 --height 768             # whole-image pass
    python eval/bench_translate.py --width 512 --height 384 --tile 128 --compare  # + error vs whole
    python eval/bench_translate.py --method swapae --width 3840 --height 2160 --tile 512  # a swap, 256 px texture

Peak memory is the process's, so compare modes in separate runs.

Uses randomly initialised full-size networks (the cost does not depend on the weights) through
the same code path as `gan-style translate` (`--method swapae`: the Swapping Autoencoder's paper
preset through `Model.swap`, as `gan-style swap`, with a random 256x256 texture image).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gan_style.bench import peak_rss_mb
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.translate import TILE_MODES, run_padded, run_tiled, run_tiled_exact


def swapae_model(device: str):
    """The Swapping Autoencoder's paper preset (full size), random weights, ready for inference."""
    from gan_style.api import _ready_model
    from gan_style.engine.contract import config_from_overrides
    from gan_style.methods.swapae import SwapAE

    method = SwapAE(config_from_overrides(SwapAE, "paper", {}))
    return _ready_model(method, method.build_networks(), torch.device(device), "swapae (paper preset, random weights)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--method", choices=("resnet", "swapae"), default="resnet", help="resnet: the generator --netG; swapae: a swap")
    parser.add_argument("--alpha", type=float, default=1.0, help="swapae: texture interpolation (below 1 the image's own code is needed too)")
    parser.add_argument("--netG", default="resnet_9blocks")
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--tile-mode", choices=TILE_MODES, default="exact",
                        help="exact: whole-image statistics (default); per-tile: each tile normalised alone (the old --tile)")
    parser.add_argument("--antialias", action="store_true", help="CUT's generator (antialiased down/up-sampling)")
    parser.add_argument("--compare", action="store_true", help="also run the whole image and report the difference in grey levels")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    image = (torch.rand(1, 3, args.height, args.width) * 2 - 1).to(args.device)
    if args.method == "swapae":
        model = swapae_model(args.device)
        texture = torch.rand(1, 3, 256, 256) * 2 - 1

        def net(x: torch.Tensor, tile: int | None = args.tile, tile_mode: str = args.tile_mode) -> torch.Tensor:
            return model.translate(x, tile=tile, tile_mode=tile_mode, tile_overlap=args.overlap, texture=texture, alpha=args.alpha)
    else:
        spec = GeneratorSpec(args.netG, antialias=args.antialias, antialias_up=args.antialias)
        net = build_generator(spec).eval().to(args.device)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        if args.method == "swapae":
            out = net(image)
        elif args.tile and args.tile_mode == "exact":
            out = run_tiled_exact(net, image, net.size_multiple, args.tile)
        elif args.tile:
            out = run_tiled(net, image, net.size_multiple, args.tile, args.overlap)
        else:
            out = run_padded(net, image, net.size_multiple).float().cpu()
    seconds = time.perf_counter() - start
    result = {"method": args.method, "width": args.width, "height": args.height, "tile": args.tile, "tile_mode": args.tile_mode if args.tile else None,
              "seconds": round(seconds, 1), "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_mb": round(baseline, 1),
              "output": list(out.shape), "threads": torch.get_num_threads(), "device": args.device}
    if args.device.startswith("cuda"):
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if args.compare:
        with torch.inference_mode():
            whole = net(image, None) if args.method == "swapae" else run_padded(net, image, net.size_multiple).float().cpu()
        levels = (out.clamp(-1, 1) - whole.clamp(-1, 1)).abs() * 127.5  # grey levels of an 8-bit image
        result.update(mean_grey_levels=round(levels.mean().item(), 4), max_grey_levels=round(levels.max().item(), 4),
                      share_within_1_level=round((levels <= 1).float().mean().item(), 6))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
