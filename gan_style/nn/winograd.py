"""Winograd convolution F(m x m, r x r) for the stride-1 3x3, 4x4 and 5x5 convolutions of fp32 training steps.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): an m x m output
tile of an r x r convolution is ``A^T [(G g G^T) * (B^T d B)] A`` for the (m+r-1) x (m+r-1)
input tile ``d`` and the kernel ``g``. Over all tiles and channels the elementwise product
becomes (m+r-1)^2 independent matrix products (tiles x C_in) @ (C_in x C_out), and the backward
(input and weight gradients) is the same products transposed. F(4x4, 3x3) and F(3x3, 4x4) have
6x6 tiles, so 36 multiplications per output tile: 16 outputs instead of 144, and 9 outputs instead
of 144: 4x fewer FLOPs than the direct convolution either way. F(4x4, 5x5), for MUNIT's decoder,
has 8x8 tiles: 64 multiplications for 16 outputs instead of 400, 6.25x fewer.

Why: in fp32 the direct convolutions of a CycleGAN step already run at the machine's matmul
peak (docs/speed.md), so fewer FLOPs is the only way left to a faster fp32 step; its 256-channel
residual blocks hold ~87 % of them. Forward and backward of a 256-channel 32x32 layer take
6.8 ms instead of 12.5 (AVX-512 Xeon, 2 threads). The 4x4 form is for the PatchGAN
discriminators' stride-1 layers, all of CUT's antialiased discriminator (its stride-2 layers are
stride-1 convolutions followed by a blur): ~15 % of a FastCUT step.

Numerics: with the interpolation points chosen below, F(4x4, 3x3)'s error is ~3e-6 of the
output's largest value, about the direct convolution's ~2e-6 (``tests/test_winograd.py`` bounds
both the forward and the gradients); TF32, which the CycleGAN/CUT references use for their
convolutions on Ampere GPUs by default (next to cuDNN's own Winograd kernels, picked by
``cudnn.benchmark``), is ~1e-3. F(4x4, 5x5), on eight points, is ~1e-5, 3-5x the direct
convolution's. F(2x2, 3x3) (``output_tile=2``) does 2.25x fewer multiplications than the direct
convolution, and was slower here. The trainer uses Winograd where measured
faster (``train.winograd``).

Two implementations of the same products. Where a C compiler is found (``gan_style.nn.native``),
fp32 channels-last layers run ``_NativeWinogradConv``: each transform fused with its
gather or scatter in ``winograd_kernels.c`` (one pass over memory; the zero padding and the partial
edge tiles read as zeros, the output written cropped), the products by ``torch.bmm``. The
transforms had been a third of a FastCUT fp32 step, memory-bound; fused, a 256-channel 32x32 layer
takes 0.45 of the direct convolution's time instead of 0.61, and the 64-channel layers on 128x128
maps pay too, as does F(4x4, 5x5) (docs/speed.md, session h). Its transient buffers are reused
from layer to layer (``_ScratchBuffers``): fresh, the kernel's zeroing of their pages took more
than the transforms on the Swapping Autoencoder's large maps. Everywhere else ``_WinogradConv``: the tiles gathered and
the transforms applied as matrix products over flattened tiles (Kronecker products of the 1-D
transforms), so every step is one large PyTorch op. Both recompute the weight transform in the
backward instead of keeping it (it is 4x the weight: ~1 GB over a CycleGAN step's graph). A
gradient penalty through the layer (``create_graph``) gets the direct convolution's backward,
which can be differentiated again.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from fractions import Fraction
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_style.nn.layers import conv_gradients_needed, is_channels_last, pytorch_conv_backward
from gan_style.nn.native import compile_library
from gan_style.nn.tiles import release_tile_buffers


def _toom_cook(m: int, r: int, points: tuple[Fraction, ...]) -> tuple[list[list[Fraction]], ...]:
    """The 1-D transforms (B^T, G, A^T) of F(m, r) from m + r - 2 finite interpolation points and
    infinity (Lavin & Gray, section 4; Toom-Cook), exactly: A^T evaluates the output polynomial,
    column (1, p, ..., p^(m-1)) per point; G the kernel polynomial, row (1, p, ..., p^(r-1)) over
    the product of (p - q) for the other points q; B^T holds the Lagrange numerators, the
    coefficients of the product of (x - q) for the other points q, and for infinity of all of
    them. Infinity contributes the highest coefficient of each. Column 1 of A^T is all ones where
    the point 1 comes second, which the bias relies on."""
    a = m + r - 1
    assert len(points) == a - 1

    def coefficients(roots: list[Fraction]) -> list[Fraction]:  # of prod (x - root), lowest first, padded to a
        poly = [Fraction(1)]
        for root in roots:
            poly = [(poly[i - 1] if i else 0) - root * (poly[i] if i < len(poly) else 0) for i in range(len(poly) + 1)]
        return poly + [Fraction(0)] * (a - len(poly))

    others = [[q for q in points if q != p] for p in points]
    input_t = [coefficients(rest) for rest in others] + [coefficients(list(points))]
    kernel_t = [[p**j / math.prod(p - q for q in rest) for j in range(r)] for p, rest in zip(points, others)]
    kernel_t.append([Fraction(0)] * (r - 1) + [Fraction(1)])
    output_t = [[p**k for p in points] + [Fraction(int(k == m - 1))] for k in range(m)]
    return input_t, kernel_t, output_t


# The points: 0, 1, -1 for F(2, 3); 0, 1, -1, 1/2, -2 for the six-point forms rather than Lavin &
# Gray's 0, +-1, +-2: F(4, 3)'s error falls from ~7e-6 to ~2.6e-6 of the output's largest value,
# about the direct convolution's (Barabasz et al., "Error Analysis and Improving the Accuracy of
# Winograd Convolution for Deep Neural Networks", 2020, choose points the same way). Forms with
# the same points share B^T. The eight-point form adds -1/2 and 2: 0, +-1, +-1/2, +-2 (with +-3/2
# instead of +-2 the error was the same or larger). tests/test_winograd.py checks each form exactly.
_POINTS = {4: (0, 1, -1), 6: (0, 1, -1, Fraction(1, 2), -2), 8: (0, 1, -1, Fraction(1, 2), Fraction(-1, 2), 2, -2)}
#: the output tiles offered per kernel side; the first is the default. F(4x4, 5x5) (MUNIT's
#: decoder) has 8x8 tiles, 6.25x fewer multiplications than the direct convolution, and ~1e-5 error
OUTPUT_TILES = {3: (4, 2), 4: (3,), 5: (4,)}
#: the forms (m, r) winograd_kernels.c implements, named there by r
_FUSED_FORMS = ((4, 3), (3, 4), (4, 5))
_TRANSFORMS = {(m, r): _toom_cook(m, r, tuple(Fraction(p) for p in _POINTS[m + r - 1])) for r, tiles in OUTPUT_TILES.items() for m in tiles}


def _transforms_1d(m: int, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """B^T, G, A^T of F(m, r) as float64 tensors."""
    return tuple(torch.tensor([[float(v) for v in row] for row in t], dtype=torch.float64) for t in _TRANSFORMS[m, r])


@functools.cache
def _transforms_2d(m: int, r: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """B^T (x) B^T, G (x) G, A^T (x) A^T of F(m, r): the 2-D transforms acting on row-major flattened tiles."""
    return tuple(torch.kron(t, t).to(device, dtype) for t in _transforms_1d(m, r))


def _kernel_transform(weight: Tensor, kernel_t: Tensor) -> Tensor:
    """U = G g G^T per (C_out, C_in) pair, as an (a², C_out, C_in) view of a (C_out, a², C_in)
    tensor: one (a², r²) @ (r², C_in) product per output channel reads a channels-last weight,
    (K, r, r, C) in memory, in place, and writes U in the order the products below read it without
    a copy (half the time of one (a², 9) @ (9, K C) product over a permuted weight, whose output
    MKL first zeroes: 0.37 against 0.67 ms for 256 channels)."""
    c_out, c_in, r = weight.shape[:3]
    return torch.matmul(kernel_t, weight.permute(0, 2, 3, 1).reshape(c_out, r * r, c_in)).transpose(0, 1)


def _kernel_gradient(grad_kernel: Tensor, kernel_t: Tensor, out: Tensor) -> Tensor:
    """The adjoint of :func:`_kernel_transform`: G^T (dL/dU) G from (a², C_out, C_in) into ``out``,
    a (C_out, C_in, r, r) weight gradient, again one product per output channel; a channels-last
    ``out`` is written in place, in its own memory order."""
    c_out, c_in, r = out.shape[:3]
    batched_t = kernel_t.t().expand(c_out, r * r, kernel_t.shape[0])
    if is_channels_last(out):
        torch.bmm(batched_t, grad_kernel.transpose(0, 1), out=out.permute(0, 2, 3, 1).view(c_out, r * r, c_in))
    else:
        out.copy_(torch.bmm(batched_t, grad_kernel.transpose(0, 1)).view(c_out, r, r, c_in).permute(0, 3, 1, 2))
    return out


def _input_transform(padded: Tensor, m: int, input_t: Tensor) -> Tensor:
    """V = B^T d B for every a-tile d of ``padded`` at stride m, as an (a², N th tw, C_in) view of
    an (N th tw, a², C_in) tensor: the tiles gathered (N, th, tw, a, a, C_in) in one copy (runs of
    C_in values from a channels-last input), then one (a², a²) @ (a², C_in) product per tile, as
    for the weights (:func:`_kernel_transform`): 0.7-0.85 of the time of one (a², a²) @ (a², N th
    tw C_in) product, and the batched products read the result as fast."""
    a = math.isqrt(input_t.shape[0])
    c_in = padded.shape[1]
    tiles = padded.unfold(2, a, m).unfold(3, a, m).permute(0, 2, 3, 4, 5, 1).reshape(-1, a * a, c_in)
    return torch.matmul(input_t, tiles).transpose(0, 1)


def _overlap_add(tiles: Tensor, m: int, channels_last: bool) -> Tensor:
    """The adjoint of gathering overlapping a-tiles at stride m (a - m <= m): ``tiles`` (a, a, N, th, tw,
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
    # a tile's first m rows (cols) are its own; its last a - m overlap the next tile's first a - m
    own, overlap = (slice(None, m), (slice(None, th), every)), (slice(m, None), (slice(1, None), slice(None, halo)))
    own_cols, overlap_cols = (slice(None, m), (slice(None, tw), every)), (slice(m, None), (slice(1, None), slice(None, halo)))
    for rows_in, (tile_rows, rows_out) in (own, overlap):
        for cols_in, (tile_cols, cols_out) in (own_cols, overlap_cols):
            out[at(tile_rows, rows_out, tile_cols, cols_out)] += tiles[at(every, rows_in, every, cols_in)]
    if channels_last:
        out = out.view(n, (th + 1) * m, (tw + 1) * m, c)[:, : th * m + halo, : tw * m + halo]
        return out.permute(0, 3, 1, 2)
    return out.view(n, c, (th + 1) * m, (tw + 1) * m)[:, :, : th * m + halo, : tw * m + halo]


class _WinogradConv(torch.autograd.Function):
    """r x r convolution, stride 1, of an already padded input whose output sides are multiples of m."""

    @staticmethod
    def forward(ctx, padded: Tensor, weight: Tensor, bias: Tensor | None, m: int) -> Tensor:
        r = weight.shape[2]
        input_t, kernel_t, output_t = _transforms_2d(m, r, padded.device, padded.dtype)
        a = m + r - 1
        n, c_in, height, width = padded.shape
        c_out = weight.shape[0]
        th, tw = (height - r + 1) // m, (width - r + 1) // m
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
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        padded, weight = ctx.saved_tensors
        needs = conv_gradients_needed(ctx)  # R1's first pass: the input's alone
        if torch.is_grad_enabled():  # create_graph (a gradient penalty): a backward autograd can differentiate
            return (*pytorch_conv_backward(grad_out, padded, weight, needs), None)
        m, (th, tw) = ctx.m, ctx.tiles
        r = weight.shape[2]
        a = m + r - 1
        input_t, kernel_t, output_t = _transforms_2d(m, r, grad_out.device, grad_out.dtype)
        n, c_out = grad_out.shape[:2]
        c_in = weight.shape[1]
        if ctx.channels_last:
            grad_tiles = grad_out.permute(0, 2, 3, 1).reshape(n, th, m, tw, m, c_out).permute(2, 4, 0, 1, 3, 5)
        else:
            grad_tiles = grad_out.reshape(n, c_out, th, m, tw, m).permute(3, 5, 0, 2, 4, 1)
        grad_products = (output_t.t() @ grad_tiles.reshape(m * m, -1)).view(a * a, n * th * tw, c_out)
        grad_input = grad_weight = grad_bias = None
        # the weight's gradient (kept until the optimiser step) before the temporaries, as in forward
        if needs[1]:
            layout = torch.channels_last if is_channels_last(weight) else torch.contiguous_format
            grad_weight = torch.empty_like(weight, memory_format=layout)
        if needs[2]:
            grad_bias = grad_products[a + 1].sum(0)
        if needs[1]:
            grad_kernel = torch.bmm(grad_products.transpose(1, 2), _input_transform(padded, m, input_t))  # (a², C_out, C_in)
            _kernel_gradient(grad_kernel, kernel_t, out=grad_weight)
            del grad_kernel
        if needs[0]:
            grad_transformed = torch.bmm(grad_products, _kernel_transform(weight, kernel_t))
            del grad_products
            grad_tiles = (input_t.t() @ grad_transformed.view(a * a, -1)).view(a, a, n, th, tw, c_in)
            del grad_transformed
            grad_input = _overlap_add(grad_tiles, m, ctx.channels_last)
        return grad_input, grad_weight, grad_bias, None


def _c_matrix(name: str, rows: list[list[Fraction]], columns: int) -> str:
    """A float matrix as a C constant, each row padded with zeros to ``columns``."""
    padded = [[float(v) for v in row] + [0.0] * (columns - len(row)) for row in rows]
    body = ", ".join("{" + ", ".join(f"{v!r}f" for v in row) + "}" for row in padded)
    return f"static const float {name}[{len(rows)}][{columns}] = {{{body}}};\n"


@functools.cache
def _native() -> ctypes.CDLL | None:
    """The fused transforms of ``winograd_kernels.c`` for F(4x4, 3x3), F(3x3, 4x4) and F(4x4, 5x5), compiled for
    this CPU (gan_style.nn.native), or None: the PyTorch path below runs instead."""
    coefficients = "".join(_c_matrix(f"BT{r}", _TRANSFORMS[m, r][0], 8) + _c_matrix(f"G{r}", _TRANSFORMS[m, r][1], 5)
                           + _c_matrix(f"AT{r}", _TRANSFORMS[m, r][2], 8) for m, r in _FUSED_FORMS)
    library = compile_library("winograd_kernels", coefficients + Path(__file__).with_name("winograd_kernels.c").read_text())
    if library is None:
        return None
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    signatures = {}
    for _, r in _FUSED_FORMS:
        signatures |= {f"gs_input_transform_{r}": [pointer] * 2 + [integer] * 8, f"gs_input_gradient_{r}": [pointer] * 2 + [integer] * 9,
                       f"gs_output_transform_{r}": [pointer] * 3 + [integer] * 6, f"gs_output_gradient_{r}": [pointer] * 2 + [integer] * 6,
                       f"gs_kernel_transform_{r}": [pointer] * 2 + [integer] * 2, f"gs_kernel_gradient_{r}": [pointer] * 2 + [integer] * 2}
    for name, arguments in signatures.items():
        getattr(library, name).argtypes, getattr(library, name).restype = arguments, None
    return library


def _native_applies(x: Tensor, weight: Tensor, m: int) -> bool:
    """The fused kernels take fp32 channels-last images on the CPU, their forms, and widths in
    multiples of 16 (every Winograd layer of the networks here)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and is_channels_last(x)
            and (m, weight.shape[2]) in _FUSED_FORMS and x.shape[1] % 16 == 0 and weight.shape[0] % 16 == 0
            and fused_winograd_available())


@torch.compiler.assume_constant_result  # torch.compile: evaluated once, not traced (it may build the library)
def fused_winograd_available() -> bool:
    """Whether the fused C transforms are built here (a C compiler, ``GAN_STYLE_NATIVE`` not 0)."""
    return _native() is not None


def fused_transforms_apply(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`winograd_conv2d` with its default tile runs ``weight`` on ``x`` by the fused C transforms."""
    r = weight.shape[2]
    return r in OUTPUT_TILES and _native_applies(x, weight, OUTPUT_TILES[r][0])


class _ScratchBuffers(threading.local):
    """The fused path's transient buffers (the tiles V, the products and their gradients, the weight
    transform), kept between layers and steps instead of freed.

    Freshly allocated, a buffer over 32 MB comes from new ``mmap`` pages that the kernel zeroes on
    first touch, and the Winograd buffers are 2.25-4x the image: one 6x256x128x128 layer (the Swapping
    Autoencoder's discriminator at 128 px) took 1265 ms forward and backward on fresh pages against
    789 ms on reused ones, the direct convolution 1917-2006 ms (docs/speed.md, session i). A request
    takes the smallest free buffer large enough (a view of its start), else a new one; returned, it
    is kept, and of more than ``KEPT`` free buffers the smallest go, so what stays is about the
    largest layer's working set (three buffers at once, in its backward). One pool per thread."""

    KEPT = 4

    def __init__(self) -> None:
        self.free: list[Tensor] = []

    def take(self, *shape: int) -> Tensor:
        numel = math.prod(shape)
        fitting = [i for i, buffer in enumerate(self.free) if buffer.numel() >= numel]
        if fitting:
            buffer = self.free.pop(min(fitting, key=lambda i: self.free[i].numel()))
        else:
            buffer = torch.empty(numel)
        return buffer[:numel].view(shape)

    def give(self, *views: Tensor) -> None:
        """Keep the buffers of ``views`` (from :meth:`take`) for later requests; the views must not be used again."""
        self.free.extend(view._base for view in views)  # the whole buffer each was cut from
        self.free.sort(key=Tensor.numel, reverse=True)
        del self.free[self.KEPT:]

    def clear(self) -> None:
        """Let the kept buffers go (those lent out stay with their borrowers)."""
        self.free.clear()


#: this thread's pool, shared with the im2col weight gradient of gan_style.nn.strided
scratch = _ScratchBuffers()


def release_scratch_buffers() -> None:
    """Return the memory the fused Winograd path and the tile kernels keep between layers (this thread's) to the allocator."""
    scratch.clear()
    release_tile_buffers()


class _NativeWinogradConv(torch.autograd.Function):
    """:class:`_WinogradConv` with each transform fused with its gather or scatter (``winograd_kernels.c``):
    the zero padding and the partial tiles at the edges are read as zeros rather than padded, and the
    output is written cropped, so no padded copy and no cropping copy."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, m: int) -> Tensor:
        library = _native()
        n, c_in, height, width = x.shape
        c_out, r = weight.shape[0], weight.shape[2]
        out_h, out_w = height + 2 * padding - r + 1, width + 2 * padding - r + 1
        th, tw = -(-out_h // m), -(-out_w // m)
        tiles, a = n * th * tw, m + r - 1
        result = torch.empty((n, c_out, out_h, out_w), memory_format=torch.channels_last)
        transformed = scratch.take(a * a, tiles, c_in)  # V = B^T d B
        getattr(library, f"gs_input_transform_{r}")(x.data_ptr(), transformed.data_ptr(), n, height, width, c_in, th, tw, padding, padding)
        kernel_transformed = _native_kernel_transform(library, weight, a)
        products = torch.bmm(transformed, kernel_transformed.transpose(1, 2), out=scratch.take(a * a, tiles, c_out))  # M = U * V
        scratch.give(transformed, kernel_transformed)
        if bias is not None:
            bias = bias.contiguous()
        getattr(library, f"gs_output_transform_{r}")(products.data_ptr(), bias.data_ptr() if bias is not None else None,
                                                     result.data_ptr(), n, out_h, out_w, c_out, th, tw)
        scratch.give(products)
        ctx.save_for_backward(x, weight)  # V is recomputed: it is 2.25x the input
        ctx.m, ctx.padding, ctx.has_bias = m, padding, bias is not None
        return result

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        m, padding = ctx.m, ctx.padding
        needs = conv_gradients_needed(ctx)  # R1's first pass: the input's alone
        if torch.is_grad_enabled():  # create_graph: a backward autograd can differentiate
            return (*pytorch_conv_backward(grad_out, x, weight, needs, padding=padding), None, None)
        library = _native()
        n, c_in, height, width = x.shape
        c_out, r = weight.shape[0], weight.shape[2]
        out_h, out_w = grad_out.shape[2:]
        th, tw = -(-out_h // m), -(-out_w // m)
        tiles, a = n * th * tw, m + r - 1
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_products = scratch.take(a * a, tiles, c_out)  # A gY A^T
        getattr(library, f"gs_output_gradient_{r}")(grad_out.data_ptr(), grad_products.data_ptr(), n, out_h, out_w, c_out, th, tw)
        grad_input = grad_weight = grad_bias = None
        if needs[1]:  # the weight's gradient (kept until the optimiser step) first, as in _WinogradConv
            grad_weight = torch.empty_like(weight, memory_format=torch.channels_last)
        if needs[2]:
            grad_bias = grad_products[a + 1].sum(0)  # the point 1 in both directions: A^T's all-ones column
        if needs[1]:
            transformed = scratch.take(a * a, tiles, c_in)
            getattr(library, f"gs_input_transform_{r}")(x.data_ptr(), transformed.data_ptr(), n, height, width, c_in, th, tw, padding, padding)
            grad_kernel = torch.bmm(grad_products.transpose(1, 2), transformed, out=scratch.take(a * a, c_out, c_in))  # (a², C_out, C_in)
            scratch.give(transformed)
            getattr(library, f"gs_kernel_gradient_{r}")(grad_kernel.data_ptr(), grad_weight.data_ptr(), c_out, c_in)
            scratch.give(grad_kernel)
            if not is_channels_last(weight):
                grad_weight = grad_weight.contiguous()
        if needs[0]:
            kernel_transformed = _native_kernel_transform(library, weight, a)
            grad_transformed = torch.bmm(grad_products, kernel_transformed, out=scratch.take(a * a, tiles, c_in))  # (a², tiles, C_in)
            scratch.give(kernel_transformed)
            grad_input = torch.empty_like(x, memory_format=torch.channels_last)
            block = next(b for b in (64, 32, 16) if c_in % b == 0 and (n * c_in // b >= 2 * torch.get_num_threads() or b == 16))
            getattr(library, f"gs_input_gradient_{r}")(grad_transformed.data_ptr(), grad_input.data_ptr(), n, height, width, c_in, th, tw,
                                                       padding, padding, block)
            scratch.give(grad_transformed)
        scratch.give(grad_products)
        return grad_input, grad_weight, grad_bias, None, None


@torch.compiler.disable  # torch.compile must not trace it: the C kernels write through data_ptr(), unseen by inductor
def _fused_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, m: int) -> Tensor:
    return _NativeWinogradConv.apply(x, weight, bias, padding, m)


def _native_kernel_transform(library: ctypes.CDLL, weight: Tensor, a: int) -> Tensor:
    """U = G g G^T as (a², C_out, C_in), from the weight as (C_out, r, r, C_in) in memory (no copy of a
    channels-last weight), in a scratch buffer (``scratch.give`` it back)."""
    c_out, c_in, r = weight.shape[:3]
    weight = weight.permute(0, 2, 3, 1).contiguous()
    transformed = scratch.take(a * a, c_out, c_in)
    getattr(library, f"gs_kernel_transform_{r}")(weight.data_ptr(), transformed.data_ptr(), c_out, c_in)
    return transformed


def winograd_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, padding: int = 0, output_tile: int | None = None,
                    native: bool | None = None) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=1, padding=padding)`` for a 3x3 or 4x4 ``weight`` by
    Winograd's F(m x m, r x r), m = ``output_tile`` (3x3: 4, the default, or 2; 4x4: 3); any input
    size (the output is computed over whole tiles and cropped). Channels-last inputs give
    channels-last outputs. ``native``: the fused C transforms (``_NativeWinogradConv``) where they
    apply (None, the default) or never (False); the PyTorch path otherwise."""
    r = weight.shape[2]
    if weight.shape[3] != r or r not in OUTPUT_TILES:
        *others, last = OUTPUT_TILES
        raise ValueError(f"winograd_conv2d needs a square kernel of side {', '.join(map(str, others))} or {last}, got {tuple(weight.shape[2:])}")
    m = output_tile or OUTPUT_TILES[r][0]
    if m not in OUTPUT_TILES[r]:
        raise ValueError(f"output_tile for a {r}x{r} kernel must be one of {OUTPUT_TILES[r]}, got {output_tile}")
    if native is not False and _native_applies(x, weight, m):
        return _fused_conv(x, weight, bias, padding, m)
    height, width = x.shape[2] + 2 * padding - r + 1, x.shape[3] + 2 * padding - r + 1
    extra_h, extra_w = -height % m, -width % m
    if padding or extra_h or extra_w:  # the zero padding, and whole tiles past the bottom/right edges
        x = F.pad(x, (padding, padding + extra_w, padding, padding + extra_h))
    out = _WinogradConv.apply(x, weight, bias, m)
    if extra_h or extra_w:
        out = out[:, :, :height, :width]
    return out
