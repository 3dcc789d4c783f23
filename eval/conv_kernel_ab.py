"""Direct against Winograd convolutions over whole training steps, in one process: the same trainer
alternates the two kernels step by step (A B, then B A) and reports the median of the paired step
ratios.

    python eval/conv_kernel_ab.py fastcut --size 128 --steps 16 [--set flip_equivariance=false]

Why in one process: on a shared 2-core machine our fp32 step time swung by ±20 % between processes
(``side_by_side.py``, ``gan-style bench``) while a 5-10 % change was what needed measuring; adjacent
steps share the machine's state, so their ratio does not swing with it. Pass
``--set flip_equivariance=false`` for FastCUT: its random flips change a step's work (an extra
encoder pass in half the steps), which pairs of steps would not share.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from gan_style.bench import timing_unit
from gan_style.config import parse_set_arguments
from gan_style.engine.contract import config_from_overrides
from gan_style.engine.kernels import set_conv_kernel
from gan_style.engine.trainer import Trainer
from gan_style.errors import UserError
from gan_style.methods import get_method

KERNELS = ("direct", "winograd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=16, help="pairs of steps timed (after one untimed pair)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        method_cls = get_method(args.method)
        batch_size = method_cls.bench_batch_size
        settings = {"train.batch_size": batch_size, "train.winograd": True, **parse_set_arguments(args.set)}
        config = config_from_overrides(method_cls, None, settings)
    except UserError as error:  # an unknown method or option: one line, no traceback
        sys.exit(f"error: {error}")
    trainer = Trainer(method_cls(config), run_dir=None, show_progress=False)
    unit, _ = timing_unit(trainer, args.size, batch_size)
    seconds: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
    for pair in range(args.steps + 1):
        for kernel in KERNELS if pair % 2 == 0 else KERNELS[::-1]:
            for network in trainer.networks.values():
                set_conv_kernel(network, kernel)
            start = time.perf_counter()
            unit()
            if pair:
                seconds[kernel].append(time.perf_counter() - start)
    for kernel, times in seconds.items():
        print(f"{kernel:9s} median {statistics.median(times):.3f} s, min {min(times):.3f} s over {len(times)} steps")
    ratios = [w / d for d, w in zip(seconds["direct"], seconds["winograd"], strict=True)]
    print(f"winograd / direct: median of paired step ratios {statistics.median(ratios):.3f} "
          f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f})")


if __name__ == "__main__":
    main()
