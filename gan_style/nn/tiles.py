"""bf16 stride-1 convolutions with 3x3 and 4x4 kernels by the CPU's matrix tiles (AMX), where
measured faster, for mixed-precision training steps on CPUs that have them: the forward and the
input gradient in bf16, rounded once from fp32 sums (as oneDNN's), the weight gradient in fp32.

Why: in a bf16 step PyTorch's convolution (oneDNN) computes a 256-channel residual layer's weight
gradient at batch 1 at half its forward's speed (1.13 against 0.55 ms at 32x32 on a 2-core AMX
Xeon), reorders it out of oneDNN's blocked layout and copies it to channels-last (0.25 ms),
reorders the weight for the forward (0.17 ms) and again, out of cache, for the input gradient
(0.32 ms); and the step casts each weight to bf16 (0.28 ms), then sums the bf16 weight gradients of
a weight's uses and casts them to fp32 (0.4 ms). The C kernels (``tile_kernels.c``) pack each
weight once per version straight from its fp32 master, in the two orders the forward and the
input gradient read it (no bf16 cast), and write the weight gradient in fp32 straight in the
master's channels-last layout, each product exact and every sum fp32 (oneDNN's bf16 result is
rounded to bf16: ~3e-3 of its largest entry against float64, here ~2e-7). A bf16 FastCUT step:
0.94 of the time with the backward by tiles, 0.96 of that with the forward too (docs/speed.md,
sessions s and t).

A layer that qualifies (:func:`tile_conv_applies`: a :class:`~gan_style.nn.layers.Conv2d` with a
3x3 or 4x4 kernel, stride 1, zero padding of 0 or 1 (the residual blocks' reflection pads come
before their layers; the PatchGAN discriminators' 4x4 stride-1 layer pads by 1), channels
multiples of 32, a channels-last bf16 input under CPU autocast with autograd on) hands autograd the
fp32 gradients of its weight and bias themselves; a frozen one (a discriminator in the
generator's phase) gets only its input gradient. Each shape's forward and
backward are timed both ways at their first use (:data:`forward_verdicts`, :data:`verdicts`;
``tile_forward_choices``, ``tile_gradient_choices``) and the faster runs from then on; once both
chose the tiles, the layer's weight is never cast to bf16. A gradient penalty through the layer
(``create_graph``) gets PyTorch's backward.
"""

from __future__ import annotations

import ctypes
import functools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_style.nn.layers import autocast_on, conv_gradients_needed, is_channels_last, pytorch_conv_backward, step_cast, step_derived
from gan_style.nn.measured import MeasuredChoices
from gan_style.nn.native import c_source, compile_library

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
    for name, pointers in (("gs_tile_weight_gradient_bf16", 4), ("gs_tile_input_gradient_bf16", 3), ("gs_tile_forward_bf16", 4)):
        getattr(library, name).argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * 7
        getattr(library, name).restype = ctypes.c_int
    library.gs_tile_pack_fp32.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3
    library.gs_tile_pack_fp32.restype = None
    library.gs_tiles_poison_scratch.argtypes, library.gs_tiles_poison_scratch.restype = [ctypes.c_int], None
    library.gs_tiles_release.argtypes, library.gs_tiles_release.restype = [], None
    if library.gs_tiles_init() != 0:  # not compiled for tiles, or Linux did not grant them
        log.info("the CPU's matrix tiles are not usable here: bf16 convolutions stay PyTorch's")
        return None
    return library


@torch.compiler.assume_constant_result  # torch.compile: evaluated once, not traced (it may build the library)
def tile_kernels_available() -> bool:
    """Whether the tile kernels run here: a CPU with AMX, a C compiler that targets it, Linux's
    permission for the tile registers, ``GAN_STYLE_NATIVE`` not 0."""
    return _library() is not None


def _describe(key: tuple) -> str:
    (n, c_in, h, w), c_out, kernel_size, padding, threads, *weight_gradient = key
    what = "" if not weight_gradient else ", with the weight's gradient" if weight_gradient[0] else ", input gradient only"
    return f"{n}x{c_in}x{h}x{w} -> {c_out}, {kernel_size}x{kernel_size}, padding {padding}, bf16, {threads} threads{what}"


#: per shape and whether the weight takes a gradient (a frozen discriminator's does not): PyTorch's
#: whole backward ("direct") or the tile kernels' ("tiles"); five rounds each (a layer's backward is
#: 2-5 ms: two rounds chose either way by chance)
verdicts = MeasuredChoices("tiles", _describe, rounds=5)

#: per shape: PyTorch's forward ("direct") or the tile kernel's ("tiles")
forward_verdicts = MeasuredChoices("tiles", _describe, rounds=5)


def tile_gradient_choices() -> dict[str, dict[str, float | str]]:
    """Every shape's backward measured in this process: its description to its timings (ms) and the kernel chosen."""
    return verdicts.listing()


def tile_forward_choices() -> dict[str, dict[str, float | str]]:
    """The same for the forward: every shape measured in this process, its timings (ms) and the kernel chosen."""
    return forward_verdicts.listing()


def tile_conv_applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """Whether :func:`tile_conv2d` runs ``conv`` on ``x`` (see the module's docstring)."""
    return (conv.kernel_size in ((3, 3), (4, 4)) and conv.stride == (1, 1) and conv.padding in ((0, 0), (1, 1))
            and conv.padding_mode == "zeros" and conv.dilation == (1, 1) and conv.groups == 1
            and conv.in_channels % TILE_CHANNELS == 0 and conv.out_channels % TILE_CHANNELS == 0
            and x.dim() == 4 and min(x.shape[2:]) + 2 * conv.padding[0] >= conv.kernel_size[0]
            and x.device.type == "cpu" and is_channels_last(x)
            and conv.weight.dtype == torch.float32 and torch.is_grad_enabled() and autocast_on(x)
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and tile_kernels_available())


@torch.compiler.disable  # torch.compile must not trace it: the C kernels write through data_ptr(), unseen by inductor
def tile_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, bias_cast: Tensor | None, padding: int = 0) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` in bf16 whose backward gives ``weight`` and
    ``bias`` (the fp32 masters) their fp32 gradients, its forward and backward by tiles where
    measured faster; ``bias_cast``: the step's bf16 cast of the bias (None, or the master itself:
    cast here)."""
    bias_cast = None if bias is None else _bf16(bias, bias_cast)
    x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    return _TileConv.apply(x, weight, bias, bias_cast, padding)


def _bf16(master: Tensor, cast: Tensor | None) -> Tensor:
    """``cast`` if it is ``master``'s bf16 cast (the step's), else a new one; without its graph: the
    gradient goes to ``master`` itself."""
    return (cast if cast is not None and cast.dtype == torch.bfloat16 else master.to(torch.bfloat16)).detach()


def _weight_cast(weight: Tensor, x: Tensor) -> Tensor:
    """The step's bf16 cast of ``weight`` (one per weight version, ``gan_style.nn.layers.weight_casts``), detached."""
    return _bf16(weight, step_cast(weight, x))


class _TileConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, bias_cast: Tensor | None, padding: int) -> Tensor:
        key = (tuple(x.shape), weight.shape[0], weight.shape[2], padding, torch.get_num_threads())
        backward_key = (*key, weight.requires_grad)
        packs = weight_packs(weight)
        # the bf16 cast only where one of PyTorch's ways may run: while measuring, or chosen
        tiles_only = forward_verdicts.chosen(key) == verdicts.chosen(backward_key) == "tiles"
        weight_cast = None if tiles_only else _weight_cast(weight, x)
        ctx.save_for_backward(x, packs[1], weight_cast)
        ctx.key, ctx.has_bias, ctx.weight, ctx.weight_version = backward_key, bias is not None, weight, weight._version
        return forward_verdicts.run(key, lambda: F.conv2d(x, weight_cast, bias_cast, padding=padding),
                                    lambda: tile_forward(x, packs[0], bias_cast, weight.shape[2], padding))

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, input_gradient_pack, weight_cast = ctx.saved_tensors
        key, padding = ctx.key, ctx.key[3]
        needs = conv_gradients_needed(ctx)
        grad_out = grad_out.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        pytorch_only = torch.is_grad_enabled()  # create_graph (R1): PyTorch's backward, which autograd differentiates
        if weight_cast is None and (pytorch_only or verdicts.chosen(key) != "tiles"):
            weight_cast = _cast_for_backward(ctx)
        if pytorch_only:
            return (*_backward("direct", grad_out, x, weight_cast, input_gradient_pack, padding, needs), None, None)
        ways = (functools.partial(_backward, kernel, grad_out, x, weight_cast, input_gradient_pack, padding, needs)
                for kernel in ("direct", "tiles"))
        return (*verdicts.run(key, *ways), None, None)


def _cast_for_backward(ctx) -> Tensor:
    """The bf16 weight of the forward, for a PyTorch backward where the forward needed none."""
    if ctx.weight._version != ctx.weight_version:
        raise RuntimeError("a convolution's weight changed between its forward and its backward (an in-place update): "
                           "its gradient would be of the new weight")
    return ctx.weight.detach().to(torch.bfloat16)


def _backward(kernel: str, grad_out: Tensor, x: Tensor, weight_cast: Tensor | None, input_gradient_pack: Tensor, padding: int,
              needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients by ``kernel``, the weight's and bias's in fp32 for the masters: "direct", PyTorch's
    whole backward in bf16, cast (within what the first use times, as autocast's cast back is part of
    that way's cost); "tiles", the input gradient by :func:`tile_input_gradient` and the weight's
    and bias's by :func:`tile_weight_gradient`."""
    if kernel == "direct":
        return _for_masters(*pytorch_conv_backward(grad_out, x, weight_cast, needs, padding=padding))
    kernel_size = x.shape[2] + 2 * padding - grad_out.shape[2] + 1
    grad_input = tile_input_gradient(grad_out, input_gradient_pack, x.shape[1], kernel_size, padding) if needs[0] else None
    grad_weight, grad_bias = tile_weight_gradient(x, grad_out, padding) if needs[1] or needs[2] else (None, None)
    return grad_input, grad_weight if needs[1] else None, grad_bias if needs[2] else None


def _for_masters(grad_input: Tensor | None, grad_weight: Tensor | None, grad_bias: Tensor | None) -> tuple[Tensor | None, ...]:
    """PyTorch's bf16 gradients with the weight's and bias's cast for the fp32 masters."""
    return grad_input, *(None if grad is None else grad.float() for grad in (grad_weight, grad_bias))


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"{what}: not a stride-1 convolution with a 3x3 or 4x4 kernel, padding 0 or 1 and channels in multiples "
                         f"of {TILE_CHANNELS}")


def tile_forward(x: Tensor, forward_pack: Tensor, bias: Tensor | None, kernel_size: int = 3, padding: int = 0) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` (bf16, channels-last) for a stride-1
    ``kernel_size`` x ``kernel_size`` convolution, given the weight's ``forward_pack``
    (:func:`weight_packs`), by the tile kernel: fp32 sums, the bias added, rounded to bf16 once (as
    oneDNN's); channels multiples of 32, ``bias`` bf16 or None."""
    n, c_in, height, width = x.shape
    taps = kernel_size * kernel_size
    c_out = forward_pack.numel() // (taps * c_in)
    h, w = height + 2 * padding - kernel_size + 1, width + 2 * padding - kernel_size + 1
    _check(kernel_size in (3, 4) and padding in (0, 1) and forward_pack.numel() == taps * c_in * c_out and c_in % TILE_CHANNELS == 0
           and c_out % TILE_CHANNELS == 0 and min(h, w) >= 1, f"tile forward: input {tuple(x.shape)}, a packed weight of "
           f"{forward_pack.numel()} values, a {kernel_size}x{kernel_size} kernel, padding {padding}")
    out = torch.empty(n, c_out, h, w, dtype=torch.bfloat16, memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    bias = None if bias is None else bias.to(torch.bfloat16).contiguous()
    _checked(_library().gs_tile_forward_bf16(x.data_ptr(), forward_pack.data_ptr(), None if bias is None else bias.data_ptr(),
                                             out.data_ptr(), n, height, width, c_in, c_out, kernel_size, padding))
    return out


def tile_input_gradient(grad_out: Tensor, input_gradient_pack: Tensor, in_channels: int, kernel_size: int = 3,
                        padding: int = 0) -> Tensor:
    """dL/dx (bf16, channels-last) of ``F.conv2d(x, weight, padding=padding)`` for a stride-1
    ``kernel_size`` x ``kernel_size`` convolution, given dL/dy (bf16 channels-last) and the weight's
    ``input_gradient_pack`` (:func:`weight_packs`); channels multiples of 32; by the tile kernel
    (fp32 sums, rounded once)."""
    n, c_out, h, w = grad_out.shape
    taps = kernel_size * kernel_size
    height, width = h + kernel_size - 1 - 2 * padding, w + kernel_size - 1 - 2 * padding
    _check(kernel_size in (3, 4) and padding in (0, 1) and input_gradient_pack.numel() == taps * c_out * in_channels
           and in_channels % TILE_CHANNELS == 0 and c_out % TILE_CHANNELS == 0 and min(height, width) >= 1,
           f"tile input gradient: output gradient {tuple(grad_out.shape)}, a packed weight of {input_gradient_pack.numel()} values, "
           f"{in_channels} input channels, a {kernel_size}x{kernel_size} kernel, padding {padding}")
    grad_input = torch.empty(n, in_channels, height, width, dtype=torch.bfloat16, memory_format=torch.channels_last)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    _checked(_library().gs_tile_input_gradient_bf16(grad_out.data_ptr(), input_gradient_pack.data_ptr(), grad_input.data_ptr(), n,
                                                    height, width, in_channels, c_out, kernel_size, padding))
    return grad_input


def tile_weight_gradient(x: Tensor, grad_out: Tensor, padding: int = 0) -> tuple[Tensor, Tensor]:
    """dL/dW (fp32, channels-last (C_out, C_in, k, k)) of ``F.conv2d(x, W, b, padding=padding)`` for a
    stride-1 convolution with a 3x3 or 4x4 kernel (k from the sizes of ``x`` and dL/dy), given
    dL/dy, and dL/db (fp32, dL/dy summed: the kernel adds it up as it reads dL/dy); ``x`` and
    ``grad_out`` bf16 channels-last, their channels multiples of 32."""
    n, c_in, height, width = x.shape
    c_out, h, w = grad_out.shape[1:]
    kernel_size = height + 2 * padding - h + 1
    _check(kernel_size in (3, 4) and width + 2 * padding - w + 1 == kernel_size and padding in (0, 1) and c_in % TILE_CHANNELS == 0
           and c_out % TILE_CHANNELS == 0, f"tile weight gradient: input {tuple(x.shape)}, output gradient {tuple(grad_out.shape)}, "
           f"padding {padding}")
    grad_weight = torch.empty(c_out, c_in, kernel_size, kernel_size, memory_format=torch.channels_last)
    grad_bias = torch.empty(c_out)
    x = x.contiguous(memory_format=torch.channels_last)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    _checked(_library().gs_tile_weight_gradient_bf16(x.data_ptr(), grad_out.data_ptr(), grad_weight.data_ptr(), grad_bias.data_ptr(), n,
                                                     height, width, c_in, c_out, kernel_size, padding))
    return grad_weight, grad_bias


def weight_packs(weight: Tensor) -> tuple[Tensor, Tensor]:
    """A 3x3 or 4x4 weight (fp32, (C_out, C_in, k, k), channels multiples of 32) rounded to bf16 and
    packed for :func:`tile_forward` and :func:`tile_input_gradient`, in one pass; once per weight
    version in a training step (its later uses take the same), else at each call."""
    def pack() -> tuple[Tensor, Tensor]:
        c_out, c_in, kh, kw = weight.shape
        _check(kh == kw and kh in (3, 4) and c_in % TILE_CHANNELS == 0 and c_out % TILE_CHANNELS == 0,
               f"tile packs: weight {tuple(weight.shape)}")
        master = weight.detach().float().contiguous(memory_format=torch.channels_last)
        forward, input_gradient = torch.empty(weight.numel(), dtype=torch.bfloat16), torch.empty(weight.numel(), dtype=torch.bfloat16)
        _library().gs_tile_pack_fp32(master.data_ptr(), forward.data_ptr(), input_gradient.data_ptr(), c_in, c_out, kh * kw)
        return forward, input_gradient

    return step_derived(weight, "tile packs", pack)


def _checked(status: int) -> None:
    """A kernel's status: -1 where its scratch could not be allocated."""
    if status != 0:
        raise MemoryError("the tile kernels' scratch buffers could not be allocated")


def release_tile_buffers() -> None:
    """Free the tile kernels' scratch buffers (this thread's; the kernels keep them between calls)."""
    library = _library()
    if library is not None:
        library.gs_tiles_release()
