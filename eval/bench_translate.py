"""Time and peak memory of translating one large photo with a full-size generator.

    python eval/bench_translate.py --width 3840 --height 2160 --tile 512
    python eval/bench_translate.py --width 1024 --height 768             # whole-image pass

Uses randomly initialised full-size networks (the cost does not depend on the weights) through
the same code path as `gan-style translate`.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gan_style.bench import peak_rss_mb
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.translate import run_padded, run_tiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--netG", default="resnet_9blocks")
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=64)
    args = parser.parse_args()
    net = build_generator(GeneratorSpec(args.netG)).eval()
    image = torch.rand(1, 3, args.height, args.width) * 2 - 1
    baseline = peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        if args.tile:
            out = run_tiled(net, image, net.size_multiple, args.tile, args.overlap)
        else:
            out = run_padded(net, image, net.size_multiple)
    seconds = time.perf_counter() - start
    print(json.dumps({"width": args.width, "height": args.height, "tile": args.tile, "seconds": round(seconds, 1),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_mb": round(baseline, 1),
                      "output": list(out.shape), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
