"""The backward of bf16 stride-1 3x3 convolutions by the CPU's matrix tiles (AMX): the weight
gradient in fp32, the input gradient in bf16, where measured faster, for mixed-precision steps on
CPUs that have them.

Why: in a bf16 step PyTorch's convolution backward (oneDNN) computes a 256-channel residual
layer's weight gradient at batch 1 at half its forward's speed (1.13 against 0.55 ms at 32x32 on
a 2-core AMX Xeon), reorders it out of oneDNN's blocked layout and copies it to channels-last
(0.25 ms); its input gradient reorders the weight again, out of cache (0.32 ms); and the step then
sums the bf16 weight gradients of a weight's uses and casts them to fp32 (0.4 ms). The C kernels
(``tile_kernels.c``) write the weight gradient in fp32 straight in the master weight's
channels-last layout, each product exact and every sum fp32 (oneDNN's bf16 result is rounded to
bf16: ~3e-3 of its largest entry against float64, here ~2e-7), and the input gradient from a
weight packed by the kernel, fp32 sums rounded to bf16 once as oneDNN's are. A bf16 FastCUT step:
0.94 of the time (docs/speed.md, session s).

A layer that qualifies (:func:`tile_conv_applies`: a :class:`~gan_style.nn.layers.Conv2d` with a
3x3 kernel, stride 1, no padding of its own (the residual blocks' reflection pads come before
it), channels multiples of 32, a channels-last bf16 input under CPU autocast, a weight that needs
its gradient) runs its forward by PyTorch on the bf16 cast of its weight and hands autograd the
fp32 gradients of the weight and bias themselves. Each shape's backward is timed both ways at its
first use (:data:`verdicts`, ``tile_gradient_choices``) and the faster runs from then on. A
gradient penalty through the layer (``create_graph``) gets PyTorch's backward.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_style.nn.layers import autocast_on, conv_gradients_needed, is_channels_last, pytorch_conv_backward
from gan_style.nn.measured import MeasuredChoices
from gan_style.nn.native import c_source, compile_library
from gan_style.nn.winograd import scratch

log = logging.getLogger(__name__)

#: the channel counts must be multiples of this (two 16-wide tiles on either side)
TILE_CHANNELS = 32


@functools.cache
def _library() -> ctypes.CDLL | None:
    if not (hasattr(torch.cpu, "_is_amx_tile_supported") and torch.cpu._is_amx_tile_supported()):
        return None
    library = compile_library("tile_kernels", c_source("bf16.h", "tile_kernels.c"))
    if library is None:
        return None
    library.gs_tile_weight_gradient_bf16.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 5 + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2
    library.gs_tile_weight_gradient_bf16.restype = None
    library.gs_tile_pack_weight_bf16.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2
    library.gs_tile_pack_weight_bf16.restype = None
    library.gs_tile_input_gradient_bf16.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 5 + [ctypes.c_void_p, ctypes.c_int64]
    library.gs_tile_input_gradient_bf16.restype = None
    if library.gs_tiles_init() != 0:  # not compiled for tiles, or Linux did not grant them
        log.info("the CPU's matrix tiles are not usable here: the bf16 3x3 backward stays PyTorch's")
        return None
    return library


@torch.compiler.assume_constant_result  # torch.compile: evaluated once, not traced (it may build the library)
def tile_kernels_available() -> bool:
    """Whether the tile kernel runs here: a CPU with AMX, a C compiler that targets it, Linux's
    permission for the tile registers, ``GAN_STYLE_NATIVE`` not 0."""
    return _library() is not None


def _describe(key: tuple) -> str:
    (n, c_in, h, w), c_out, threads = key
    return f"{n}x{c_in}x{h}x{w} -> {c_out}, 3x3, bf16, {threads} threads"


#: per shape: PyTorch's whole backward ("direct") or the tile kernels' ("tiles");
#: five rounds each (a layer's backward is 2-5 ms: two rounds chose either way by chance)
verdicts = MeasuredChoices("tiles", _describe, rounds=5)


def tile_gradient_choices() -> dict[str, dict[str, float | str]]:
    """Every shape measured in this process: its description to its timings (ms) and the kernel chosen."""
    return verdicts.listing()


def tile_conv_applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether :func:`tile_conv2d` runs ``conv`` on ``x`` (see the module's docstring)."""
    return (conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding in ((0, 0), 0) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.in_channels % TILE_CHANNELS == 0 and conv.out_channels % TILE_CHANNELS == 0
            and x.dim() == 4 and x.device.type == "cpu" and is_channels_last(x) and conv.weight.requires_grad
            and conv.weight.dtype == torch.float32 and torch.is_grad_enabled() and autocast_on(x)
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and tile_kernels_available())


def tile_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, weight_cast: Tensor | None, bias_cast: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias)`` in bf16 whose backward gives ``weight`` and ``bias`` (the fp32
    masters) their fp32 gradients, the weight's by tiles where measured faster; ``weight_cast`` and
    ``bias_cast``: the step's bf16 casts of them (None, or the master itself: cast here)."""
    weight_cast = _bf16(weight, weight_cast)
    bias_cast = None if bias is None else _bf16(bias, bias_cast)
    x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    return _TileConv.apply(x, weight, bias, weight_cast, bias_cast)


def _bf16(master: Tensor, cast: Tensor | None) -> Tensor:
    """``cast`` if it is ``master``'s bf16 cast (the step's), else a new one; without its graph: the
    gradient goes to ``master`` itself."""
    return (cast if cast is not None and cast.dtype == torch.bfloat16 else master.to(torch.bfloat16)).detach()


class _TileConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, weight_cast: Tensor, bias_cast: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight_cast)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight_cast, bias_cast)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight_cast = ctx.saved_tensors
        needs = conv_gradients_needed(ctx)
        grad_out = grad_out.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        if torch.is_grad_enabled():  # create_graph (R1): PyTorch's backward, which autograd differentiates
            grads = _for_masters(*pytorch_conv_backward(grad_out, x, weight_cast, needs))
        elif needs[1]:
            key = (tuple(x.shape), weight_cast.shape[0], torch.get_num_threads())
            grads = verdicts.run(key, *(functools.partial(_backward, kernel, grad_out, x, weight_cast, needs) for kernel in ("direct", "tiles")))
        else:
            grads = _backward("direct", grad_out, x, weight_cast, needs)
        return (*grads, None, None)


def _backward(kernel: str, grad_out: Tensor, x: Tensor, weight_cast: Tensor, needs: tuple[bool, bool, bool]
              ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients by ``kernel``, the weight's and bias's in fp32 for the masters: "direct", PyTorch's
    whole backward in bf16, cast (within what the first use times, as autocast's cast back is part of
    that way's cost); "tiles", the input gradient by :func:`tile_input_gradient` and the weight's
    and bias's by :func:`tile_weight_gradient`."""
    if kernel == "direct":
        return _for_masters(*pytorch_conv_backward(grad_out, x, weight_cast, needs))
    grad_input = tile_input_gradient(grad_out, weight_cast) if needs[0] else None
    grad_weight, grad_bias = tile_weight_gradient(x, grad_out)
    return grad_input, grad_weight, grad_bias if needs[2] else None


def _for_masters(grad_input: Tensor | None, grad_weight: Tensor | None, grad_bias: Tensor | None) -> tuple[Tensor | None, ...]:
    """PyTorch's bf16 gradients with the weight's and bias's cast for the fp32 masters."""
    return grad_input, *(None if grad is None else grad.float() for grad in (grad_weight, grad_bias))


def tile_input_gradient(grad_out: Tensor, weight: Tensor) -> Tensor:
    """dL/dx (bf16, channels-last, the padded input's size) of ``F.conv2d(x, weight)`` for a stride-1
    3x3 convolution without padding, given dL/dy; ``grad_out`` and ``weight`` bf16 channels-last,
    their channels multiples of 32; by the tile kernel (fp32 sums, rounded once)."""
    n, c_out, h, w = grad_out.shape
    c_in = weight.shape[1]
    if weight.shape != (c_out, c_in, 3, 3) or c_in % TILE_CHANNELS or c_out % TILE_CHANNELS:
        raise ValueError(f"tile input gradient: weight {tuple(weight.shape)} and output gradient {tuple(grad_out.shape)} are not a 3x3 "
                         f"convolution's with channels in multiples of {TILE_CHANNELS}")
    d_rows = (h + 4) * (w + 2) + w + 2 + 64  # dL/dy on the input's grid, and room for the last block's reads
    buffers, (packed, grid) = _bf16_scratch(9 * c_out * c_in, n * d_rows * c_out)
    grad_input = torch.empty(n, c_in, h + 2, w + 2, dtype=torch.bfloat16, memory_format=torch.channels_last)
    weight = weight.contiguous(memory_format=torch.channels_last)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    library = _library()
    library.gs_tile_pack_weight_bf16(weight.data_ptr(), packed.data_ptr(), c_in, c_out)
    library.gs_tile_input_gradient_bf16(grad_out.data_ptr(), packed.data_ptr(), grad_input.data_ptr(), n, h, w, c_in, c_out,
                                        grid.data_ptr(), d_rows)
    scratch.give(*buffers)
    return grad_input


def tile_weight_gradient(x: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """dL/dW (fp32, channels-last (C_out, C_in, 3, 3)) of ``F.conv2d(x, W, b)`` for a stride-1 3x3
    convolution without padding, given dL/dy, and dL/db (fp32, dL/dy summed: the kernel adds it up
    as it reads dL/dy); ``x`` and ``grad_out`` bf16 channels-last, their channels multiples of 32."""
    n, c_in, height, width = x.shape
    c_out, h, w = grad_out.shape[1:]
    if (height, width) != (h + 2, w + 2) or c_in % TILE_CHANNELS or c_out % TILE_CHANNELS:
        raise ValueError(f"tile weight gradient: input {tuple(x.shape)} and output gradient {tuple(grad_out.shape)} are not a 3x3 "
                         f"convolution's with channels in multiples of {TILE_CHANNELS}")
    k_pad = -(-h * (w + 2) // 32) * 32
    pair_rows = k_pad // 2 + w + 3  # the last tap starts w + 3 pairs in
    buffers, (a, pairs) = _bf16_scratch(c_out * n * k_pad + 1, n * pair_rows * c_in * 2)  # A with one value before it
    sums = scratch.take(n * c_out)
    grad_weight, grad_bias = torch.empty(c_out, c_in, 3, 3, memory_format=torch.channels_last), torch.empty(c_out)
    x = x.contiguous(memory_format=torch.channels_last)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    _library().gs_tile_weight_gradient_bf16(x.data_ptr(), grad_out.data_ptr(), grad_weight.data_ptr(), grad_bias.data_ptr(), n, h, w,
                                            c_in, c_out, a.data_ptr(), pairs.data_ptr(), sums.data_ptr(), k_pad, pair_rows)
    scratch.give(*buffers, sums)
    return grad_weight, grad_bias


def _bf16_scratch(*sizes: int) -> tuple[list[Tensor], list[Tensor]]:
    """Buffers of the scratch pool (fp32, half as many values) for bf16 arrays of ``sizes``, and
    their bf16 views; the buffers go back to the pool (``scratch.give``) when the kernel is done."""
    buffers = [scratch.take(-(-size // 2)) for size in sizes]
    return buffers, [buffer.view(torch.bfloat16) for buffer in buffers]
