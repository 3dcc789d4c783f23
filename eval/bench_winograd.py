"""Winograd against PyTorch's direct convolution, one 3x3 layer at a time (fp32, forward + backward).

    python eval/bench_winograd.py [--shapes 1x256x256x32 1x64x128x128 ...] [--layout cl|nchw]

A shape is NxC_INxC_OUTxSIDE (zero padding 1, stride 1, with bias). Prints the median milliseconds
of a forward and backward pass (input, weight and bias gradients) by the direct convolution and
by F(4x4, 3x3) and F(2x2, 3x3) (gan_style.nn.winograd), the time ratio, and each one's largest
error relative to the largest float64 value (output and gradients). The defaults are the
residual-block, down- and up-sampling layers of the ResNet generators at 128 px.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from gan_style.nn.winograd import winograd_conv3x3

DEFAULT_SHAPES = ("1x256x256x32", "2x256x256x32", "1x256x256x64", "1x128x256x64", "1x256x128x64", "1x64x128x128", "1x128x64x128")


def median_ms(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def time_layer(shape: str, memory_format: torch.memory_format, generator: torch.Generator) -> str:
    n, c_in, c_out, side = (int(v) for v in shape.split("x"))
    x = torch.randn(n, c_in, side, side, generator=generator).contiguous(memory_format=memory_format).requires_grad_()
    weight = (torch.randn(c_out, c_in, 3, 3, generator=generator) / (9 * c_in) ** 0.5).contiguous(memory_format=memory_format).requires_grad_()
    bias = torch.randn(c_out, generator=generator).requires_grad_()
    grad = torch.randn(n, c_out, side, side, generator=generator).contiguous(memory_format=memory_format)
    leaves64 = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    reference = F.conv2d(*leaves64, padding=1)
    references = [reference, *torch.autograd.grad(reference, leaves64, grad.double())]
    convolutions = {"direct": lambda: F.conv2d(x, weight, bias, padding=1),
                    "F(4x4)": lambda: winograd_conv3x3(x, weight, bias, 1, 4),
                    "F(2x2)": lambda: winograd_conv3x3(x, weight, bias, 1, 2)}
    line = f"{shape:>14}:"
    timings = {}
    for name, conv in convolutions.items():
        def step(conv=conv):
            out = conv()
            return (out, *torch.autograd.grad(out, (x, weight, bias), grad))
        error = max(((o.double() - r).abs().max() / r.abs().max()).item() for o, r in zip(step(), references, strict=True))
        timings[name] = median_ms(step)
        line += f"  {name} {timings[name]:7.2f} ({error:.0e})"
    return line + f"  F(4x4)/direct {timings['F(4x4)'] / timings['direct']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=list(DEFAULT_SHAPES))
    parser.add_argument("--layout", choices=("cl", "nchw"), default="cl")
    args = parser.parse_args()
    memory_format = torch.channels_last if args.layout == "cl" else torch.contiguous_format
    generator = torch.Generator().manual_seed(0)
    print(f"{torch.get_num_threads()} threads, {args.layout}; ms forward + backward (error)")
    for shape in args.shapes:
        print(time_layer(shape, memory_format, generator), flush=True)


if __name__ == "__main__":
    main()
