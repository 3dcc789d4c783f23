"""Convolutions with a narrow side (the image-facing layers: a ResNet generator's 7x7 3 -> 64
entry and 64 -> 3 exit, MUNIT's encoders' and decoder's), as one matrix product over the wide
side's channels plus a gather over the kernel's taps on the narrow side, where measured faster,
for fp32 steps on the CPU.

Why: oneDNN runs the passes of these layers that produce the narrow side at 30-50 GFLOP/s, a
tenth of the machine's fp32 peak (AVX-512 Ice Lake Xeon, 2 threads, batch 3 at 128 px: the
64 -> 3 forward 27 ms, the 3 -> 64 input gradient 28 ms, the 64 -> 3 weight gradient 17 ms, each
0.92 GFLOP), while its other passes reach 130-300 GFLOP/s. With three output channels each of
its vector steps does little work. Those passes were about a tenth of a CycleGAN step there.

The products move to the wide side. For ``W`` of shape (C_out, C_in, k, k):

* Narrow output (C_out small). Forward: ``z = x W_a`` over the input's pixels, where
  ``W_a[c_in, (tap, c_out)]`` holds every tap's weights side by side (a GEMM with K = C_in, N =
  k*k*C_out), then ``y[p] = sum_tap z[p + offset(tap), tap]`` (``gs_taps_sum``). Backward: the
  output gradient spread to tap columns on the input's grid, ``G[q, (tap, c_out)] = dy[q -
  offset(tap)]`` (``gs_taps_spread``, im2col of the narrow side), then ``dx = G W_a^T`` and
  ``dW_a = G^T x``: two GEMMs with the wide side's C_in as N and M.
* Narrow input (C_in small). Forward: ``y = X W_b`` with ``X`` the input's tap columns (im2col of
  the narrow side). Backward: ``dW_b = X^T dy``, and ``z = dy W_b^T`` gathered back,
  ``dx[q] = sum_tap z[q - offset(tap), tap]``.

The gathers touch each value once (k*k*C floats per pixel, on the narrow side only). Each pass of
each shape is timed both ways the first time it runs (``narrow_choices`` lists the verdicts) and
runs the faster from then on: on other CPUs oneDNN may win. Needs the C gathers
(``narrow_kernels.c``, built on first use, as the Winograd transforms are); without a compiler
every layer runs PyTorch's convolution. A gradient penalty through the layer (``create_graph``)
gets PyTorch's backward, which autograd differentiates as it would PyTorch's own convolution.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_style.nn.layers import NARROW_MAX_CHANNELS, autocast_on, conv_gradients_needed, is_channels_last, pytorch_conv_backward
from gan_style.nn.measured import MeasuredChoices
from gan_style.nn.native import compile_library
from gan_style.nn.winograd import scratch

#: the narrowest wide side: below it the layer is small everywhere and oneDNN's call is as good
WIDE_MIN_CHANNELS = 16
#: the least work (forward multiply-adds x 2) a layer's pass must do to be measured: below it a
#: pass takes well under a millisecond, two timings of it differ by more than the kernels do, and
#: a choice that changed from run to run would change a run's rounding (the Swapping Autoencoder
#: demo's 3x3 patch-discriminator entry at 16x16: 7 MFLOP, 0.2-0.5 ms either way)
MIN_MFLOP = 100
#: the largest block of tap columns: whole images at a time up to 32 MB (a 3-channel 7x7 image
#: at 134x134 has 10.6 MB of them)
TAP_BLOCK_BYTES = 32 << 20


@functools.cache
def _native() -> ctypes.CDLL | None:
    library = compile_library("narrow_kernels", Path(__file__).with_name("narrow_kernels.c").read_text())
    if library is None:
        return None
    for name in ("gs_taps_sum", "gs_taps_spread"):
        getattr(library, name).argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 9
        getattr(library, name).restype = None
    return library


@torch.compiler.assume_constant_result  # torch.compile: evaluated once, not traced (it may build the library)
def narrow_kernels_available() -> bool:
    """Whether the C gathers are built here (a C compiler, ``GAN_STYLE_NATIVE`` not 0)."""
    return _native() is not None


def narrow_conv_applies(x: Tensor, weight: Tensor, padding: int) -> bool:
    """Whether :func:`narrow_conv2d` may run its own passes: a square kernel of side 3 or more, one
    side of at most ``NARROW_MAX_CHANNELS`` channels and the other of at least
    ``WIDE_MIN_CHANNELS``, padding below the kernel side, ``MIN_MFLOP`` of work or more, an fp32
    input on the CPU outside autocast (channels-last where it is the wide side), and the C gathers built."""
    c_out, c_in, k, k_w = weight.shape
    narrow, wide = min(c_in, c_out), max(c_in, c_out)
    n, _, h, w = x.shape
    flop = 2 * n * (h + 2 * padding - k + 1) * (w + 2 * padding - k + 1) * c_in * c_out * k * k
    return (k == k_w >= 3 and narrow <= NARROW_MAX_CHANNELS and wide >= WIDE_MIN_CHANNELS and 0 <= padding < k and flop >= MIN_MFLOP * 1e6
            and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and not autocast_on(x)
            and (c_in <= NARROW_MAX_CHANNELS or is_channels_last(x)) and narrow_kernels_available())


def _describe(key: tuple) -> str:
    direction, (n, c_in, h, w), (c_out, _, k, _), padding, needs, threads = key
    wanted = "" if needs is None else " (" + ", ".join(name for name, need in zip(("input", "weight", "bias"), needs) if need) + " gradients)"
    return f"{direction} {n}x{c_in}x{h}x{w} -> {c_out}, {k}x{k}, padding {padding}{wanted}, {threads} threads"


#: per pass of each shape: PyTorch's ("direct") or by taps, whichever was faster at its first run
verdicts = MeasuredChoices("taps", _describe)


def narrow_choices() -> dict[str, dict[str, float | str]]:
    """Every pass measured in this process: ``"forward|backward N x C_in x H x W -> C_out, kxk,
    padding p"`` to its timings (ms) and the kernel chosen ("direct": PyTorch's; "taps")."""
    return verdicts.listing()


def forget_narrow_choices() -> None:
    """Measure every pass again at its next use (tests)."""
    verdicts.forget()


def narrow_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)``, each pass by the kernel measured faster for
    its shape where :func:`narrow_conv_applies` (PyTorch's convolution otherwise)."""
    if narrow_conv_applies(x, weight, padding):
        return _NarrowConv.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding)


class _NarrowConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None
        key = ("forward", tuple(x.shape), tuple(weight.shape), padding, None, torch.get_num_threads())
        return verdicts.run(key, lambda: F.conv2d(x, weight, bias, padding=padding), lambda: taps_forward(x, weight, bias, padding))

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        needs = conv_gradients_needed(ctx)
        if torch.is_grad_enabled():  # create_graph (R1): PyTorch's backward, which autograd differentiates
            return (*pytorch_conv_backward(grad_out, x, weight, needs, 1, ctx.padding), None)
        key = ("backward", tuple(x.shape), tuple(weight.shape), ctx.padding, needs, torch.get_num_threads())
        return (*verdicts.run(key, lambda: pytorch_conv_backward(grad_out, x, weight, needs, 1, ctx.padding),
                              lambda: taps_backward(grad_out, x, weight, ctx.padding, needs)), None)


# -- the passes by taps --------------------------------------------------------------------------
def _pixels(x: Tensor) -> Tensor:
    """(N, H, W, C) rows of a channels-last image (a view where it is one, else a copy)."""
    return x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)


def _image_blocks(n: int, bytes_per_image: int):
    """(first image, images) blocks of at most ``TAP_BLOCK_BYTES`` of tap columns (at least one image)."""
    step = max(1, TAP_BLOCK_BYTES // bytes_per_image)
    for first in range(0, n, step):
        yield first, min(step, n - first)


def _gather(kernel: str, src: Tensor, dst: Tensor, k: int, channels: int, shift: int, flip: bool) -> None:
    """``gs_taps_sum`` (``kernel="sum"``) or ``gs_taps_spread`` from (N, H, W, ...) ``src`` into ``dst``, both contiguous."""
    if not (src.is_contiguous() and dst.is_contiguous()):
        raise ValueError("the tap gathers read and write contiguous (N, H, W, C) tensors")
    n, src_h, src_w = src.shape[:3]
    dst_h, dst_w = dst.shape[1:3]
    getattr(_native(), f"gs_taps_{kernel}")(src.data_ptr(), dst.data_ptr(), n, src_h, src_w, dst_h, dst_w, k, channels, shift, int(flip))


def _weights_by_tap(weight: Tensor, narrow_out: bool) -> Tensor:
    """``W_a`` (C_in, k*k*C_out) for a narrow output, ``W_b`` (k*k*C_in, C_out) for a narrow input."""
    c_out, c_in, k, _ = weight.shape
    if narrow_out:
        return weight.permute(1, 2, 3, 0).reshape(c_in, k * k * c_out)
    return weight.permute(2, 3, 1, 0).reshape(k * k * c_in, c_out)


def _weight_from_taps(grad: Tensor, weight: Tensor, narrow_out: bool) -> Tensor:
    """The weight's gradient from its tap layout (:func:`_weights_by_tap`'s), in the weight's memory format."""
    c_out, c_in, k, _ = weight.shape
    if narrow_out:
        shaped = grad.view(c_in, k, k, c_out).permute(3, 0, 1, 2)
    else:
        shaped = grad.view(k, k, c_in, c_out).permute(3, 2, 0, 1)
    return shaped.contiguous(memory_format=torch.channels_last if is_channels_last(weight) else torch.contiguous_format)


def taps_forward(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    """The convolution's output by one GEMM and a tap gather (the module docstring), channels-last."""
    c_out, c_in, k, _ = weight.shape
    n, _, h, w = x.shape
    out_h, out_w = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    narrow_out = c_out <= NARROW_MAX_CHANNELS
    pixels = _pixels(x)
    # returned whole, not as a permuted view of an (N, H, W, C) tensor: a view made inside an
    # autograd Function may not be modified in place (the StyleGAN2 layers' activations are)
    result = torch.empty(n, c_out, out_h, out_w, memory_format=torch.channels_last)
    out = result.permute(0, 2, 3, 1)
    taps = _weights_by_tap(weight, narrow_out)
    grid = (h, w) if narrow_out else (out_h, out_w)  # where the tap columns live
    columns_per_pixel = k * k * (c_out if narrow_out else c_in)
    for first, count in _image_blocks(n, grid[0] * grid[1] * columns_per_pixel * 4):
        columns = scratch.take(count, *grid, columns_per_pixel)
        block = out[first:first + count]
        if narrow_out:
            torch.mm(pixels[first:first + count].reshape(-1, c_in), taps, out=columns.view(-1, columns_per_pixel))
            _gather("sum", columns, block, k, c_out, padding, flip=False)
        else:
            _gather("spread", pixels[first:first + count], columns, k, c_in, padding, flip=False)
            torch.mm(columns.view(-1, columns_per_pixel), taps, out=block.view(-1, c_out))
        scratch.give(columns)
    if bias is not None:
        out += bias
    return result


def taps_backward(grad_out: Tensor, x: Tensor, weight: Tensor, padding: int,
                  needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The (input, weight, bias) gradients ``needs`` asks for, by GEMMs and tap gathers."""
    c_out, c_in, k, _ = weight.shape
    n, _, h, w = x.shape
    out_h, out_w = grad_out.shape[2:]
    narrow_out = c_out <= NARROW_MAX_CHANNELS
    pixels, grads = _pixels(x), _pixels(grad_out)
    taps = _weights_by_tap(weight, narrow_out)
    grad_input = torch.empty(n, c_in, h, w, memory_format=torch.channels_last).permute(0, 2, 3, 1) if needs[0] else None
    grad_taps = torch.zeros_like(taps) if needs[1] else None
    # the transposed convolution's taps read from the far corner: flipped, shifted by k-1-padding
    back = k - 1 - padding
    if narrow_out:  # G = dy spread to tap columns on the input's grid; dx = G W_a^T, dW_a = x^T G
        columns_per_pixel = k * k * c_out
        for first, count in _image_blocks(n, h * w * columns_per_pixel * 4):
            spread = scratch.take(count, h, w, columns_per_pixel)
            _gather("spread", grads[first:first + count], spread, k, c_out, back, flip=True)
            rows = spread.view(-1, columns_per_pixel)
            if grad_input is not None:
                torch.mm(rows, taps.t(), out=grad_input[first:first + count].view(-1, c_in))
            if grad_taps is not None:
                grad_taps.addmm_(pixels[first:first + count].reshape(-1, c_in).t(), rows)
            scratch.give(spread)
    else:  # X = x's tap columns; dW_b = X^T dy; dx = (dy W_b^T) gathered back
        columns_per_pixel = k * k * c_in
        for first, count in _image_blocks(n, out_h * out_w * columns_per_pixel * 4):
            columns = scratch.take(count, out_h, out_w, columns_per_pixel)
            rows, block_grads = columns.view(-1, columns_per_pixel), grads[first:first + count].reshape(-1, c_out)
            if grad_taps is not None:
                _gather("spread", pixels[first:first + count], columns, k, c_in, padding, flip=False)
                grad_taps.addmm_(rows.t(), block_grads)
            if grad_input is not None:
                torch.mm(block_grads, taps.t(), out=rows)
                _gather("sum", columns, grad_input[first:first + count], k, c_in, back, flip=True)
            scratch.give(columns)
    return (grad_input.permute(0, 3, 1, 2) if grad_input is not None else None,
            _weight_from_taps(grad_taps, weight, narrow_out) if grad_taps is not None else None,
            grad_out.sum((0, 2, 3)) if needs[2] else None)
