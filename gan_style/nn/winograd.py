"""Winograd convolution F(m x m, 3 x 3) for the stride-1 3x3 convolutions of fp32 training steps.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): an m x m output
tile of a 3x3 convolution is ``A^T [(G g G^T) * (B^T d B)] A`` for the (m+2) x (m+2) input tile
``d`` and the kernel ``g``. Over all tiles and channels the elementwise product becomes
(m+2)^2 independent matrix products (tiles x C_in) @ (C_in x C_out): 36 multiplications for 16
outputs with F(4x4, 3x3) instead of 144, so 4x fewer FLOPs than the direct convolution, and the
backward (input and weight gradients) is the same products transposed.

Why: in fp32 the direct convolutions of a CycleGAN step already run at the machine's matmul
peak (README, "Speed"), so fewer FLOPs is the only way left to a faster fp32 step; its 256-channel
residual blocks hold ~87 % of them. Forward and backward of a 256-channel 32x32 layer take
6.8 ms instead of 12.5 (AVX-512 Xeon, 2 threads).

Numerics: with the interpolation points chosen below, F(4x4, 3x3)'s error is ~3e-6 of the
output's largest value, about the direct convolution's ~2e-6 (``tests/test_winograd.py`` bounds
both the forward and the gradients); TF32, which the CycleGAN/CUT references use for their
convolutions on Ampere GPUs by default (next to cuDNN's own Winograd kernels, picked by
``cudnn.benchmark``), is ~1e-3. F(2x2, 3x3) (``output_tile=2``) does 2.25x fewer multiplications
than the direct convolution, and was slower here. The trainer uses F(4x4, 3x3) where measured
faster (``train.winograd``).

The tiles are gathered and the transforms applied as matrix products over flattened tiles
(Kronecker products of the 1-D transforms), so every step is one large PyTorch op; the weight
transform is recomputed in the backward instead of kept (it is 4x the weight: ~1 GB over a
CycleGAN step's graph).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from gan_style.nn.layers import is_channels_last

# 1-D transforms (B^T, G, A^T), Toom-Cook with infinity among the points (Lavin & Gray, section
# 4). F(2, 3): the points 0, 1, -1. F(4, 3): 0, 1, -1, 1/2, -2 rather than Lavin & Gray's 0, +-1,
# +-2: the error falls from ~7e-6 to ~2.6e-6 of the output's largest value, about the direct
# convolution's (Barabasz et al., "Error Analysis and Improving the Accuracy of Winograd
# Convolution for Deep Neural Networks", 2020, choose points the same way). Column 1 of A^T (the
# point 1) is all ones in both, which the bias relies on.
_TRANSFORMS = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[1, -3 / 2, -2, 3 / 2, 1, 0], [0, -1, 1 / 2, 5 / 2, 1, 0], [0, 1, -5 / 2, 1 / 2, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 1 / 2, -1, -1 / 2, 1, 0], [0, 1, -3 / 2, -2, 3 / 2, 1]],
        [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [-1 / 3, 1 / 3, -1 / 3], [-16 / 15, -8 / 15, -4 / 15], [1 / 15, -2 / 15, 4 / 15], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 1 / 2, -2, 0], [0, 1, 1, 1 / 4, 4, 0], [0, 1, -1, 1 / 8, -8, 1]],
    ),
}
OUTPUT_TILES = tuple(_TRANSFORMS)


@functools.cache
def _transforms_2d(m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """B^T (x) B^T, G (x) G, A^T (x) A^T: the 2-D transforms acting on row-major flattened tiles."""
    input_t, kernel_t, output_t = (torch.tensor(t, dtype=torch.float64) for t in _TRANSFORMS[m])
    return tuple(torch.kron(t, t).float().to(device) for t in (input_t, kernel_t, output_t))


def _kernel_transform(weight: Tensor, kernel_t: Tensor) -> Tensor:
    """U = G g G^T per (C_out, C_in) pair, as (a², C_out, C_in): for a channels-last weight,
    (K, 3, 3, C) in memory, gathering it as (3, 3, K, C) copies runs of C values."""
    c_out, c_in = weight.shape[:2]
    return (kernel_t @ weight.permute(2, 3, 0, 1).reshape(9, c_out * c_in)).view(-1, c_out, c_in)


def _input_transform(padded: Tensor, m: int, input_t: Tensor) -> Tensor:
    """V = B^T d B for every (m+2)-tile d of ``padded`` at stride m, as (a², N th tw, C_in): the
    tiles gathered (a, a, N, th, tw, C_in) in one copy, then one matrix product."""
    a = m + 2
    n, c_in = padded.shape[:2]
    tiles = padded.unfold(2, a, m).unfold(3, a, m).permute(4, 5, 0, 2, 3, 1)
    th, tw = tiles.shape[3:5]
    return (input_t @ tiles.reshape(a * a, -1)).view(a * a, n * th * tw, c_in)


def _overlap_add(tiles: Tensor, m: int, channels_last: bool) -> Tensor:
    """The adjoint of gathering overlapping (m+2)-tiles at stride m: ``tiles`` (a, a, N, th, tw,
    C) summed into the padded input's gradient (N, C, th*m+2, tw*m+2) in the wanted layout."""
    a, _, n, th, tw, c = tiles.shape
    halo = a - m
    if channels_last:  # spatial axes (tile row, row in tile, tile col, col in tile) between N and C
        tiles = tiles.permute(2, 3, 0, 4, 1, 5)
        out = tiles.new_zeros(n, th + 1, m, tw + 1, m, c)

        def at(*spatial: slice) -> tuple[slice, ...]:
            return (slice(None), *spatial, slice(None))
    else:  # spatial axes after N and C
        tiles = tiles.permute(2, 5, 3, 0, 4, 1)
        out = tiles.new_zeros(n, c, th + 1, m, tw + 1, m)

        def at(*spatial: slice) -> tuple[slice, ...]:
            return (slice(None), slice(None), *spatial)
    every = slice(None)
    # a tile's first m rows (cols) are its own; its last two overlap the next tile's first two
    own, overlap = (slice(None, m), (slice(None, th), every)), (slice(m, None), (slice(1, None), slice(None, halo)))
    own_cols, overlap_cols = (slice(None, m), (slice(None, tw), every)), (slice(m, None), (slice(1, None), slice(None, halo)))
    for rows_in, (tile_rows, rows_out) in (own, overlap):
        for cols_in, (tile_cols, cols_out) in (own_cols, overlap_cols):
            out[at(tile_rows, rows_out, tile_cols, cols_out)] += tiles[at(every, rows_in, every, cols_in)]
    if channels_last:
        out = out.view(n, (th + 1) * m, (tw + 1) * m, c)[:, : th * m + halo, : tw * m + halo]
        return out.permute(0, 3, 1, 2)
    return out.view(n, c, (th + 1) * m, (tw + 1) * m)[:, :, : th * m + halo, : tw * m + halo]


class _WinogradConv3x3(torch.autograd.Function):
    """3x3 convolution, stride 1, of an already padded input whose output sides are multiples of m."""

    @staticmethod
    def forward(ctx, padded: Tensor, weight: Tensor, bias: Tensor | None, m: int) -> Tensor:
        input_t, kernel_t, output_t = _transforms_2d(m, padded.device)
        a = m + 2
        n, c_in, height, width = padded.shape
        c_out = weight.shape[0]
        th, tw = (height - 2) // m, (width - 2) // m
        channels_last = is_channels_last(padded)
        # the output first, before the temporaries: a long-lived tensor allocated into the hole
        # they leave would fragment the C heap (peak RSS of a CycleGAN step +10-15 %)
        result = torch.empty((n, c_out, th * m, tw * m), dtype=padded.dtype, device=padded.device,
                             memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        transformed = _input_transform(padded, m, input_t)  # V = B^T d B, (a², N th tw, C_in)
        products = torch.bmm(transformed, _kernel_transform(weight, kernel_t).transpose(1, 2))  # M = U * V
        del transformed  # each large temporary is dropped as soon as it is used: they set the peak
        if bias is not None:
            # column 1 of A^T (the point 1) is all ones: a constant added there reaches every output
            products[a + 1] += bias
        out = (output_t @ products.view(a * a, -1)).view(m, m, n, th, tw, c_out)  # A^T M A
        del products
        ctx.save_for_backward(padded, weight)  # V is recomputed: it is 2.25x the input
        ctx.m, ctx.tiles, ctx.has_bias, ctx.channels_last = m, (th, tw), bias is not None, channels_last
        if channels_last:
            result.permute(0, 2, 3, 1).view(n, th, m, tw, m, c_out).copy_(out.permute(2, 3, 0, 4, 1, 5))
        else:
            result.view(n, c_out, th, m, tw, m).copy_(out.permute(2, 5, 3, 0, 4, 1))
        return result

    @staticmethod
    @once_differentiable  # a double backward (a gradient penalty through this layer) is not supported
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        padded, weight = ctx.saved_tensors
        m, (th, tw) = ctx.m, ctx.tiles
        a = m + 2
        input_t, kernel_t, output_t = _transforms_2d(m, grad_out.device)
        n, c_out = grad_out.shape[:2]
        c_in = weight.shape[1]
        if ctx.channels_last:
            grad_tiles = grad_out.permute(0, 2, 3, 1).reshape(n, th, m, tw, m, c_out).permute(2, 4, 0, 1, 3, 5)
        else:
            grad_tiles = grad_out.reshape(n, c_out, th, m, tw, m).permute(3, 5, 0, 2, 4, 1)
        grad_products = (output_t.t() @ grad_tiles.reshape(m * m, -1)).view(a * a, n * th * tw, c_out)
        grad_input = grad_weight = grad_bias = None
        # the weight's gradient (kept until the optimiser step) before the temporaries, as in forward
        if ctx.needs_input_grad[1]:
            layout = torch.channels_last if is_channels_last(weight) else torch.contiguous_format
            grad_weight = torch.empty_like(weight, memory_format=layout)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_products[a + 1].sum(0)
        if ctx.needs_input_grad[1]:
            grad_kernel = torch.bmm(grad_products.transpose(1, 2), _input_transform(padded, m, input_t))  # (a², C_out, C_in)
            grad_weight.copy_((kernel_t.t() @ grad_kernel.view(a * a, -1)).view(3, 3, c_out, c_in).permute(2, 3, 0, 1))
            del grad_kernel
        if ctx.needs_input_grad[0]:
            grad_transformed = torch.bmm(grad_products, _kernel_transform(weight, kernel_t))
            del grad_products
            grad_tiles = (input_t.t() @ grad_transformed.view(a * a, -1)).view(a, a, n, th, tw, c_in)
            del grad_transformed
            grad_input = _overlap_add(grad_tiles, m, ctx.channels_last)
        return grad_input, grad_weight, grad_bias, None


def winograd_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 0, output_tile: int = 4) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=padding)`` for a 3x3 ``weight``, by Winograd's
    F(m x m, 3 x 3) with m = ``output_tile`` (2 or 4); any input size (the output is computed over
    whole tiles and cropped). Channels-last inputs give channels-last outputs."""
    if weight.shape[2:] != (3, 3):
        raise ValueError(f"winograd_conv3x3 needs a 3x3 kernel, got {tuple(weight.shape[2:])}")
    if output_tile not in OUTPUT_TILES:
        raise ValueError(f"output_tile must be one of {OUTPUT_TILES}, got {output_tile}")
    m = output_tile
    height, width = x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2
    extra_h, extra_w = -height % m, -width % m
    if padding or extra_h or extra_w:  # the zero padding, and whole tiles past the bottom/right edges
        x = F.pad(x, (padding, padding + extra_w, padding, padding + extra_h))
    out = _WinogradConv3x3.apply(x, weight, bias, m)
    if extra_h or extra_w:
        out = out[:, :, :height, :width]
    return out
