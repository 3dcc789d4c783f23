"""Winograd against PyTorch's direct convolution, one 3x3 or 4x4 layer at a time (fp32, forward + backward).

    python eval/bench_winograd.py [--shapes 1x256x256x32 1x64x128x128 2x128x256x32x4 ...] [--layout cl|nchw]

A shape is NxC_INxC_OUTxSIDE[xKERNEL] (kernel side 3 unless given; zero padding 1, stride 1, with
bias). Prints the median milliseconds of a forward and backward pass (input, weight and bias
gradients) by the direct convolution and by each Winograd form for the kernel
(gan_style.nn.winograd: F(4x4, 3x3) and F(2x2, 3x3); F(3x3, 4x4); F(4x4, 5x5)), the default form's PyTorch path
("torch") beside its fused C transforms where those run, the time ratios to the direct
convolution, and each one's largest error relative to the largest float64 value (output and
gradients).
The defaults are the residual-block, down- and up-sampling layers of the ResNet generators at 128
px, then the stride-1 4x4 layers of CUT's antialiased discriminator at 128 px (batch 2 in its
step, 1 in the generator's).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from gan_style.nn.winograd import OUTPUT_TILES, fused_transforms_apply, winograd_conv2d

DEFAULT_SHAPES = ("1x256x256x32", "2x256x256x32", "1x256x256x64", "1x128x256x64", "1x256x128x64", "1x64x128x128", "1x128x64x128",
                  "2x64x128x64x4", "2x128x256x32x4", "2x256x512x16x4", "1x256x512x16x4")


def median_ms(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def parse_shape(shape: str) -> tuple[int, int, int, int, int]:
    """NxC_INxC_OUTxSIDE[xKERNEL] -> (N, C_IN, C_OUT, SIDE, KERNEL), or one ``error:`` line and exit."""
    fields = shape.split("x")
    if len(fields) not in (4, 5) or not all(field.isdigit() and int(field) > 0 for field in fields):
        sys.exit(f"error: --shapes {shape!r}: expected NxC_INxC_OUTxSIDE or NxC_INxC_OUTxSIDExKERNEL, positive integers (e.g. 1x256x256x32)")
    n, c_in, c_out, side, kernel = (int(v) for v in (fields + ["3"])[:5])
    if kernel not in OUTPUT_TILES:
        sys.exit(f"error: --shapes {shape!r}: kernel side {kernel}; Winograd here takes {', '.join(map(str, OUTPUT_TILES))}")
    return n, c_in, c_out, side, kernel


def time_layer(shape: str, memory_format: torch.memory_format, generator: torch.Generator) -> str:
    n, c_in, c_out, side, kernel = parse_shape(shape)
    x = torch.randn(n, c_in, side, side, generator=generator).contiguous(memory_format=memory_format).requires_grad_()
    weight = (torch.randn(c_out, c_in, kernel, kernel, generator=generator) / (kernel * kernel * c_in) ** 0.5)
    weight = weight.contiguous(memory_format=memory_format).requires_grad_()
    bias = torch.randn(c_out, generator=generator).requires_grad_()
    out_side = side + 2 - kernel + 1
    grad = torch.randn(n, c_out, out_side, out_side, generator=generator).contiguous(memory_format=memory_format)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    reference = F.conv2d(*leaves64, padding=1)
    references = [reference, *torch.autograd.grad(reference, leaves64, grad.double())]
    convolutions = {"direct": lambda: F.conv2d(x, weight, bias, padding=1)}
    for tile in OUTPUT_TILES[kernel]:
        convolutions[f"F({tile}x{tile})"] = lambda tile=tile: winograd_conv2d(x, weight, bias, 1, tile)
    if fused_transforms_apply(x, weight):  # the fused C transforms, and the PyTorch path beside them
        convolutions[f"F({OUTPUT_TILES[kernel][0]}x{OUTPUT_TILES[kernel][0]}) torch"] = lambda: winograd_conv2d(x, weight, bias, 1, native=False)
    line = f"{shape:>16}:"
    timings = {}
    for name, conv in convolutions.items():
        def step(conv=conv):
            out = conv()
            return (out, *torch.autograd.grad(out, (x, weight, bias), grad))
        error = max(((o.double() - r).abs().max() / r.abs().max()).item() for o, r in zip(step(), references, strict=True))
        timings[name] = median_ms(step)
        line += f"  {name} {timings[name]:7.2f} ({error:.0e})"
    default = f"F({OUTPUT_TILES[kernel][0]}x{OUTPUT_TILES[kernel][0]})"
    line += f"  {default}/direct {timings[default] / timings['direct']:.2f}"
    if f"{default} torch" in timings:
        line += f", torch path/direct {timings[default + ' torch'] / timings['direct']:.2f}"
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES))
    parser.add_argument("--layout", choices=("cl", "nchw"), default="cl")
    args = parser.parse_args()
    memory_format = torch.channels_last if args.layout == "cl" else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        parse_shape(shape)  # every shape checked before the first is timed
    print(f"{torch.get_num_threads()} threads, {args.layout}; ms forward + backward (error)")
    for shape in args.shapes:
        print(time_layer(shape, memory_format, generator), flush=True)


if __name__ == "__main__":
    main()
