"""Direct against Winograd convolutions over whole training steps, in one process: the same trainer
alternates the two kernels step by step (A B, then B A) and reports the median of the paired step
ratios. ``--compare weight-gradient``: PyTorch's backward of the strided convolutions against the
per-shape choice of gan_style.nn.strided (im2col's weight gradient where timed faster), the
stride-1 convolutions by Winograd in both. ``--compare narrow``: PyTorch's image-side convolutions
(a side of at most four channels: the generators' 7x7 entry and exit) against the per-pass choice
of gan_style.nn.narrow (a GEMM and a tap gather where timed faster). ``--compare pages``: PyTorch's CPU allocator against
train.reuse_pages (large tensors on the pages of freed ones, gan_style.engine.memory), kernels as
the trainer chose them. ``--compare norm``: PyTorch's batch-norm kernel one sample at a time against
the fused C instance norm (norm kernel "fused"). ``--compare sampling``: CUT's antialiased sampling
by its pad and depthwise filter (in fp32 for a bf16 input) and PyTorch's reflection-pad backward,
against gan_style.nn.resample's C passes. ``--compare activations``: the ReLU and LeakyReLU after
each instance norm as separate modules against their fusion into the norm's C passes
(train.fuse_activations, gan_style.engine.kernels.fuse_norm_activations), the norm fused in both.
``--compare casts`` (mixed-precision steps): autocast's weight casts, once per autocast region,
against one per weight version (gan_style.nn.layers.weight_casts). ``--compare tiles`` (bf16 steps on
a CPU with AMX): PyTorch's convolutions of the stride-1 3x3 and 4x4 layers against their forward
and backward by the tile kernels where timed faster (gan_style.nn.tiles).

    python eval/conv_kernel_ab.py fastcut --size 128 --steps 16 [--set flip_equivariance=false]
    python eval/conv_kernel_ab.py cut --size 128 --steps 10 --compare sampling --set train.mixed_precision=bf16
    python eval/conv_kernel_ab.py swapae --size 128 --steps 4 --compare weight-gradient --set data.crop_size=128 --set data.load_size=128
    python eval/conv_kernel_ab.py cyclegan --size 128 --steps 16 --compare pages

Why in one process: on a shared 2-core machine our fp32 step time swung by ±20 % between processes
(``side_by_side.py``, ``gan-style bench``) while a 5-10 % change was what needed measuring; adjacent
steps share the machine's state, so their ratio does not swing with it. Pass
``--set flip_equivariance=false`` for FastCUT: its random flips change a step's work (an extra
encoder pass in half the steps), which pairs of steps would not share.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch

from gan_style.bench import timing_unit
from gan_style.config import parse_set_arguments
from gan_style.engine import trainer as trainer_module
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.kernels import fuse_norm_activations, set_conv_kernel, set_norm_kernel
from gan_style.engine.memory import PAGE_REUSE_MIN_BYTES, page_reuse_counters, set_page_reuse_min_bytes
from gan_style.engine.trainer import Trainer
from gan_style.errors import UserError
from gan_style.methods import get_method
from gan_style.nn import antialias, resample
from gan_style.nn.layers import fused_norm_available

#: per comparison, the two sides as (name, settings): "conv" the convolution kernel (with
#: "weight_gradient" and "narrow", gan_style.engine.kernels.set_conv_kernel), "pages" large blocks on
#: freed pages, "norm" the norm kernel, "resample" CUT's sampling and the reflection pads by
#: gan_style.nn.resample, "activations" the norms' activations fused into them; what a side leaves
#: out stays as the trainer chose
SETTINGS = {
    "winograd": (("direct", {"conv": "direct", "weight_gradient": "direct"}), ("winograd", {"conv": "winograd", "weight_gradient": "direct"})),
    "weight-gradient": (("direct", {"conv": "winograd", "weight_gradient": "direct"}),
                        ("measured", {"conv": "winograd", "weight_gradient": "measured"})),
    "narrow": (("direct", {"conv": "winograd", "weight_gradient": "measured", "narrow": "direct"}),
               ("taps", {"conv": "winograd", "weight_gradient": "measured", "narrow": "measured"})),
    "pages": (("pytorch", {"pages": False}), ("reused", {"pages": True})),
    "norm": (("batchnorm", {"norm": "batchnorm"}), ("fused", {"norm": "fused"})),
    "sampling": (("filter", {"resample": False}), ("resample", {"resample": True})),
    "activations": (("separate", {"norm": "fused", "activations": False}), ("fused", {"norm": "fused", "activations": True})),
    "casts": (("autocast", {"casts": False}), ("kept", {"casts": True})),
    "tiles": (("direct", {"conv": "direct", "weight_gradient": "direct"}), ("tiles", {"conv": "direct", "weight_gradient": "measured"})),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16, help="pairs of steps timed (after one untimed pair)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--compare", choices=tuple(SETTINGS), default="winograd",
                        help="winograd: direct against Winograd convolutions (default); weight-gradient: PyTorch's strided backward "
                             "against the measured choice; narrow: PyTorch's image-side convolutions against the measured choice; "
                             "pages: PyTorch's CPU allocator against freed pages reused; norm: the batch-norm against the fused "
                             "instance norm; sampling: CUT's sampling and reflection pads by PyTorch against the C passes; "
                             "activations: the norms' activations as modules against fused into the norm; casts: autocast's weight "
                             "casts against one per weight version; tiles: PyTorch's bf16 3x3 and 4x4 convolutions against the tile kernels'")
    parser.add_argument("--page-min-mb", type=float, default=PAGE_REUSE_MIN_BYTES / 2**20,
                        help="--compare pages: the smallest block served from freed pages, in MB")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error(f"--steps {args.steps}: give at least 2 (the paired ratios' quartiles need two pairs)")
    torch.set_num_threads(args.threads)
    try:
        method_cls = get_method(args.method)
        batch_size = method_cls.bench_batch_size
        # the convolution kernels' comparisons run the fp32 step by Winograd where they do not set it
        winograd = {"train.winograd": True} if any("conv" in side for _, side in SETTINGS[args.compare]) else {}
        settings = {"train.batch_size": batch_size, **winograd, **parse_set_arguments(args.set)}
        config = config_from_overrides(method_cls, None, settings)
    except UserError as error:  # an unknown method or option: one line, no traceback
        sys.exit(f"error: {error}")
    trainer = Trainer(method_cls(config), run_dir=None, show_progress=False)
    unit, _ = timing_unit(trainer, args.size, batch_size)
    sides = SETTINGS[args.compare]
    if args.compare == "pages" and page_reuse_counters() is None:
        sys.exit("error: --compare pages: the page-reusing allocator is not installed here (train.reuse_pages=false, not Linux, no C++ compiler or GAN_STYLE_NATIVE=0)")
    if args.compare in ("norm", "activations") and not fused_norm_available():
        sys.exit(f"error: --compare {args.compare}: the fused instance norm is not built here (no C compiler or GAN_STYLE_NATIVE=0)")
    if args.compare == "sampling" and not resample.resample_kernels_available():
        sys.exit("error: --compare sampling: the resampling kernel is not built here (no C compiler or GAN_STYLE_NATIVE=0)")
    resample_applies = resample.resample_applies
    kept_casts = trainer_module.weight_casts
    seconds: dict[str, list[float]] = {name: [] for name, _ in sides}
    for pair in range(args.steps + 1):
        for name, side in sides if pair % 2 == 0 else sides[::-1]:
            for network in trainer.networks.values():
                if "conv" in side:
                    set_conv_kernel(network, side["conv"], side["weight_gradient"], side.get("narrow"))
                if "norm" in side:
                    set_norm_kernel(network, side["norm"])
                if "activations" in side:
                    fuse_norm_activations(network, side["activations"])
            if "pages" in side:
                set_page_reuse_min_bytes(int(args.page_min_mb * 2**20) if side["pages"] else None)
            if "casts" in side:  # the trainer's per-step cast context, or none (autocast's own casts)
                trainer_module.weight_casts = kept_casts if side["casts"] else (lambda dtype: contextlib.nullcontext())
            if "resample" in side:  # the availability check the modules consult, replaced
                antialias.resample_applies = resample.resample_applies = resample_applies if side["resample"] else (lambda x: False)
            start = time.perf_counter()
            unit()
            if pair:
                seconds[name].append(time.perf_counter() - start)
    for name, times in seconds.items():
        print(f"{name:9s} median {statistics.median(times):.3f} s, min {min(times):.3f} s over {len(times)} steps")
    (base, _), (new, _) = sides
    ratios = [b / a for a, b in zip(seconds[base], seconds[new], strict=True)]
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"{new} / {base}: median of paired step ratios {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})")

if __name__ == "__main__":
    main()
