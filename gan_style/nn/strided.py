"""Strided convolutions whose weight gradient runs as one matrix product over gathered columns
(im2col) where that was measured faster, for fp32 steps on the CPU.

dL/dW of a convolution is sum over output positions of dL/dy (C_out) times the input patch it read
(C_in * k * k): with the patches gathered as the rows of a matrix (im2col), one GEMM. oneDNN's own
weight gradient of a stride-2 convolution over a large map ran at 60-90 GFLOP/s on a 2-core Zen 4
EPYC while its forward ran at ~215. The Swapping Autoencoder discriminator's 3x3 256->512 layer
from 129x129 at batch 6 took 1226 ms for its whole backward, 633 ms with the weight gradient by
im2col (docs/speed.md, session k). On other shapes oneDNN wins (the patch discriminator's 32->64
from 129x129 at batch 32: 80 against 91 ms), so each shape is timed both ways the first time its
gradient is needed (``weight_gradient_choices`` lists the verdicts) and runs the faster from then
on. The columns are gathered block by block into reused buffers (``gan_style.nn.winograd.scratch``,
at most ``COLUMN_BLOCK_BYTES`` each), not one N*H*W x C*k*k matrix of fresh pages.

The input gradient and the forward stay PyTorch's. A gradient penalty through the layer
(``create_graph``) gets PyTorch's backward, in one call, which autograd differentiates as it would
PyTorch's own convolution.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_style.nn.layers import autocast_on, conv_gradients_needed, is_channels_last, pytorch_conv_backward
from gan_style.nn.measured import MeasuredChoices
from gan_style.nn.winograd import scratch

#: the largest block of gathered columns: 32 MB (the biggest layer here, 256 channels at 129x129,
#: has 38 MB of columns per image and is gathered half an image at a time)
COLUMN_BLOCK_BYTES = 32 << 20


def _describe(key: tuple) -> str:
    (n, c_in, h, w), (c_out, _, k, _), stride, padding, threads = key
    return f"{n}x{c_in}x{h}x{w} -> {c_out}, {k}x{k}, stride {stride}, padding {padding}, {threads} threads"


#: per shape: the whole backward by PyTorch in one call ("direct"), or PyTorch's input and bias
#: gradients with the weight's by im2col, whichever was faster at the shape's first use
verdicts = MeasuredChoices("im2col", _describe)


def weight_gradient_choices() -> dict[str, dict[str, float | str]]:
    """Every strided shape measured in this process: ``"N x C_in x H x W -> C_out, kxk, stride s,
    padding p"`` to its timings (ms) and the kernel chosen."""
    return verdicts.listing()


def forget_weight_gradient_choices() -> None:
    """Measure every shape again at its next use (tests; a changed thread count is measured anyway)."""
    verdicts.forget()


def strided_conv_applies(x: Tensor, weight: Tensor, stride: int) -> bool:
    """Whether :func:`strided_conv2d` runs its own backward: a stride above 1, fp32 channels-last
    input on the CPU outside autocast, a weight that needs its gradient."""
    return (stride > 1 and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and is_channels_last(x)
            and weight.requires_grad and torch.is_grad_enabled() and not autocast_on(x))


def strided_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
    """``F.conv2d(x, weight, bias, stride=stride, padding=padding)`` whose weight gradient runs by
    im2col where measured faster (:func:`strided_conv_applies`; PyTorch's convolution otherwise)."""
    if strided_conv_applies(x, weight, stride):
        return _StridedConv.apply(x, weight, bias, stride, padding)
    return F.conv2d(x, weight, bias, stride=stride, padding=padding)


class _StridedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        needs = conv_gradients_needed(ctx)
        if torch.is_grad_enabled():  # create_graph (R1): PyTorch's backward, which autograd differentiates
            return (*pytorch_conv_backward(grad_out, x, weight, needs, stride, padding), None, None)
        return (*conv_backward(grad_out, x, weight, stride, padding, needs), None, None)


def conv_backward(grad_out: Tensor, x: Tensor, weight: Tensor, stride: int, padding: int,
                  needs: tuple[bool, bool, bool]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The (input, weight, bias) gradients of ``F.conv2d(x, weight, bias, stride=stride,
    padding=padding)`` given dL/dy, as ``needs`` asks: PyTorch's backward in one call, or its input
    and bias gradients with the weight's by im2col, whichever was faster for this shape (both are
    timed at its first use with the weight gradient needed, twice each, alternating; then the faster
    computes the result)."""
    if not needs[1]:
        return pytorch_conv_backward(grad_out, x, weight, needs, stride, padding)
    key = (tuple(x.shape), tuple(weight.shape), stride, padding, torch.get_num_threads())
    return verdicts.run(key, *(functools.partial(_backward, kernel, grad_out, x, weight, needs, stride, padding)
                                for kernel in ("direct", "im2col")))


def _backward(kernel: str, grad_out: Tensor, x: Tensor, weight: Tensor, needs: tuple[bool, bool, bool], stride: int,
              padding: int) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The gradients by ``kernel``: "direct", PyTorch's whole backward; "im2col", PyTorch's input
    gradient with the weight's by :func:`im2col_weight_gradient` and the bias's as dL/dy summed.
    Not the bias's by PyTorch: asked for the bias's gradient without the weight's, its oneDNN
    backward still computes the weight's and drops it (a 128->256 stride-2 layer from 128x128:
    21.4 ms for the input and bias gradients, 7.9 for the input's alone, 0.12 for the sum)."""
    if kernel == "direct":
        return pytorch_conv_backward(grad_out, x, weight, needs, stride, padding)
    grad_input = pytorch_conv_backward(grad_out, x, weight, (True, False, False), stride, padding)[0] if needs[0] else None
    grad_bias = grad_out.sum((0, 2, 3)) if needs[2] else None
    return grad_input, im2col_weight_gradient(x, grad_out, weight, stride, padding), grad_bias


def im2col_weight_gradient(x: Tensor, grad_out: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:
    """dL/dW = sum over output positions p of dL/dy_p (C_out) x patch_p (k * k * C_in): the patches
    of a channels-last input are a strided view of it (output row, column, kernel row, column,
    channel), gathered into a matrix block by block, each block one matrix product accumulated
    into the (C_out, k * k * C_in) result. Returns the weight's shape in its memory format."""
    if padding:
        x = F.pad(x, (padding,) * 4)
    x = x.contiguous(memory_format=torch.channels_last)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    n, c_in, height, width = x.shape
    c_out, _, k, _ = weight.shape
    out_h, out_w = grad_out.shape[2:]
    image = x.permute(0, 2, 3, 1)  # (N, H, W, C_in), contiguous
    grads = grad_out.permute(0, 2, 3, 1)  # (N, OH, OW, C_out), contiguous
    patch = k * k * c_in
    result = torch.zeros(c_out, patch)
    for first, samples, row, rows in _column_blocks(n, out_h, out_w * patch * x.element_size()):
        # the patches of output rows [row, row + rows) of images [first, first + samples)
        patches = image.as_strided((samples, rows, out_w, k, k, c_in),
                                   (height * width * c_in, stride * width * c_in, stride * c_in, width * c_in, c_in, 1),
                                   image.storage_offset() + (first * height + row * stride) * width * c_in)
        columns = scratch.take(samples * rows * out_w, patch)
        columns.view(patches.shape).copy_(patches)
        block_grads = grads[first:first + samples, row:row + rows].reshape(-1, c_out)
        result.addmm_(block_grads.t(), columns)
        scratch.give(columns)
    grad_weight = result.view(c_out, k, k, c_in).permute(0, 3, 1, 2)  # channels-last (C_out, C_in, k, k)
    return grad_weight if is_channels_last(weight) else grad_weight.contiguous()


def _column_blocks(n: int, out_h: int, row_bytes: int) -> Iterator[tuple[int, int, int, int]]:
    """(first image, images, first output row, rows) blocks of at most ``COLUMN_BLOCK_BYTES`` of
    columns (at least one output row): whole images together where they fit, else rows of one."""
    rows_per_block = max(1, COLUMN_BLOCK_BYTES // row_bytes)
    if rows_per_block >= out_h:
        images = rows_per_block // out_h
        for first in range(0, n, images):
            yield first, min(images, n - first), 0, out_h
    else:
        for first in range(n):
            for row in range(0, out_h, rows_per_block):
                yield first, 1, row, min(rows_per_block, out_h - row)
