"""A fixed depthwise filter (a blur: CUT's antialiased sampling, StyleGAN2's FIR filters) whose
backward is its adjoint.

Autograd's depthwise convolution keeps its input to compute a kernel gradient that a fixed filter
never needs: a full-size copy of the activation per filter. The adjoint of a depthwise convolution
is the transposed convolution with the same kernel, and the other way round, so the backward here
is one call of the other kind, keeping nothing. It saves that memory, not time: on an AVX-512
Xeon (2 threads) oneDNN's transposed depthwise convolution takes as long as the convolution's own
backward did, measured interleaved. The backward goes through this function again, so a double
backward (R1 through D) works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def fixed_filter(x: Tensor, weight: Tensor, stride: int = 1, padding: int = 0, transposed: bool = False,
                 output_padding: tuple[int, int] = (0, 0)) -> Tensor:
    """``conv2d(x, weight, stride, padding, groups=C)`` (``conv_transpose2d`` with
    ``output_padding`` when ``transposed``) for a constant ``weight`` (C, 1, kh, kw), in ``x``'s dtype."""
    weight = weight.to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        return _FixedFilter.apply(x, weight, stride, padding, transposed, output_padding)
    return _filter(x, weight, stride, padding, transposed, output_padding)


def _filter(x: Tensor, weight: Tensor, stride: int, padding: int, transposed: bool,
            output_padding: tuple[int, int] = (0, 0)) -> Tensor:
    if transposed:
        return F.conv_transpose2d(x, weight, stride=stride, padding=padding, output_padding=output_padding, groups=x.shape[1])
    return F.conv2d(x, weight, stride=stride, padding=padding, groups=x.shape[1])


class _FixedFilter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int, transposed: bool,
                output_padding: tuple[int, int]) -> Tensor:
        ctx.weight, ctx.stride, ctx.padding, ctx.transposed = weight, stride, padding, transposed
        ctx.input_size = x.shape[-2:]
        return _filter(x, weight, stride, padding, transposed, output_padding)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None, None, None]:
        weight, stride, padding = ctx.weight, ctx.stride, ctx.padding
        if ctx.transposed:  # the adjoint of the transposed convolution is the convolution
            return fixed_filter(grad, weight, stride, padding), None, None, None, None, None
        # The transposed convolution gives (out - 1) * stride - 2 padding + k rows; the strided
        # convolution left (in + 2 padding - k) mod stride rows unread, whose gradient is zero.
        unread = tuple((n + 2 * padding - k) % stride for n, k in zip(ctx.input_size, weight.shape[-2:]))
        return fixed_filter(grad, weight, stride, padding, True, unread), None, None, None, None, None
