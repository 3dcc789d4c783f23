"""A fixed depthwise filter (a blur: CUT's antialiased sampling, StyleGAN2's FIR filters) whose
backward is its adjoint.

Autograd's depthwise convolution keeps its input to compute a kernel gradient that a fixed filter
never needs, and its CPU backward (oneDNN's) is slow: 2.6 ms for the strided blur of a
1x128x130x130 map that takes 0.37 ms forward (an AVX-512 Xeon, 2 threads). The adjoint of a
depthwise convolution is the transposed convolution with the same kernel, and the other way round,
so the backward here is one more forward call of the other kind, keeping nothing. Built from
differentiable calls, it has a backward of its own, so a double backward (R1 through D) works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fixed_filter(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, transposed: bool = False) -> Tensor:
    """``conv2d(x, weight, stride, padding, groups=C)`` (``conv_transpose2d`` when
    ``transposed``) for a constant ``weight`` (C, 1, kh, kw), in ``x``'s dtype."""
    weight = weight.to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FixedFilter.apply(x, weight, stride, padding, transposed)
    return _filter(x, weight, stride, padding, transposed)


def _filter(x: Tensor, weight: Tensor, stride: int, padding: int, transposed: bool,
            output_padding: tuple[int, int] = (0, 0)) -> Tensor:
    if transposed:
        return F.conv_transpose2d(x, weight, stride=stride, padding=padding, output_padding=output_padding, groups=x.shape[1])
    return F.conv2d(x, weight, stride=stride, padding=padding, groups=x.shape[1])


class _FixedFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int, transposed: bool) -> Tensor:
        ctx.weight, ctx.stride, ctx.padding, ctx.transposed = weight, stride, padding, transposed
        ctx.input_size = x.shape[-2:]
        return _filter(x, weight, stride, padding, transposed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        weight, stride, padding = ctx.weight, ctx.stride, ctx.padding
        if ctx.transposed:  # the adjoint of the transposed convolution is the convolution
            return fixed_filter(grad, weight, stride, padding), None, None, None, None
        # The transposed convolution gives (out - 1) * stride - 2 padding + k rows; the strided
        # convolution left (in + 2 padding - k) mod stride rows unread, whose gradient is zero.
        unread = tuple((n + 2 * padding - k) % stride for n, k in zip(ctx.input_size, weight.shape[-2:]))
        # differentiable by autograd (create_graph: a double backward), slowly but rarely
        return _filter(grad, weight, stride, padding, True, unread), None, None, None, None
