"""Separable resampling of channels-last images in one C pass (``resample_kernels.c``), in the
image's own dtype: CUT's antialiased down- and up-sampling (``gan_style.nn.antialias``) and
reflection padding (``gan_style.nn.layers.ReflectionPad2d``), forward and backward.

Each is an outer product of one 1-D operator per axis, so a layer is ``A_h X A_wᵀ`` per channel and
its backward (the adjoint) ``A_hᵀ G A_w``: the same kernel with the transposed operators. Each
operator is a short table per output row: 3 taps for the [1, 2, 1] blur at stride 2 (reflected
at the borders), 2 for the x2 upsampling, 1 for a reflection pad; 1-3 for their adjoints.

Why: PyTorch runs the sampling as a pad and a depthwise convolution, and in a bf16 step (where
oneDNN's bf16 depthwise convolutions are slow) in fp32 with casts around them: 8.4 ms for a
128-channel 128x128 map forward and backward on a 2-core Xeon, 1.35 ms here. Its reflection pad's
backward zero-fills and scatters: 0.87 ms for that map in bf16 (docs/speed.md, session n). Sums
are fp32; a bf16 result is rounded once.
"""

from __future__ import annotations

import ctypes
import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_style.nn.layers import C_KERNEL_DTYPES, is_channels_last
from gan_style.nn.native import c_source, compile_library

#: the named 1-D operators; ``("reflect", before, after)`` is the other kind (:func:`operator_matrix`)
OPERATORS = ("blur_down", "bilinear_up")
Operator = str | tuple[str, int, int]


@functools.cache
def _native() -> ctypes.CDLL | None:
    library = compile_library("resample_kernels", c_source("bf16.h", "resample_kernels.c"))
    if library is None:
        return None
    for suffix in C_KERNEL_DTYPES.values():
        kernel = getattr(library, f"gs_resample_{suffix}")
        kernel.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 6 + ([ctypes.c_void_p] * 3 + [ctypes.c_int64]) * 2
        kernel.restype = None
    return library


@torch.compiler.assume_constant_result  # torch.compile: evaluated once, not traced (it may build the library)
def resample_kernels_available() -> bool:
    """Whether the C kernel is built here (a C compiler, ``GAN_STYLE_NATIVE`` not 0)."""
    return _native() is not None


def operator_matrix(operator: Operator, size: int) -> Tensor:
    """The 1-D ``operator`` for an axis of ``size`` pixels, dense (output x input, float64).

    ``blur_down``: [1, 2, 1] / 4 at every second pixel, reflect-padded by one (antialias.Downsample
    per axis: its 3x3 filter is the outer product of this one with itself).
    ``bilinear_up``: x2, each new pixel 3/4 of its nearest and 1/4 of its next nearest, replicated
    at the borders (antialias.Upsample per axis: [1, 3, 3, 1] / 4 transposed at stride 2 on a
    replicate-padded input, which is bilinear upsampling with align_corners=False).
    ``("reflect", before, after)``: the axis padded by reflection (the edge pixel not repeated)."""
    if isinstance(operator, tuple) and operator[0] == "reflect":
        _, before, after = operator
        if not (0 <= before < size and 0 <= after < size):
            raise ValueError(f"reflection padding by ({before}, {after}) needs more than {max(before, after)} pixels, got {size}")
        matrix = torch.zeros(before + size + after, size, dtype=torch.float64)
        for i in range(before + size + after):
            matrix[i, _reflected(i - before, size)] = 1.0
        return matrix
    if operator == "blur_down":
        if size < 2:
            raise ValueError("reflection padding needs at least 2 pixels")
        out = (size - 1) // 2 + 1
        matrix = torch.zeros(out, size, dtype=torch.float64)
        for i in range(out):
            for tap, weight in zip((-1, 0, 1), (0.25, 0.5, 0.25), strict=True):
                matrix[i, _reflected(2 * i + tap, size)] += weight
        return matrix
    if operator == "bilinear_up":
        matrix = torch.zeros(2 * size, size, dtype=torch.float64)
        for m in range(size):
            matrix[2 * m, max(m - 1, 0)] += 0.25
            matrix[2 * m, m] += 0.75
            matrix[2 * m + 1, m] += 0.75
            matrix[2 * m + 1, min(m + 1, size - 1)] += 0.25
        return matrix
    raise ValueError(f"unknown operator {operator!r}; one of {OPERATORS} or ('reflect', before, after)")


def _reflected(index: int, size: int) -> int:
    """The pixel a reflection (no edge repeat) puts at ``index`` of an axis of ``size`` (one fold)."""
    return -index if index < 0 else 2 * (size - 1) - index if index >= size else index


@functools.cache
def _table(operator: Operator, size: int, adjoint: bool) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """The operator for ``size`` pixels (or its adjoint) as (taps per output, input indices, weights,
    table width, input length)."""
    matrix = operator_matrix(operator, size)
    matrix = matrix.t() if adjoint else matrix
    taps = (matrix != 0).sum(1)
    width = int(taps.max())
    indices = torch.zeros(matrix.shape[0], width, dtype=torch.int64)
    weights = torch.zeros(matrix.shape[0], width, dtype=torch.float32)
    for row in range(matrix.shape[0]):
        (columns,) = matrix[row].nonzero(as_tuple=True)
        indices[row, : len(columns)] = columns
        weights[row, : len(columns)] = matrix[row, columns].float()
    return taps, indices, weights, width, matrix.shape[1]


def resample_applies(x: Tensor) -> bool:
    """Whether :func:`resample` runs ``x`` by the C kernel: a channels-last fp32 or bf16 CPU image."""
    return (x.device.type == "cpu" and x.dtype in C_KERNEL_DTYPES and x.dim() == 4 and is_channels_last(x)
            and resample_kernels_available())


def resample(x: Tensor, rows: Operator, columns: Operator | None = None) -> Tensor:
    """``x`` (N, C, H, W), channels-last (:func:`resample_applies`), through the operator ``rows``
    on its height and ``columns`` (default: the same) on its width; in ``x``'s dtype,
    channels-last, differentiable (also twice: R1's create_graph)."""
    return _Resample.apply(x, (rows, rows if columns is None else columns), tuple(x.shape[-2:]), False)


def reflection_pad(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """``F.pad(x, padding, mode="reflect")`` (padding as (left, right, top, bottom)) for a
    channels-last image (:func:`resample_applies`): PyTorch's forward (a copy, which it does as fast),
    this module's backward (the adjoint's gather, 2x faster than PyTorch's zero-fill and scatter)."""
    left, right, top, bottom = padding
    return _ReflectionPad.apply(x, (("reflect", top, bottom), ("reflect", left, right)))


class _ReflectionPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, operators: tuple[Operator, Operator]) -> Tensor:
        ctx.operators, ctx.size = operators, tuple(x.shape[-2:])
        (_, top, bottom), (_, left, right) = operators
        # outside autocast, which lists reflection padding as an fp32 op (a bf16 step's copies)
        with torch.autocast(x.device.type, enabled=False):
            return F.pad(x, (left, right, top, bottom), mode="reflect").contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _Resample.apply(grad, ctx.operators, ctx.size, True), None


class _Resample(torch.autograd.Function):
    """The ``operators`` (height's, width's) for an input of ``size`` (H, W), or (``adjoint``) their
    transposes, which map an output-sized image back to ``size``; each one's backward is the other."""

    @staticmethod
    def forward(ctx, x: Tensor, operators: tuple[Operator, Operator], size: tuple[int, int], adjoint: bool) -> Tensor:
        ctx.operators, ctx.size, ctx.adjoint = operators, size, adjoint
        rows, columns = (_table(operator, length, adjoint) for operator, length in zip(operators, size, strict=True))
        n, c, h, w = x.shape
        if (h, w) != (rows[4], columns[4]):
            raise ValueError(f"resampling by {operators}{' (adjoint)' if adjoint else ''} for {size} expects {rows[4]}x{columns[4]} pixels, got {h}x{w}")
        x = x.contiguous(memory_format=torch.channels_last)
        out = torch.empty((n, c, rows[0].shape[0], columns[0].shape[0]), dtype=x.dtype, memory_format=torch.channels_last)
        kernel = getattr(_native(), f"gs_resample_{C_KERNEL_DTYPES[x.dtype]}")
        kernel(x.data_ptr(), out.data_ptr(), n, h, w, c, out.shape[2], out.shape[3],
               rows[0].data_ptr(), rows[1].data_ptr(), rows[2].data_ptr(), rows[3],
               columns[0].data_ptr(), columns[1].data_ptr(), columns[2].data_ptr(), columns[3])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        return _Resample.apply(grad, ctx.operators, ctx.size, not ctx.adjoint), None, None, None
