"""Tiled translation that equals the whole-image pass.

A network is lowered to a list of operations whose geometry is known (padding, convolution,
transposed convolution, pooling, up-sampling, pointwise maps, residual sums) and of
*statistics* layers (instance / group / layer norm, AdaIN): layers whose output at a pixel depends
on statistics of the whole image. The executor never runs a statistics layer on a tile alone:

* every region of an intermediate result is computed exactly, from the region of its input that
  the operations need (each convolution's halo; the padding of the whole pass only where the
  region touches the true image border, real neighbouring pixels elsewhere);
* a statistics layer's per-channel mean and variance are gathered over its whole input, cell by
  cell over a partition of that input (each pixel counted once, cells combined in float64), and
  it then acts as a fixed per-channel affine map, i.e. a pointwise operation;
* the input of a statistics layer is kept as a whole-image buffer when it is small enough (the
  4x-downsampled bottleneck of a ResNet generator), so that later layers start from it instead of
  recomputing everything from the image; larger ones (full-resolution, 64 channels) are streamed
  again from the last buffer. ``memory_budget`` caps the buffers held at once.

Memory is bounded by the tile size plus the buffers (at most ``memory_budget``). The result equals
the whole-image pass up to float32 rounding (the sums are taken in another order).

Covered: any network built of the layers :func:`lower` knows (the CycleGAN / CUT / FastCUT ResNet
generators, antialiased sampling included, U-Nets made of them, StyleGAN2's convolution, blur and
residual blocks), MUNIT (content encoder and AdaIN decoder, see :func:`munit_program`), AdaIN style
transfer (:func:`adain_program`) and the Swapping Autoencoder (:func:`swapae_program`: its texture
codes are image-global, gathered first; its per-pixel noise is drawn for the whole image and cut to
each region). Others raise :class:`Unsupported`, and ``translate`` falls back to per-tile
normalisation with a warning.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

Span = tuple[int, int]  # half-open [start, stop) along one axis
Rect = tuple[Span, Span]  # (rows, columns)
Size = tuple[int, int]

#: whole-image buffers held at once (bytes): two 4x-downsampled 256-channel maps of a 3840x2160
#: image plus the image itself
DEFAULT_MEMORY_BUDGET = 1_300_000_000


class Unsupported(Exception):
    """The network holds a layer the exact tiler does not know (the message names it)."""


# -- operations -------------------------------------------------------------------------------------
class Op:
    """One operation on a (1, C, H, W) map. ``need`` gives the input region an output region
    depends on; ``apply`` maps an input patch to the largest output region it determines exactly."""

    def size(self, size: Size) -> Size:
        return size

    def channels(self, channels: int) -> int:
        return channels

    def need(self, rect: Rect, size: Size) -> Rect:
        return rect

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        raise NotImplementedError

    def pending_stats(self) -> bool:
        return False


class Pointwise(Op):
    def __init__(self, function: Callable[[Tensor], Tensor]):
        self.function = function

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        return self.function(x), rect


class Positional(Op):
    """x + weight * noise at each pixel: a pointwise map that depends on the position (the
    Swapping Autoencoder's per-pixel noise inputs, drawn once for the whole map and cut to each
    region)."""

    def __init__(self, noise: Tensor, weight: Tensor):
        self.noise, self.weight = noise, weight

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        if tuple(self.noise.shape[-2:]) != size:
            raise RuntimeError(f"a noise map of {tuple(self.noise.shape[-2:])} for a {size} map")
        return x + self.weight * self.noise[..., rect[0][0] : rect[0][1], rect[1][0] : rect[1][1]].to(x), rect


class Keep(Op):
    """The identity, marking a small result worth holding whole (the Swapping Autoencoder's
    structure code): the executor materialises what comes before it when the memory budget
    allows, so that the cells after it do not recompute the layers before it."""

    def pending_stats(self) -> bool:
        return True

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        return x, rect


class AxisOp(Op):
    """An operation that acts on rows and columns alike, by 1-D rules on each axis."""

    def size_1d(self, n: int, axis: int) -> int:
        raise NotImplementedError

    def need_1d(self, span: Span, n: int, axis: int) -> Span:
        raise NotImplementedError

    def exact_1d(self, span: Span, n: int, axis: int) -> tuple[Span, int, int]:
        """The output span an input span determines, and the (start, stop) of the input rows to
        feed the tensor function (relative to the patch)."""
        raise NotImplementedError

    def tensor(self, x: Tensor, touches: tuple[tuple[bool, bool], tuple[bool, bool]]) -> Tensor:
        raise NotImplementedError

    def size(self, size: Size) -> Size:
        return self.size_1d(size[0], 0), self.size_1d(size[1], 1)

    def need(self, rect: Rect, size: Size) -> Rect:
        return self.need_1d(rect[0], size[0], 0), self.need_1d(rect[1], size[1], 1)

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        (rows, r0, r1), (cols, c0, c1) = (self.exact_1d(rect[a], size[a], a) for a in (0, 1))
        touches = tuple((rect[a][0] == 0, rect[a][1] == size[a]) for a in (0, 1))
        return self.offset(self.tensor(x[..., r0:r1, c0:c1], touches), (rows, cols), rect, size), (rows, cols)

    def offset(self, y: Tensor, out: Rect, rect: Rect, size: Size) -> Tensor:
        """Crop the tensor function's output to ``out`` (default: it is that region already)."""
        return y


class Pad(AxisOp):
    """Reflection / replication / zero padding, applied only at the true image border."""

    def __init__(self, pads: tuple[int, int, int, int], mode: str):  # (left, right, top, bottom) as F.pad
        self.pads, self.mode = pads, mode
        self.axis_pads = ((pads[2], pads[3]), (pads[0], pads[1]))

    def size_1d(self, n: int, axis: int) -> int:
        return n + sum(self.axis_pads[axis])

    def need_1d(self, span: Span, n: int, axis: int) -> Span:
        lo, hi = self.axis_pads[axis]
        start, stop = max(0, span[0] - lo), min(n, span[1] - lo)
        # a patch at the border gets padded, which needs the rows the padding copies (reflect:
        # one more than the padding)
        if start == 0:
            stop = max(stop, min(n, lo + 1))
        if stop == n:
            start = min(start, max(0, n - hi - 1))
        return start, stop

    def exact_1d(self, span: Span, n: int, axis: int) -> tuple[Span, int, int]:
        lo, hi = self.axis_pads[axis]
        start = 0 if span[0] == 0 else span[0] + lo
        stop = n + lo + hi if span[1] == n else span[1] + lo
        return (start, stop), 0, span[1] - span[0]

    def tensor(self, x: Tensor, touches: tuple[tuple[bool, bool], tuple[bool, bool]]) -> Tensor:
        (top, bottom), (left, right) = touches
        (pt, pb), (pl, pr) = self.axis_pads
        pads = (pl * left, pr * right, pt * top, pb * bottom)
        if not any(pads):
            return x
        return F.pad(x, pads, mode=self.mode) if self.mode != "constant" else F.pad(x, pads)


class Window(AxisOp):
    """A valid (unpadded) sliding window: convolution or pooling with kernel k, stride s, dilation d."""

    def __init__(self, kernel: Size, stride: Size, dilation: Size, function: Callable[[Tensor], Tensor],
                 out_channels: int | None = None, ceil_mode: bool = False):
        self.kernel, self.stride, self.dilation = kernel, stride, dilation
        self.function, self.out_channels, self.ceil_mode = function, out_channels, ceil_mode

    def channels(self, channels: int) -> int:
        return self.out_channels or channels

    def _reach(self, axis: int) -> int:
        return (self.kernel[axis] - 1) * self.dilation[axis] + 1

    def size_1d(self, n: int, axis: int) -> int:
        s, reach = self.stride[axis], self._reach(axis)
        if self.ceil_mode:  # PyTorch's pooling: the last window must start inside the input
            out = -(-(n - reach) // s) + 1
            return out - 1 if (out - 1) * s >= n else out
        return (n - reach) // s + 1

    def need_1d(self, span: Span, n: int, axis: int) -> Span:
        s = self.stride[axis]
        return span[0] * s, min(n, (span[1] - 1) * s + self._reach(axis))

    def exact_1d(self, span: Span, n: int, axis: int) -> tuple[Span, int, int]:
        s, reach = self.stride[axis], self._reach(axis)
        first = -(-span[0] // s)
        last = self.size_1d(n, axis) if span[1] == n else (span[1] - reach) // s + 1
        return (first, last), first * s - span[0], min(span[1], (last - 1) * s + reach) - span[0]

    def tensor(self, x: Tensor, touches: tuple[tuple[bool, bool], tuple[bool, bool]]) -> Tensor:
        if self.ceil_mode:  # complete a partial last window at the true border with -inf
            extra = [max(0, -(-(x.shape[-2 + a] - self._reach(a)) // self.stride[a]) * self.stride[a] + self._reach(a) - x.shape[-2 + a])
                     if touches[a][1] else 0 for a in (0, 1)]
            if any(extra):
                x = F.pad(x, (0, extra[1], 0, extra[0]), value=-math.inf)
        return self.function(x)


class TransposedConv(AxisOp):
    """``nn.ConvTranspose2d`` (dilation 1): output o receives input i where o = i*s - p + t."""

    def __init__(self, conv: nn.ConvTranspose2d | None = None, *, weight: Tensor | None = None, bias: Tensor | None = None,
                 stride: Size = (1, 1), padding: Size = (0, 0), output_padding: Size = (0, 0), groups: int = 1):
        if conv is not None:
            if conv.dilation != (1, 1) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
                raise Unsupported(f"{conv}: only dilation 1 and zero padding")
            weight, bias, stride, padding = conv.weight, conv.bias, conv.stride, conv.padding
            output_padding, groups = conv.output_padding, conv.groups
        assert weight is not None
        self.weight, self.bias, self.stride, self.padding = weight, bias, stride, padding
        self.output_padding, self.groups, self.kernel = output_padding, groups, weight.shape[-2:]

    def channels(self, channels: int) -> int:
        return self.weight.shape[1] * self.groups

    def size_1d(self, n: int, axis: int) -> int:
        return (n - 1) * self.stride[axis] - 2 * self.padding[axis] + self.kernel[axis] + self.output_padding[axis]

    def need_1d(self, span: Span, n: int, axis: int) -> Span:
        s, p, k = self.stride[axis], self.padding[axis], self.kernel[axis]
        start = min(n - 1, max(0, -(-(span[0] + p - k + 1) // s)))
        # rows of the output padding alone receive no input: the last one puts the patch at the border
        return start, max(start + 1, min(n, (span[1] - 1 + p) // s + 1))

    def exact_1d(self, span: Span, n: int, axis: int) -> tuple[Span, int, int]:
        s, p, k = self.stride[axis], self.padding[axis], self.kernel[axis]
        # exact where no input outside the patch contributes: not i0 - 1, not i1
        start = 0 if span[0] == 0 else max(0, (span[0] - 1) * s - p + k)
        stop = self.size_1d(n, axis) if span[1] == n else min(self.size_1d(n, axis), span[1] * s - p)
        return (start, stop), 0, span[1] - span[0]

    def tensor(self, x: Tensor, touches: tuple[tuple[bool, bool], tuple[bool, bool]]) -> Tensor:
        return F.conv_transpose2d(x, self.weight, None, self.stride, 0, 0, self.groups)

    def offset(self, y: Tensor, out: Rect, rect: Rect, size: Size) -> Tensor:
        # local output index j is global j + i0 * s - p; rows past the local end (output padding)
        # receive no input, only the bias
        starts = [rect[a][0] * self.stride[a] - self.padding[a] for a in (0, 1)]
        (r0, r1), (c0, c1) = ((out[a][0] - starts[a], out[a][1] - starts[a]) for a in (0, 1))
        y = F.pad(y, (0, max(0, c1 - y.shape[-1]), 0, max(0, r1 - y.shape[-2])))[..., r0:r1, c0:c1]
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class Upsample(AxisOp):
    """x ``factor`` nearest, or x2 bilinear without corner alignment (clamped at the border)."""

    def __init__(self, factor: int, mode: str):
        if mode not in ("nearest", "bilinear") or (mode == "bilinear" and factor != 2):
            raise Unsupported(f"up-sampling {mode} x{factor}")
        self.factor, self.mode = factor, mode

    def size_1d(self, n: int, axis: int) -> int:
        return n * self.factor

    def need_1d(self, span: Span, n: int, axis: int) -> Span:
        if self.mode == "nearest":
            return span[0] // self.factor, (span[1] - 1) // self.factor + 1
        # output o samples input o/2 - 1/4 and its lower and upper neighbours
        return max(0, (2 * span[0] - 1) // 4), min(n, (2 * span[1] - 3) // 4 + 2)

    def exact_1d(self, span: Span, n: int, axis: int) -> tuple[Span, int, int]:
        f = self.factor
        if self.mode == "nearest":
            return (span[0] * f, span[1] * f), 0, span[1] - span[0]
        start = 0 if span[0] == 0 else 2 * span[0] + 1
        stop = 2 * n if span[1] == n else 2 * span[1] - 1
        return (start, stop), 0, span[1] - span[0]

    def tensor(self, x: Tensor, touches: tuple[tuple[bool, bool], tuple[bool, bool]]) -> Tensor:
        if self.mode == "nearest":
            return F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def offset(self, y: Tensor, out: Rect, rect: Rect, size: Size) -> Tensor:
        (r0, r1), (c0, c1) = ((out[a][0] - rect[a][0] * self.factor, out[a][1] - rect[a][0] * self.factor) for a in (0, 1))
        return y[..., r0:r1, c0:c1]


class Statistics(Op):
    """A layer normalising by statistics of its whole input. Until ``gather`` it cannot run; then
    it is the per-channel affine map ``affine(mean, variance, count)`` gives (variances biased)."""

    def __init__(self, name: str, affine: Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]):
        self.name, self.affine = name, affine
        self.scale: Tensor | None = None
        self.shift: Tensor | None = None

    def pending_stats(self) -> bool:
        return self.scale is None

    def gather(self, cells: Iterator[Tensor]) -> None:
        count, mean, m2 = 0, None, None
        for cell in cells:  # Chan et al.'s pairwise combination of per-cell means and squared deviations
            n = cell.shape[-2] * cell.shape[-1]
            var, cell_mean = torch.var_mean(cell.float().flatten(2)[0], dim=1, correction=0)
            cell_mean, cell_m2 = cell_mean.double(), var.double() * n
            if mean is None:
                count, mean, m2 = n, cell_mean, cell_m2
                continue
            delta = cell_mean - mean
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + cell_m2 + delta**2 * (count * n / total)
            count = total
        assert mean is not None and m2 is not None
        scale, shift = self.affine(mean, m2 / count, count)
        self.scale, self.shift = (t.float().view(1, -1, 1, 1) for t in (scale, shift))

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        if self.scale is None or self.shift is None:
            raise RuntimeError(f"{self.name}: statistics not gathered yet")
        return torch.addcmul(self.shift.to(x), x, self.scale.to(x)), rect


def instance_norm(eps: float, weight: Tensor | None = None, bias: Tensor | None = None, unbiased: bool = False,
                  name: str = "instance norm") -> Statistics:
    """(x - mean) / sqrt(var + eps) per channel, then ``weight`` and ``bias`` (AdaIN: the style's
    std and mean)."""

    def affine(mean: Tensor, var: Tensor, count: int) -> tuple[Tensor, Tensor]:
        var = var * count / (count - 1) if unbiased else var
        scale = (var + eps).rsqrt()
        if weight is not None:
            scale = scale * weight.double().flatten().to(scale.device)
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias.double().flatten().to(shift.device)
        return scale, shift

    return Statistics(name, affine)


def group_norm(groups: int, eps: float, weight: Tensor | None, bias: Tensor | None, unbiased_std: bool = False,
               eps_on_std: bool = False, name: str = "group norm") -> Statistics:
    """Group normalisation from per-channel statistics (layer norm: one group). MUNIT's layer norm
    divides by the unbiased std plus ``eps`` (``unbiased_std``, ``eps_on_std``)."""

    def affine(mean: Tensor, var: Tensor, count: int) -> tuple[Tensor, Tensor]:
        channels = mean.numel()
        means, variances = mean.view(groups, -1), var.view(groups, -1)
        group_mean = means.mean(1, keepdim=True)
        group_var = (variances + (means - group_mean) ** 2).mean(1, keepdim=True)
        n = count * channels // groups
        if unbiased_std:
            group_var = group_var * n / (n - 1)
        inv = 1 / (group_var.sqrt() + eps) if eps_on_std else (group_var + eps).rsqrt()
        scale = inv.expand(groups, channels // groups).reshape(-1)
        shift = (-group_mean * inv).expand(groups, channels // groups).reshape(-1)
        if weight is not None:
            w = weight.double().flatten().to(scale.device)
            scale, shift = scale * w, shift * w
        if bias is not None:
            shift = shift + bias.double().flatten().to(shift.device)
        return scale, shift

    return Statistics(name, affine)


class Sum(Op):
    """The sum of branches of one input (a branch may be empty: the identity), times ``scale``."""

    def __init__(self, branches: Sequence[Sequence[Op]], scale: float = 1.0):
        self.branches, self.scale = [list(b) for b in branches], scale

    def pending_stats(self) -> bool:
        return any(op.pending_stats() for branch in self.branches for op in branch)

    def size(self, size: Size) -> Size:
        return chain_size(self.branches[0], size)

    def channels(self, channels: int) -> int:
        for op in self.branches[0]:
            channels = op.channels(channels)
        return channels

    def need(self, rect: Rect, size: Size) -> Rect:
        needs = [chain_need(branch, rect, size) for branch in self.branches]
        return tuple((min(n[a][0] for n in needs), max(n[a][1] for n in needs)) for a in (0, 1))  # type: ignore[return-value]

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        outputs = [chain_apply(branch, x, rect, size) for branch in self.branches]
        common = tuple((max(o[1][a][0] for o in outputs), min(o[1][a][1] for o in outputs)) for a in (0, 1))
        total = sum(crop(y, r, common) for y, r in outputs)
        return (total * self.scale if self.scale != 1.0 else total), common  # type: ignore[return-value]


def crop(x: Tensor, have: Rect, want: Rect) -> Tensor:
    (r0, r1), (c0, c1) = ((want[a][0] - have[a][0], want[a][1] - have[a][0]) for a in (0, 1))
    if r0 < 0 or c0 < 0 or r1 > x.shape[-2] or c1 > x.shape[-1]:
        raise RuntimeError(f"region {want} is not inside the computed {have}")
    return x[..., r0:r1, c0:c1]


def chain_size(ops: Sequence[Op], size: Size) -> Size:
    for op in ops:
        size = op.size(size)
    return size


def chain_need(ops: Sequence[Op], rect: Rect, size: Size) -> Rect:
    sizes = [size]
    for op in ops:
        sizes.append(op.size(sizes[-1]))
    for op, in_size in zip(reversed(ops), reversed(sizes[:-1])):
        rect = op.need(rect, in_size)
    return rect


def chain_apply(ops: Sequence[Op], x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
    for op in ops:
        x, rect = op.apply(x, rect, size)
        size = op.size(size)
    return x, rect


# -- sources: whole-image buffers and streams of operations over them --------------------------------
class Buffer:
    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self.size: Size = tuple(tensor.shape[-2:])  # type: ignore[assignment]
        self.channels = tensor.shape[1]

    def patch(self, rect: Rect) -> Tensor:
        return self.tensor[..., rect[0][0] : rect[0][1], rect[1][0] : rect[1][1]]


class Stream:
    """``ops`` applied to ``source``, computed region by region on request."""

    def __init__(self, source: Buffer | Stream, ops: Sequence[Op]):
        self.source, self.ops = source, list(ops)
        self.size = chain_size(self.ops, source.size)
        channels = source.channels
        for op in self.ops:
            channels = op.channels(channels)
        self.channels = channels

    def patch(self, rect: Rect) -> Tensor:
        needed = chain_need(self.ops, rect, self.source.size)
        y, have = chain_apply(self.ops, self.source.patch(needed), needed, self.source.size)
        return crop(y, have, rect)


def cells(size: Size, cell: int) -> Iterator[Rect]:
    """A partition of a ``size`` map into squares of side ``cell`` (smaller at the ends)."""
    for r in range(0, size[0], cell):
        for c in range(0, size[1], cell):
            yield (r, min(size[0], r + cell)), (c, min(size[1], c + cell))


class Executor:
    """Runs a lowered network over a (1, C, H, W) image: gathers every statistics layer's whole-image
    statistics in order, then computes the output cell by cell."""

    def __init__(self, tile: int, memory_budget: int = DEFAULT_MEMORY_BUDGET):
        self.tile, self.budget = tile, memory_budget
        self.buffers: list[Buffer] = []
        self.image_size: Size = (1, 1)

    def run(self, ops: Sequence[Op], image: Tensor, output_device: torch.device | str = "cpu") -> Tensor:
        if image.shape[0] != 1:
            return torch.cat([self.run(ops, one[None], output_device) for one in image])
        self.image_size = tuple(image.shape[-2:])  # type: ignore[assignment]
        source = self._freeze(list(ops), self._hold(Buffer(image)))
        out = None
        for rect in cells(source.size, self._cell(source.size)):
            piece = source.patch(rect).float().to(output_device)
            if out is None:
                out = torch.empty(1, piece.shape[1], *source.size, device=output_device)
            out[..., rect[0][0] : rect[0][1], rect[1][0] : rect[1][1]] = piece
        self.buffers.clear()
        assert out is not None
        return out

    def _cell(self, size: Size) -> int:
        # the tile in the map's own resolution: each cell stands for about one tile of the image
        return max(8, round(self.tile * max(size[0] / self.image_size[0], size[1] / self.image_size[1])))

    def _hold(self, buffer: Buffer) -> Buffer:
        self.buffers.append(buffer)
        return buffer

    def _affordable(self, stream: Stream) -> bool:
        held = sum(b.tensor.numel() * b.tensor.element_size() for b in self.buffers)
        wanted = stream.channels * stream.size[0] * stream.size[1] * 4
        # half the budget at most, so that a buffer and the next one can coexist
        return wanted <= self.budget // 2 and held + wanted <= self.budget

    def _materialise(self, stream: Stream) -> Buffer:
        tensor = None
        for rect in cells(stream.size, self._cell(stream.size)):
            piece = stream.patch(rect)
            if tensor is None:
                tensor = piece.new_empty(1, piece.shape[1], *stream.size)
            tensor[..., rect[0][0] : rect[0][1], rect[1][0] : rect[1][1]] = piece
        assert tensor is not None
        return self._hold(Buffer(tensor))

    def _release(self, keep: Sequence[Buffer]) -> None:
        self.buffers = [b for b in self.buffers if any(b is k for k in keep)]

    def _freeze(self, ops: list[Op], source: Buffer | Stream) -> Buffer | Stream:
        """Gather the statistics of ``ops`` fed by ``source``; returns the stream of their output."""
        pending: list[Op] = []
        outer = list(self.buffers)  # what the callers still read
        for op in ops:
            if op.pending_stats():
                if pending:
                    stream = Stream(source, pending)
                    if self._affordable(stream):
                        old, source, pending = source, self._materialise(stream), []
                        del stream
                        if isinstance(old, Buffer) and all(old is not b for b in outer):
                            self._release([b for b in self.buffers if b is not old])  # replaced, no longer read
                        del old
                    else:
                        source, pending = stream, []
                if isinstance(op, Statistics):
                    op.gather(source.patch(rect) for rect in cells(source.size, self._cell(source.size)))
                elif isinstance(op, Sum):
                    for branch in op.branches:
                        before = list(self.buffers)
                        self._freeze(branch, source)
                        self._release(before)
            pending.append(op)
        return Stream(source, pending) if pending else source


# -- lowering modules to operations ----------------------------------------------------------------
def _pair(value: int | Sequence[int]) -> Size:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _conv(module: nn.Conv2d) -> list[Op]:
    if isinstance(module.padding, str):
        raise Unsupported(f"{module}: string padding")
    ph, pw = module.padding
    ops: list[Op] = []
    if ph or pw:
        mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}.get(module.padding_mode)
        if mode is None:
            raise Unsupported(f"{module}: padding mode {module.padding_mode}")
        ops.append(Pad((pw, pw, ph, ph), mode))
    weight, bias, stride, dilation, groups = module.weight, module.bias, module.stride, module.dilation, module.groups
    ops.append(Window(_pair(module.kernel_size), stride, dilation,
                      lambda x: F.conv2d(x, weight, bias, stride, 0, dilation, groups), module.out_channels))
    return ops


POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.PReLU, nn.Hardtanh)


def _fused_activation(norm: nn.Module) -> list[Op]:
    """The activation a norm applies itself (``MeasuredNorm.activation_slope``, set by the trainer)."""
    from gan_style.nn.layers import activation_module

    slope = getattr(norm, "activation_slope", None)
    return [] if slope is None else [Pointwise(activation_module(slope, inplace=False))]


def lower(module: nn.Module, adain: Iterator[tuple[Tensor, Tensor]] | None = None) -> list[Op]:
    """``module``'s forward as operations. ``adain`` yields the (shift, scale) of each AdaIN layer
    met, in forward order (MUNIT's decoder). Raises :class:`Unsupported` for unknown layers."""
    from gan_style.nn import antialias, generators, munit_networks, stylegan2
    from gan_style.nn.layers import FusedActivation

    if isinstance(module, nn.Sequential):  # StyleGAN2's ConvLayer too
        return [op for child in module for op in lower(child, adain)]
    if isinstance(module, stylegan2.ResBlock):
        return [Sum([lower(module.skip), lower(module.conv1) + lower(module.conv2)], scale=1 / math.sqrt(2))]
    if isinstance(module, stylegan2.Blur):
        return _fir(module.kernel, module.pad)
    if isinstance(module, stylegan2.EqualConv2d):
        weight, bias, stride, padding = module.weight * module.scale, module.bias, module.stride, module.padding
        pad = [Pad((padding,) * 4, "constant")] if padding else []
        return [*pad, Window(_pair(weight.shape[-1]), _pair(stride), (1, 1), lambda x: F.conv2d(x, weight, bias, stride), weight.shape[0])]
    if isinstance(module, (stylegan2.FusedLeakyReLU, stylegan2.ScaledLeakyReLU)):  # a bias per channel
        return [Pointwise(module)]
    if isinstance(module, (generators.ResnetGenerator, generators.UnetGenerator, munit_networks.ContentEncoder)):
        return lower(module.model, adain)
    if isinstance(module, generators.ResnetBlock):
        return [Sum([[], lower(module.conv_block, adain)])]
    if isinstance(module, generators.UnetSkipBlock):
        inner = lower(module.model, adain)
        return inner if module.outermost else [Concat([[], inner])]
    if isinstance(module, munit_networks.ResBlocks):
        return [op for block in module.model for op in lower(block, adain)]
    if isinstance(module, munit_networks.ResBlock):
        return [Sum([[], lower(module.model, adain)])]
    if isinstance(module, munit_networks.Conv2dBlock):
        return lower(module.pad, adain) + lower(module.conv, adain) + lower(module.norm, adain) + lower(module.activation, adain)
    if isinstance(module, munit_networks.AdaptiveInstanceNorm2d):
        if adain is None:
            raise Unsupported("an AdaIN layer without its style parameters")
        shift, scale = next(adain)
        return [instance_norm(module.eps, scale, shift, name="AdaIN"), *_fused_activation(module)]
    if isinstance(module, munit_networks.LayerNorm):
        return [group_norm(1, module.eps, module.gamma, module.beta, unbiased_std=True, eps_on_std=True, name="layer norm")]
    if isinstance(module, (nn.ReflectionPad2d, nn.ReplicationPad2d, nn.ZeroPad2d)):
        mode = "reflect" if isinstance(module, nn.ReflectionPad2d) else "replicate" if isinstance(module, nn.ReplicationPad2d) else "constant"
        return [Pad(tuple(module.padding), mode)]  # type: ignore[arg-type]
    if isinstance(module, nn.Conv2d):
        return _conv(module)
    if isinstance(module, nn.ConvTranspose2d):
        return [TransposedConv(module)]
    if isinstance(module, antialias.Downsample):
        filt, channels = module.filt, module.channels
        return [Pad((1, 1, 1, 1), "reflect"), Window((3, 3), (2, 2), (1, 1), lambda x: F.conv2d(x, filt, stride=2, groups=channels))]
    if isinstance(module, antialias.Upsample):
        return [Pad((1, 1, 1, 1), "replicate"), TransposedConv(weight=module.filt, stride=(2, 2), padding=(3, 3), groups=module.channels)]
    if isinstance(module, nn.InstanceNorm2d):  # our InstanceNorm2d too (group norm with one channel per group)
        if module.track_running_stats and not module.training:
            raise Unsupported("instance norm with running statistics")
        return [instance_norm(module.eps, module.weight, module.bias), *_fused_activation(module)]
    if isinstance(module, FusedActivation):  # the norm before it applies it
        return []
    if isinstance(module, nn.GroupNorm):
        return [group_norm(module.num_groups, module.eps, module.weight, module.bias)]
    if isinstance(module, nn.BatchNorm2d) and not module.training and module.track_running_stats:
        return [Pointwise(module)]
    if isinstance(module, nn.Dropout) and not module.training:
        return []
    if isinstance(module, POINTWISE):
        if getattr(module, "inplace", False):  # patches may be views of a kept buffer
            module = copy.copy(module)
            module.inplace = False
        return [Pointwise(module)]
    if isinstance(module, nn.Upsample):
        factor = module.scale_factor
        if module.size is not None or factor is None or float(factor) != int(factor) or (module.mode == "bilinear" and module.align_corners):
            raise Unsupported(f"{module}")
        return [Upsample(int(factor), module.mode)]
    if isinstance(module, nn.MaxPool2d):
        if module.padding not in (0, (0, 0)) or module.return_indices:
            raise Unsupported(f"{module}")
        k, s, d, ceil = _pair(module.kernel_size), _pair(module.stride), _pair(module.dilation), module.ceil_mode
        return [Window(k, s, d, lambda x: F.max_pool2d(x, k, s, 0, d), ceil_mode=ceil)]
    raise Unsupported(f"{type(module).__name__} layers")


def _fir(kernel: Tensor, pad: tuple[int, int]) -> list[Op]:
    """StyleGAN2's FIR filter (``upfirdn2d`` without re-sampling): zero padding, a depthwise window."""
    from gan_style.nn.stylegan2 import upfirdn2d

    before, after = pad
    if before < 0 or after < 0:
        raise Unsupported(f"a FIR filter that crops (padding {pad})")
    padding = [Pad((before, after, before, after), "constant")] if before or after else []
    return [*padding, Window(tuple(kernel.shape), (1, 1), (1, 1), lambda x: upfirdn2d(x, kernel))]  # type: ignore[arg-type]


class Concat(Sum):
    """Channel concatenation of branches (a U-Net level: cat([x, block(x)]))."""

    def channels(self, channels: int) -> int:
        total = 0
        for branch in self.branches:
            c = channels
            for op in branch:
                c = op.channels(c)
            total += c
        return total

    def apply(self, x: Tensor, rect: Rect, size: Size) -> tuple[Tensor, Rect]:
        outputs = [chain_apply(branch, x, rect, size) for branch in self.branches]
        common = tuple((max(o[1][a][0] for o in outputs), min(o[1][a][1] for o in outputs)) for a in (0, 1))
        return torch.cat([crop(y, r, common) for y, r in outputs], dim=1), common  # type: ignore[return-value]


# -- programs of the methods whose translation is more than one network -----------------------------
def _bound_inputs(model: Any, direction: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` as ``Model.bind`` passes them to the translator (images as tensors)."""
    translator = model.translator(direction)
    translator.check_inputs(inputs)
    kinds = {spec.name: spec.kind for spec in translator.inputs}
    return {name: model._as_tensor(value) if kinds[name] == "image" else value for name, value in inputs.items() if value is not None}


def munit_program(model: Any, direction: str, inputs: Mapping[str, Any]) -> list[Op]:
    """MUNIT's translation (as its translator): the source's content encoder, then the target's
    decoder with the AdaIN parameters of the style code (the code is global: it does not tile)."""
    from gan_style.methods.munit import expand_styles, random_style, style_code

    given = _bound_inputs(model, direction, inputs)
    nets = model.networks
    source, target = (nets["G_A"], nets["G_B"]) if direction == "AtoB" else (nets["G_B"], nets["G_A"])
    with torch.no_grad():
        style = given.get("style")
        code = style_code(target, style) if style is not None else random_style(target.spec.style_dim, given.get("seed") or 0, given.get("style_number", 0))
        params = target.adain_params(expand_styles(code.to(model.device), 1))
    chunks = params.split([2 * c for c in target.dec.adain_channels], dim=1)
    styles = iter([(chunk[:, : chunk.shape[1] // 2], chunk[:, chunk.shape[1] // 2 :]) for chunk in chunks])
    return lower(source.enc_content) + lower(target.dec.model, styles)


def adain_program(model: Any, direction: str, inputs: Mapping[str, Any]) -> list[Op]:
    """AdaIN style transfer (Huang and Belongie, Eq. 14) on images in [-1, 1]: VGG encoder, the
    content features re-normalised to the style's channel statistics and mixed by ``alpha``, decoder."""
    from gan_style.nn.adain import instance_mean_std
    from gan_style.nn.vgg import _input_to_unit

    given = _bound_inputs(model, direction, inputs)
    encoder, decoder = model.networks["encoder"], model.networks["decoder"]
    alpha = float(given.get("alpha", 1.0))
    with torch.no_grad():
        style_mean, style_std = instance_mean_std(encoder.encode((given["style"] + 1) / 2))
    eps = 1e-5

    def affine(mean: Tensor, var: Tensor, count: int) -> tuple[Tensor, Tensor]:
        # alpha * ((x - mu) / sigma * std_s + mean_s) + (1 - alpha) * x, sigma unbiased as the reference
        scale = (var * count / (count - 1) + eps).rsqrt() * style_std.double().flatten()
        return alpha * scale + (1 - alpha), alpha * (style_mean.double().flatten() - mean * scale)

    low_high = encoder.input_range
    return [Pointwise(lambda x: _input_to_unit((x + 1) / 2, low_high)), *lower(nn.Sequential(*encoder)),
            Statistics("AdaIN", affine), *lower(decoder), Pointwise(lambda x: x * 2 - 1)]


def _modulated_conv(conv: Any, style: Tensor) -> list[Op]:
    """A ``ModulatedConv2d`` of the Swapping Autoencoder's variant (``modulate_input``) with its
    style fixed: the style scales the input channels, then one shared convolution."""
    if not conv.modulate_input or conv.downsample:
        raise Unsupported("modulated convolutions other than the Swapping Autoencoder's (modulate_input, no down-sampling)")
    scales = conv.modulation(style)
    if conv.demodulate:
        scales = scales * torch.rsqrt(scales.pow(2).mean(dim=1, keepdim=True) + conv.eps)
    scales, weight = scales.view(1, -1, 1, 1), conv.modulated_weight(None)[0]
    ops: list[Op] = [Pointwise(lambda x: x * scales)]
    if conv.upsample:  # stride-2 transposed convolution, then the blur
        return [*ops, TransposedConv(weight=weight.transpose(0, 1), stride=(2, 2)), *lower(conv.blur)]
    k, p = conv.kernel_size, conv.padding
    return [*ops, *([Pad((p,) * 4, "constant")] if p else []), Window((k, k), (1, 1), (1, 1), lambda x: F.conv2d(x, weight), conv.out_channels)]


def _styled_conv(layer: Any, style: Tensor, noise: Tensor | None) -> list[Op]:
    ops = _modulated_conv(layer.conv, style)
    if layer.inject_noise:
        assert noise is not None
        ops.append(Positional(noise, layer.noise.weight))
    return [*ops, Pointwise(layer.activate)]


def swapae_generator_ops(G: Any, texture: Tensor, noise: Sequence[Tensor | None]) -> list[Op]:
    """The Swapping Autoencoder's G (``SwapAEGenerator.forward``) on a structure code, with the
    texture code (1, C) and the noise maps (``G.draw_noise``) fixed: every layer is then local."""
    from gan_style.nn.swapae import normalize_code

    texture = normalize_code(texture)
    modulation = G.SpatialCodeModulation
    scale, bias = (f(texture).view(1, -1, 1, 1) for f in (modulation.scale, modulation.bias))
    ops: list[Op] = [Pointwise(normalize_code), Pointwise(lambda x: x * scale + bias)]
    for k, name in enumerate(G.block_names):
        block = getattr(G, name)
        skip = lower(block.skip) + ([Upsample(2, "bilinear")] if block.upsample else [])
        residual = _styled_conv(block.conv1, texture, noise[2 * k]) + _styled_conv(block.conv2, texture, noise[2 * k + 1])
        ops.append(Sum([skip, residual], scale=1 / math.sqrt(2)))
    to_rgb = G.ToRGB
    return [*ops, *_modulated_conv(to_rgb.conv, texture), Pointwise(lambda x: x + to_rgb.bias)]


#: tile of the texture image's pass through E (the code is the same for any tile; this bounds memory)
TEXTURE_TILE = 512


def swapae_texture_code(E: Any, image: Tensor, tile: int = TEXTURE_TILE) -> Tensor:
    """E's texture code (1, C) of one image (1, 3, H, W): the trunk and texture head computed in
    tiles, then their spatial mean, the linear layer and the L2 normalisation (as ``E.forward``)."""
    from gan_style.nn.swapae import normalize_code

    ops = lower(E.FromRGB) + lower(E.DownToSpatialCode) + lower(E.DownToGlobalCode)
    with torch.inference_mode():
        features = Executor(tile).run(ops, image, image.device)
        return normalize_code(E.ToGlobalCode(features.mean(dim=(2, 3))))


def swapae_program(model: Any, direction: str, inputs: Mapping[str, Any]) -> Callable[[Tensor], list[Op]]:
    """The Swapping Autoencoder's swap (as its translator): E's structure code of the image, kept
    whole (8 channels at 1/16 of the side), then G with the texture code lerped from the image's own
    to the texture image's by ``alpha`` (both codes are image-global: gathered tile by tile over the
    image first) and the noise of ``seed`` drawn for the whole image."""
    from gan_style.nn.swapae import fit_texture_image, normalize_code

    given = _bound_inputs(model, direction, inputs)
    E, G = model.networks["E"], model.networks["G"]
    alpha, seed = float(given.get("alpha", 1.0)), int(given.get("seed") or 0)
    texture = fit_texture_image(given["texture"].to(model.device), E.spec)
    if texture.shape[0] != 1:
        raise Unsupported("one texture image per structure image (tiles need one texture for all)")
    structure = lower(E.FromRGB) + lower(E.DownToSpatialCode) + lower(E.ToSpatialCode) + [Pointwise(normalize_code), Keep()]
    target = swapae_texture_code(E, texture)
    with torch.inference_mode():
        swapae_generator_ops(G, target, G.draw_noise((1, 1)))  # fail now, not at the first image

    def build(image: Tensor) -> list[Op]:
        with torch.inference_mode():
            own = swapae_texture_code(E, image) if alpha != 1.0 else target
            mixed = torch.lerp(own, target.to(own.dtype), alpha)
            noise = G.draw_noise(chain_size(structure, tuple(image.shape[-2:])), torch.Generator().manual_seed(seed))
            return structure + swapae_generator_ops(G, mixed, noise)

    return build


def _fixed(program: Callable[[Any, str, Mapping[str, Any]], list[Op]]) -> Callable[[Any, str, Mapping[str, Any]], Callable[[Tensor], list[Op]]]:
    """A program that does not depend on the image, checked once and built again for every image
    (its statistics layers hold state)."""

    def prepare(model: Any, direction: str, inputs: Mapping[str, Any]) -> Callable[[Tensor], list[Op]]:
        program(model, direction, inputs)  # fail now, not at the first image
        return lambda image: program(model, direction, inputs)

    return prepare


#: per method: (model, direction, inputs) -> a builder of the program of one image (1, C, H, W)
PROGRAMS: dict[str, Callable[[Any, str, Mapping[str, Any]], Callable[[Tensor], list[Op]]]] = {
    "munit": _fixed(munit_program), "adain": _fixed(adain_program), "swapae": swapae_program,
}


def program_of(model: Any, direction: str, inputs: Mapping[str, Any]) -> Callable[[Tensor], list[Op]]:
    """A builder of ``model``'s translation of one image as operations (raises :class:`Unsupported`).
    The statistics layers hold state, so every image gets a fresh program."""
    if model.method in PROGRAMS:
        return PROGRAMS[model.method](model, direction, inputs)
    function, _ = model.bind(direction, **inputs)
    if not isinstance(function, nn.Module):
        raise Unsupported(f"{model.description}: its translation is not one network")
    lower(function)
    return lambda image: lower(function)


def run_exact(build: Callable[[Tensor], list[Op]] | nn.Module, image: Tensor, tile: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Tensor:
    """The whole-image result of the program (or network) on ``image`` (B, C, H, W) (sides as the
    network needs them), computed in tiles of about ``tile`` pixels with whole-image statistics."""
    outputs = []
    for one in image:
        ops = lower(build) if isinstance(build, nn.Module) else build(one[None])
        with torch.inference_mode():
            outputs.append(Executor(tile, memory_budget).run(ops, one[None], image.device))
    return torch.cat(outputs)
