"""Normalisation factory and weight initialisation shared by every network.

The CycleGAN family builds its networks as flat ``nn.Sequential`` stacks of plain layers, so that
a layer's index is the same as in the reference implementations (CUT picks its PatchNCE features
by those indices, and checkpoints load both ways). The builders here return lists of layers.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("instance", "batch", "none")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")


class _PadsInItsInputDtype(nn.Module):
    """CPU autocast lists reflection and replication padding as fp32 ops: in a bf16 step each pad
    would cast its bf16 input to fp32 and the next convolution cast it back, two full-size copies
    per pad forward and two more in its backward.
    Padding only copies values, so it runs in its input's dtype here, outside autocast."""

    def forward(self, x: Tensor) -> Tensor:
        if autocast_on(x):
            with torch.autocast(x.device.type, enabled=False):
                return super().forward(x)
        return super().forward(x)


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is a 4-D tensor stored channels-last and not also NCHW-contiguous (as
    tensors with one channel or a 1x1 extent are)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def autocast_on(x: Tensor) -> bool:
    """Whether autocast is on for the device type of ``x`` (False for types it does not know)."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except RuntimeError:  # a device type autocast does not know (meta tensors)
        return False


def engine_uses(ctx: Any, index: int) -> bool:
    """Whether this backward pass of a custom autograd Function (``ctx``) uses the gradient of its
    input ``index``. ``needs_input_grad`` says what required gradients in the forward;
    ``autograd.grad`` may ask for less: R1's first pass asks for the images' gradient only, and
    PyTorch's own convolution then skips the weight's (its ``output_mask``). So the engine is asked
    whether it will run the node the gradient goes to."""
    if not ctx.needs_input_grad[index]:
        return False
    node = ctx.next_functions[index][0]
    try:
        return node is None or torch._C._will_engine_execute_node(node)
    except (AttributeError, RuntimeError):  # a leaf autograd.grad asked for (it is captured, not run); a PyTorch without the query
        return True


def conv_gradients_needed(ctx: Any) -> tuple[bool, bool, bool]:
    """(input, weight, bias): which gradients this backward pass of a convolution Function whose
    inputs start with (x, weight, bias) uses (``engine_uses``; ``ctx.has_bias`` set in its forward)."""
    return engine_uses(ctx, 0), engine_uses(ctx, 1), ctx.has_bias and engine_uses(ctx, 2)


def pytorch_conv_backward(grad_out: Tensor, x: Tensor, weight: Tensor, needs: tuple[bool, bool, bool], stride: int = 1,
                          padding: int = 0) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The (input, weight, bias) gradients of ``F.conv2d(x, weight, bias, stride=stride,
    padding=padding)`` that ``needs`` asks for, by PyTorch's backward in one call, which autograd
    differentiates as it would PyTorch's own convolution (R1's create_graph)."""
    return torch.ops.aten.convolution_backward(grad_out, x, weight, [weight.shape[0]] if needs[2] else None, [stride] * 2,
                                               [padding] * 2, [1, 1], False, [0, 0], 1, list(needs))


class ReflectionPad2d(_PadsInItsInputDtype, nn.ReflectionPad2d):
    """``nn.ReflectionPad2d`` in its input's dtype under autocast (see ``_PadsInItsInputDtype``);
    for a channels-last fp32 or bf16 CPU image its backward is ``gan_style.nn.resample``'s gather,
    where PyTorch's zero-fills and scatters (fwd + bwd 0.54 against 1.15 ms for a bf16 128-channel
    128x128 map, 2 threads of a Xeon)."""

    def forward(self, x: Tensor) -> Tensor:
        from gan_style.nn.resample import reflection_pad, resample_applies  # it uses this module's layout helpers

        if resample_applies(x):
            return reflection_pad(x, self.padding)
        return super().forward(x)


class ReplicationPad2d(_PadsInItsInputDtype, nn.ReplicationPad2d):
    """``nn.ReplicationPad2d`` in its input's dtype under autocast (see ``_PadsInItsInputDtype``)."""


def winograd_applies(x: Tensor, weight: Tensor, padding: int) -> bool:
    """Whether a stride-1, ungrouped convolution of ``x`` by ``weight`` with ``padding`` zeros runs
    by Winograd (``gan_style.nn.winograd``): F(4x4, 3x3), F(3x3, 4x4) for the PatchGAN
    discriminators' 4x4 kernels, or F(4x4, 5x5) for MUNIT's decoder (on the fused path only), for
    an fp32 input outside autocast, padding 0 or 1, when both widths are at least
    ``WINOGRAD_MIN_CHANNELS[side]`` (narrower layers on large maps move more data than they save in
    multiplications; ``WINOGRAD_MIN_CHANNELS_FUSED`` where the fused C transforms run, which move
    less)."""
    c_out, c_in, height, width = weight.shape
    if not (height == width and height in WINOGRAD_MIN_CHANNELS_FUSED and padding in (0, 1)
            and x.dtype == torch.float32 and weight.dtype == torch.float32 and not autocast_on(x)):
        return False
    from gan_style.nn.winograd import fused_transforms_apply

    narrowest = WINOGRAD_MIN_CHANNELS_FUSED if fused_transforms_apply(x, weight) else WINOGRAD_MIN_CHANNELS
    return height in narrowest and min(c_in, c_out) >= narrowest[height]


#: the widest side a convolution may have to count as narrow (``gan_style.nn.narrow``): images
#: (3 channels), masks and one-channel maps
NARROW_MAX_CHANNELS = 4


class WinogradCapable:
    """A convolution layer whose stride-1 convolutions can run by Winograd in fp32 steps
    (:func:`winograd_applies`): :class:`Conv2d`, and StyleGAN2's ``EqualConv2d`` and
    ``ModulatedConv2d`` (with one weight for the batch).

    ``kernel`` is set by the trainer from a measurement (gan_style.engine.kernels): "direct"
    (PyTorch's convolution; the default, so networks built outside a trainer, as
    ``gan_style.load`` builds them for inference, run directly) or "winograd" where it applies.
    ``weight_gradient``, likewise set by the trainer: "direct" (PyTorch's) or "measured" (the
    strided convolutions' weight gradients by im2col where timed faster, ``gan_style.nn.strided``).
    ``narrow``, likewise: "direct" or "measured" (the image-facing layers, a side of at most four
    channels, by a GEMM and a tap gather per pass where timed faster, ``gan_style.nn.narrow``)."""

    kernel: str = "direct"
    weight_gradient: str = "direct"
    narrow: str = "direct"

    def stride1_conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
        """``F.conv2d(x, weight, bias, padding=padding)``, by Winograd where ``kernel`` says so and it
        applies, by taps where ``narrow`` says so and the layer has a narrow side."""
        if self.kernel == "winograd" and winograd_applies(x, weight, padding):
            from gan_style.nn.winograd import winograd_conv2d  # it uses this module's layout helpers

            return winograd_conv2d(x, weight, bias, padding)
        if self.narrow == "measured" and min(weight.shape[:2]) <= NARROW_MAX_CHANNELS:  # most layers: wide on both sides
            from gan_style.nn.narrow import narrow_conv2d  # it uses this module's layout helpers

            return narrow_conv2d(x, weight, bias, padding)
        return F.conv2d(x, weight, bias, padding=padding)

    def strided_conv2d(self, x: Tensor, weight: Tensor, bias: Tensor | None, stride: int, padding: int) -> Tensor:
        """``F.conv2d(x, weight, bias, stride=stride, padding=padding)``, its weight gradient by the
        kernel measured faster for the shape where ``weight_gradient`` says so."""
        if self.weight_gradient == "measured":
            from gan_style.nn.strided import strided_conv2d  # it uses this module's layout helpers

            return strided_conv2d(x, weight, bias, stride, padding)
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)


class WeightCasts:
    """One low-precision copy of each weight per version, for a mixed-precision training step
    (:func:`weight_casts`). Autocast casts a weight at every use outside the autocast region where
    it last cast it, and each cast's backward casts a gradient back: a bf16 FastCUT step cast each
    of G's 256-channel kernels 1.6 times and MUNIT's 1.5 times (their generator runs in the
    trainer's forward region and again in the generator phase). Here a weight's cast is kept until
    the weight changes (its version counter: an optimiser step; PyTorch's fused kernel does not
    move it, so gan_style.engine.optimizers' Adam and AdamW do) or the step ends. Uses that need a
    gradient share the cast's node, so their bf16 gradients meet before the one cast back, as
    autocast's own cache has them within a region; other uses get it detached."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        self._casts: dict[int, tuple[Tensor, int, Tensor]] = {}
        self._derived: dict[tuple[int, str], tuple[Tensor, int, Any]] = {}  # (id(weight), name): (weight, version, form)

    def __call__(self, weight: Tensor) -> Tensor:
        """``weight`` in this step's dtype where a cast is kept or worth keeping; otherwise ``weight``
        itself, which autocast casts for the use (a frozen network's weight with no kept cast:
        keeping casts made for frozen uses cost a CycleGAN bf16 step 5 %, paired, for no cast saved)."""
        if weight.dtype != torch.float32:
            return weight
        needs_grad = weight.requires_grad and torch.is_grad_enabled()
        kept = self._casts.get(id(weight))
        if kept is not None and kept[0] is weight and kept[1] == weight._version:
            return kept[2] if needs_grad else kept[2].detach()
        if not needs_grad:
            return weight
        cast = weight.to(self.dtype)
        self._casts[id(weight)] = (weight, weight._version, cast)
        return cast

    def derived(self, weight: Tensor, name: str, make: Callable[[], Any]) -> Any:
        """``make()``, a form of ``weight``'s current version (a kernel's packed layout of it), made
        once and reused by the step's later uses of the same version."""
        kept = self._derived.get((id(weight), name))
        if kept is not None and kept[0] is weight and kept[1] == weight._version:
            return kept[2]
        form = make()
        self._derived[(id(weight), name)] = (weight, weight._version, form)
        return form

    def drop_stale(self) -> None:
        """Free the casts of weights that changed (after an optimiser step), as autocast frees its
        cache at the end of a region, and the forms made of them: they would only hold memory until
        the step ends."""
        self._casts = {key: kept for key, kept in self._casts.items() if kept[0]._version == kept[1]}
        self._derived = {key: kept for key, kept in self._derived.items() if kept[0]._version == kept[1]}


_STEP_CASTS: contextvars.ContextVar[WeightCasts | None] = contextvars.ContextVar("gan_style_step_casts", default=None)


@contextlib.contextmanager
def weight_casts(dtype: torch.dtype) -> Iterator[WeightCasts]:
    """Within this context (the trainer's step under autocast to ``dtype``), :class:`Conv2d` layers
    take their weights' casts from one :class:`WeightCasts`; they are dropped at its end."""
    casts = WeightCasts(dtype)
    token = _STEP_CASTS.set(casts)
    try:
        yield casts
    finally:
        _STEP_CASTS.reset(token)


def step_derived(weight: Tensor, name: str, make: Callable[[], Any]) -> Any:
    """``make()``, kept for the later uses of ``weight``'s version where a :func:`weight_casts`
    context is open (:meth:`WeightCasts.derived`), else made at each call."""
    casts = _STEP_CASTS.get()
    return make() if casts is None else casts.derived(weight, name, make)


def step_cast(weight: Tensor | None, x: Tensor) -> Tensor | None:
    """``weight`` as the step's kept cast where a :func:`weight_casts` context is open and autocast is on."""
    casts = _STEP_CASTS.get()
    if weight is None or casts is None or not autocast_on(x):
        return weight
    return casts(weight)


class Conv2d(WinogradCapable, nn.Conv2d):
    """``nn.Conv2d`` (same parameters and state-dict keys) whose zero-padded, ungrouped forms run by
    the trainer's measured kernels (:class:`WinogradCapable`): stride 1 by Winograd in fp32 steps,
    larger square strides with their weight gradient by im2col where faster; in bf16 steps on a
    CPU with AMX, the stride-1 3x3 and 4x4 ones with zero padding 0 or 1 forward and backward by
    tiles where faster (``gan_style.nn.tiles``); every other case directly. In a mixed-precision step its weights'
    casts are the step's (:func:`weight_casts`)."""

    def forward(self, x: Tensor) -> Tensor:
        if self.weight_gradient == "measured":
            from gan_style.nn.tiles import tile_conv2d, tile_conv_applies  # it uses this module's layout helpers

            if tile_conv_applies(self, x):  # it casts the weight only where PyTorch's convolution runs
                return tile_conv2d(x, self.weight, self.bias, step_cast(self.bias, x), self.padding[0])
        weight, bias = step_cast(self.weight, x), step_cast(self.bias, x)
        if (self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and self.padding[0] == self.padding[1] and self.stride[0] == self.stride[1]):
            if self.stride == (1, 1):
                return self.stride1_conv2d(x, weight, bias, self.padding[0])
            return self.strided_conv2d(x, weight, bias, self.stride[0], self.padding[0])
        return self._conv_forward(x, weight, bias)


#: the narrowest layer :class:`Conv2d` runs by Winograd, per kernel side. Forward + backward time
#: against the direct convolution (AVX-512 Xeon, fp32, batch 1, 2 threads): 3x3, 256 channels at
#: 32x32 0.72, at 64x64 0.61; 128->256 at 64x64 0.60, 256->128 0.83. Narrow layers on large maps
#: move more data than they save: 64->128 at 128x128 0.97, 128->64 1.33. 4x4 (F(3x3, 4x4), the
#: PatchGAN discriminators at 128 px, AMD EPYC): 64->128 at 64x64 0.76 (batch 2: 0.82), 128->256
#: at 32x32 0.73 (0.67), 256->512 at 16x16 0.97 (0.73); its first layer (3 channels in) and last
#: (1 out) stay direct.
WINOGRAD_MIN_CHANNELS = {3: 128, 4: 64}
#: the same where the fused C transforms run (gan_style.nn.winograd_kernels.c; docs/speed.md,
#: session h; Zen 4 EPYC, 2 threads, against the direct convolution): 64->128 at 128x128 0.65,
#: 128->64 0.61, 4x4 256->512 at 16x16 batch 1 0.63. 5x5 kernels (MUNIT's decoder) by F(4x4, 5x5)
#: only there: 256->128 at 64x64 0.38-0.49, 128->64 at 128x128 0.60 (batch 1) and 0.90 (batch 2);
#: a MUNIT fp32 step 0.89-0.94 of its time without them
WINOGRAD_MIN_CHANNELS_FUSED = {3: 64, 4: 64, 5: 64}


class MeasuredNorm:
    """A normalisation whose channels-last kernel the trainer sets from a measurement
    (``gan_style.engine.kernels.set_norm_kernel``): :class:`InstanceNorm2d`, MUNIT's AdaIN.

    ``activation_slope``: the (leaky) ReLU that follows it, applied by the norm itself (0.0: ReLU;
    None: none), set where ``gan_style.engine.kernels.fuse_norm_activations`` found the norm
    followed by that activation, which then became a :class:`FusedActivation`. The fused C kernel
    applies it in its output pass and its backward recomputes the mask from the statistics (no
    separate pass over the map and no saved output); other kernels apply it after the norm."""

    kernel: str = "batchnorm"
    activation_slope: float | None = None


class FusedActivation(nn.Module):
    """The place of a ReLU or LeakyReLU that the norm before it applies
    (:attr:`MeasuredNorm.activation_slope`): it passes its input on, which is already activated
    (the reference's in-place activation leaves the norm's output activated too)."""

    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, x: Tensor) -> Tensor:
        return x

    def activation(self) -> nn.Module:
        """The activation module it stands for."""
        return activation_module(self.slope)

    def extra_repr(self) -> str:
        return f"{self.activation()!r}, applied by the norm before it"


def activation_slope(module: nn.Module) -> float | None:
    """The negative slope of ``module`` if it is a ReLU (0.0) or a LeakyReLU, else None."""
    if type(module) is nn.ReLU:
        return 0.0
    if type(module) is nn.LeakyReLU:
        return float(module.negative_slope)
    return None


def activation_module(slope: float, inplace: bool = True) -> nn.Module:
    """The (leaky) ReLU of negative ``slope`` as a module (0.0: ``nn.ReLU``)."""
    return nn.ReLU(inplace=inplace) if slope == 0.0 else nn.LeakyReLU(slope, inplace=inplace)


def activate(y: Tensor, slope: float | None) -> Tensor:
    """``y`` through the (leaky) ReLU of negative ``slope`` (None: as is), in place as the
    reference's activations (``y`` is a norm's fresh output)."""
    if slope is None:
        return y
    return F.relu_(y) if slope == 0.0 else F.leaky_relu_(y, slope)


class InstanceNorm2d(MeasuredNorm, nn.InstanceNorm2d):
    """Instance normalisation (per sample and channel: biased variance, eps 1e-5), by default
    without affine parameters or running statistics (no state-dict keys), as CycleGAN and CUT use it.

    NCHW tensors go to PyTorch's group-norm kernel (one channel per group, the same function).
    Channels-last tensors stay channels-last (instance norm would return a contiguous tensor that
    the next convolution must convert back) and are normalised one sample at a time by PyTorch's
    batch-norm kernel (``instance_norm``; see docs/speed.md).
    """

    #: how the norm runs, set by the trainer from a measurement (gan_style.engine.kernels).
    #: NCHW tensors: "float32" normalises bf16/fp16 inputs in fp32 and casts back; otherwise
    #: PyTorch's kernel as is. Channels-last tensors: "contiguous" normalises in NCHW layout and
    #: converts back; "native" calls PyTorch's group-norm kernel (chosen only on GPUs: its CPU
    #: forward cancels and its CPU backward is 4-15x slower); "reductions" computes it from
    #: per-channel sums (``_ChannelsLastInstanceNorm``); "fused" every sample in one C call
    #: (``_FusedInstanceNorm``; fp32 and bf16 CPU tensors, else as "batchnorm"); otherwise
    #: ("batchnorm", the default) PyTorch's batch-norm kernel on each sample. All are the same function.
    kernel: str = "float32"

    def forward(self, x: Tensor) -> Tensor:
        slope = self.activation_slope  # the activation after it, where the trainer fused it in
        if self.track_running_stats or x.dim() != 4:
            # PyTorch's CPU instance norm: a wrong gradient for one sample whose gradient is channels-last
            y = super().forward(x)
            if x.dim() == 4:
                y = _ContiguousGradient.apply(y)
                y = y.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else y
            return activate(y, slope)
        channels_last = is_channels_last(x)
        if channels_last and self.kernel not in ("contiguous", "native"):
            return instance_norm(x, self.eps, self.weight, self.bias, self.kernel, slope)
        if self.affine:
            return instance_norm(x, self.eps, self.weight, self.bias, activation_slope=slope)
        if channels_last and self.kernel == "contiguous":
            y = F.group_norm(x.contiguous(), x.shape[1], eps=self.eps).contiguous(memory_format=torch.channels_last)
        elif not channels_last and self.kernel == "float32" and x.dtype in (torch.bfloat16, torch.float16):
            y = F.group_norm(x.float(), x.shape[1], eps=self.eps).to(x.dtype)
        else:
            y = F.group_norm(x, x.shape[1], eps=self.eps)
        return activate(y, slope)


class _ContiguousGradient(torch.autograd.Function):
    """The identity (as a contiguous tensor) whose backward makes the gradient contiguous."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


def instance_norm(x: Tensor, eps: float = 1e-5, scale: Tensor | None = None, shift: Tensor | None = None,
                  kernel: str = "batchnorm", activation_slope: float | None = None) -> Tensor:
    """Instance normalisation of ``x`` (N, C, H, W): per sample and channel, (x - mean) /
    sqrt(var + eps) with the biased variance; then ``* scale + shift`` when given, each (N, C) or
    (C,) (MUNIT's AdaIN: per-sample, from the style). Channels-last tensors are normalised in
    their layout, by ``_per_sample_batch_norm`` or (``kernel="reductions"``)
    ``_ChannelsLastInstanceNorm``; NCHW ones by PyTorch's group-norm kernel. ``activation_slope``:
    a (leaky) ReLU after it (:class:`MeasuredNorm`), in the fused kernel's passes where it runs."""
    if is_channels_last(x):
        if x.dtype == torch.float16:  # its squares and scaled gradients overflow: normalise in fp32
            return activate(instance_norm(x.float(), eps, scale, shift, kernel).half(), activation_slope)
        if kernel == "fused" and fused_norm_applies(x):
            return _with_autocast_off(_FusedInstanceNorm.apply, x, eps, scale, shift, activation_slope)
        norm = _ChannelsLastInstanceNorm.apply if kernel == "reductions" else _per_sample_batch_norm
        return activate(_with_autocast_off(norm, x, eps, scale, shift), activation_slope)
    y = F.group_norm(x, x.shape[1], eps=eps)
    if scale is not None or shift is not None:
        n, c = x.shape[:2]
        scale = torch.ones((), dtype=y.dtype, device=y.device) if scale is None else scale.expand(n, c).reshape(n, c, 1, 1)
        shift = torch.zeros((), dtype=y.dtype, device=y.device) if shift is None else shift.expand(n, c).reshape(n, c, 1, 1)
        y = torch.addcmul(shift, y, scale)
    return activate(y, activation_slope)


def _with_autocast_off(norm: Callable[..., Tensor], x: Tensor, *args: Any) -> Tensor:
    if autocast_on(x):  # x is already in the step's dtype (a convolution's output)
        with torch.autocast(x.device.type, enabled=False):
            return norm(x, *args)
    return norm(x, *args)


def _per_sample_batch_norm(x: Tensor, eps: float, scale: Tensor | None, shift: Tensor | None) -> Tensor:
    """Instance norm of a channels-last tensor as PyTorch's batch norm of each sample alone: the
    statistics of a batch of one are that sample's per-channel statistics.

    Its channels-last CPU kernels keep the layout and fuse the passes: 2-4x faster than
    ``_ChannelsLastInstanceNorm``'s separate reductions at batch 1 and 1.3-2x at batch 2 (fp32 and
    bf16, forward + backward, 2 threads of an AVX-512 Xeon). With an fp32 (not bf16) scale and
    shift, a bf16 input is normalised in fp32 with fp32 statistics and rounded once: half the
    error of the separate bf16 passes. It is the reference's own kernel (PyTorch's instance norm
    of an NCHW tensor is batch norm of an (1, N*C, H, W) view; that view does not exist for a
    channels-last tensor, and for one channels-last sample with a channels-last gradient, torch
    2.14.1's CPU instance norm gets the gradient wrong). A double backward (R1) goes through batch
    norm's own."""
    n, c = x.shape[:2]
    dtype = torch.promote_types(x.dtype, torch.float32)
    scale = x.new_ones(c, dtype=dtype) if scale is None else scale.to(dtype).expand(n, c)
    shift = x.new_zeros(c, dtype=dtype) if shift is None else shift.to(dtype).expand(n, c)

    def normalised(sample: Tensor, index: int) -> Tensor:
        weight = scale if scale.dim() == 1 else scale[index]
        bias = shift if shift.dim() == 1 else shift[index]
        return F.batch_norm(sample, None, None, weight, bias, training=True, momentum=0.0, eps=eps)

    if n == 1:
        return normalised(x, 0)
    # split, not slices: split's backward concatenates, a slice's zero-fills the whole batch
    return torch.cat([normalised(sample, i) for i, sample in enumerate(x.split(1))])


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """Instance norm of a channels-last tensor from per-channel reductions, forward and
    backward, without leaving the layout; with an optional per-sample affine map (AdaIN).

    PyTorch's CPU group-norm kernels are poor on channels-last tensors: the backward is 4-15x
    slower than on NCHW, and the forward takes the variance as E[x²] - E[x]², which cancels when
    |mean| >> std (fp32: 0.24 max error in the output at mean 100, std 1; 7e-4 at mean 10, std 2).
    A detour through NCHW costs four layout copies. Viewed as (N, HW, C), a channels-last tensor's
    sums over HW are contiguous reductions and everything else is a broadcast multiply-add:

        x̂ = (x - mean) * rstd,   rstd = 1 / sqrt(var + eps),   y = γ x̂ + β           (forward)
        dx = γ rstd (dy - mean(dy) - x̂ mean(dy x̂)),   dγ = Σ dy x̂,   dβ = Σ dy     (backward)

    The statistics are fp32 and the variance is the centred (two-pass) one. In bf16 the input is
    centred on its mean rounded to bf16, xc = x - mean₁₆, and ``offset`` = mean(xc) is what that
    rounding left, so that x - mean = xc - offset (in fp32 the offset is left out: it is at the
    level of fp32 rounding)."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, scale: Tensor | None, shift: Tensor | None) -> Tensor:
        n, c, h, w = x.shape
        statistics = torch.promote_types(x.dtype, torch.float32)
        low_precision = statistics != x.dtype
        xv = _per_pixel(x)
        y = torch.empty_like(x)  # channels-last, and not a view (the next ReLU may work in place)
        yv = _per_pixel(y)
        # CPU sums accumulate in fp32 also for bf16 inputs and round only the result, while
        # sum(dtype=fp32) would first copy the input to fp32
        mean_rounded = xv.sum(1, keepdim=True).div_(h * w)
        xc = xv - mean_rounded
        torch.mul(xc, xc, out=yv)  # y's memory holds the squares until the output overwrites them
        variance = yv.sum(1, keepdim=True).to(statistics).div_(h * w)
        offset = xc.sum(1, keepdim=True).to(statistics).div_(h * w) if low_precision else None
        if offset is not None:
            variance.sub_(offset.square())
        rstd = variance.add_(eps).rsqrt_()
        gamma = _per_sample(scale, n, c, statistics)
        # y = xc * multiplier + addend, with per-(sample, channel) coefficients
        multiplier = rstd if gamma is None else rstd * gamma
        addend = None if offset is None else -offset * multiplier
        if shift is not None:
            beta = _per_sample(shift, n, c, statistics)
            addend = beta if addend is None else addend.add_(beta)
        if addend is not None:
            torch.addcmul(addend.to(x.dtype), xc, multiplier.to(x.dtype), out=yv)
        else:
            torch.mul(xc, multiplier.to(x.dtype), out=yv)
        # x, not xc: a double backward (a gradient penalty through D) needs x's graph; the
        # backward recomputes xc, one pass
        ctx.save_for_backward(x, mean_rounded, offset, rstd, scale, shift)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, None, Tensor | None, Tensor | None]:
        x, mean_rounded, offset, rstd, scale, shift = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: this backward will be differentiated (R1, WGAN-GP)
            return _differentiable_backward(ctx, dy, x, scale, shift)
        n, c, h, w = x.shape
        gamma = _per_sample(scale, n, c, rstd.dtype)
        hw = h * w
        xc = _per_pixel(x) - mean_rounded
        dyv = _per_pixel(dy.to(xc.dtype).contiguous(memory_format=torch.channels_last))
        low_precision = rstd.dtype != xc.dtype
        # dy centred like x: dyc = dy - mean(dy)₁₆ and its residual mean. A gradient can have a
        # per-channel common mode much larger than its variation, which the norm's gradient
        # removes: from uncentred bf16 terms the small remainder would be lost to cancellation
        # (tests/test_layers.py, common mode 50 against a spread of 1).
        mean_dy_rounded = dyv.sum(1, keepdim=True).div_(hw)
        dyc = dyv - mean_dy_rounded
        residual = dyc.sum(1, keepdim=True).to(rstd.dtype).div_(hw) if low_precision else None
        sum_dy = mean_dy_rounded.to(rstd.dtype).mul_(hw)
        if residual is not None:
            sum_dy.add_(residual * hw)
        # Σ dy x̂ = rstd Σ dy (xc - offset) = rstd (Σ dyc xc - hw offset residual), as Σ xc = hw offset
        product = dyc * xc
        sum_dy_xhat = product.sum(1, keepdim=True).to(rstd.dtype)
        if offset is not None:
            sum_dy_xhat.sub_(offset * residual * hw)
        sum_dy_xhat.mul_(rstd)
        d_scale = _sum_to(sum_dy_xhat, scale) if ctx.needs_input_grad[2] else None
        d_shift = _sum_to(sum_dy, shift) if ctx.needs_input_grad[3] else None
        if not ctx.needs_input_grad[0]:
            return None, None, d_scale, d_shift
        # dx = a (dy - mean(dy)) + b (xc - offset) = a dyc + b xc + c_, with small c_
        a = rstd if gamma is None else rstd * gamma
        b = -a * rstd * (sum_dy_xhat / hw)  # not in place: the sums may be d_scale, d_shift
        dx = torch.addcmul(xc.new_zeros(()) if offset is None else (-a * residual - b * offset).to(xc.dtype),
                           xc, b.to(xc.dtype), out=product)  # the product is spent
        dx.addcmul_(dyc, a.to(xc.dtype))
        return dx.view(n, dy.shape[2], dy.shape[3], c).permute(0, 3, 1, 2), None, d_scale, d_shift


#: the dtypes the C kernels built with ``bf16.h`` store (the norm and resampling kernels), by the
#: suffix of their functions' names
C_KERNEL_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16"}


@functools.cache
def _norm_library() -> ctypes.CDLL | None:
    from gan_style.nn.native import c_source, compile_library

    library = compile_library("norm_kernels", c_source("bf16.h", "norm_kernels.c"))
    if library is not None:
        for suffix in C_KERNEL_DTYPES.values():
            forward, backward = (getattr(library, f"gs_instance_norm_{kind}_{suffix}") for kind in ("forward", "backward"))
            forward.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 3 + [ctypes.c_float, ctypes.c_int, ctypes.c_float]
            backward.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_float]
            forward.restype = backward.restype = None
    return library


@torch.compiler.assume_constant_result  # torch.compile: evaluated once, not traced (it may build the library)
def fused_norm_available() -> bool:
    """Whether the C instance norm (norm kernel "fused") is built here."""
    return _norm_library() is not None


def fused_norm_applies(x: Tensor) -> bool:
    """Whether ``x`` can be normalised by the C kernel: a channels-last fp32 or bf16 CPU tensor."""
    return x.device.type == "cpu" and x.dtype in C_KERNEL_DTYPES and is_channels_last(x) and fused_norm_available()


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _FusedInstanceNorm(torch.autograd.Function):
    """Instance norm of a channels-last fp32 or bf16 CPU tensor, every sample in one C call
    (``norm_kernels.c``): three passes forward (mean, centred variance, output), two backward,
    fp32 statistics and sums, the output rounded once. The same function as
    ``_ChannelsLastInstanceNorm`` and PyTorch's; without the per-sample batch-norm calls and
    their concatenation: forward and backward 1.3-2.2x faster than the batch-norm kernel per map
    (fp32 and bf16, 2 threads of an AMX Xeon), 0.95-0.97 of a CycleGAN or CUT step's time
    (docs/speed.md, session n). With ``activation_slope`` (not None) it is the norm followed by
    that (leaky) ReLU, applied in the output pass; the backward recomputes the norm's output from
    x and the statistics for the activation's mask. Its double backward goes through autograd (R1)."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: float, scale: Tensor | None, shift: Tensor | None, activation_slope: float | None = None) -> Tensor:
        n, c, h, w = x.shape
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean, rstd = x.new_empty((n, c), dtype=torch.float32), x.new_empty((n, c), dtype=torch.float32)
        gamma, beta = (_per_sample_fp32(a, n, c) for a in (scale, shift))
        getattr(_norm_library(), f"gs_instance_norm_forward_{C_KERNEL_DTYPES[x.dtype]}")(
            x.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(), _pointer(gamma), _pointer(beta), n, h * w, c, eps,
            activation_slope is not None, activation_slope or 0.0)
        ctx.save_for_backward(x, mean, rstd, scale, shift)
        ctx.eps, ctx.activation_slope = eps, activation_slope
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, None, Tensor | None, Tensor | None, None]:
        x, mean, rstd, scale, shift = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: this backward will be differentiated (R1, WGAN-GP)
            return (*_differentiable_backward(ctx, dy, x, scale, shift), None)
        n, c, h, w = x.shape
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last) if ctx.needs_input_grad[0] else None
        sum_dy, sum_dy_xhat = mean.new_empty((n, c)), mean.new_empty((n, c))
        slope = ctx.activation_slope
        # the shift only places the activation's kink
        gamma, beta = _per_sample_fp32(scale, n, c), None if slope is None else _per_sample_fp32(shift, n, c)
        getattr(_norm_library(), f"gs_instance_norm_backward_{C_KERNEL_DTYPES[x.dtype]}")(
            dy.data_ptr(), x.data_ptr(), mean.data_ptr(), rstd.data_ptr(), _pointer(gamma), _pointer(beta), _pointer(dx),
            sum_dy.data_ptr(), sum_dy_xhat.data_ptr(), n, h * w, c, slope is not None, slope or 0.0)
        d_scale = _sum_to(sum_dy_xhat.view(n, 1, c), scale) if ctx.needs_input_grad[2] else None
        d_shift = _sum_to(sum_dy.view(n, 1, c), shift) if ctx.needs_input_grad[3] else None
        return dx, None, d_scale, d_shift, None


def _per_sample_fp32(affine: Tensor | None, n: int, c: int) -> Tensor | None:
    """A (C,) or (N, C) scale or shift as a contiguous (N, C) fp32 tensor, for the C kernel."""
    return None if affine is None else affine.to(torch.float32).expand(n, c).contiguous()


def _differentiable_backward(ctx, dy: Tensor, x: Tensor, scale: Tensor | None, shift: Tensor | None) -> tuple[Tensor | None, None, Tensor | None, Tensor | None]:
    """The gradients as a graph of x, the affine map and dy (for a double backward): by autograd
    through PyTorch's NCHW group norm and activation, the same function."""
    wanted = [t is not None and needed for t, needed in zip((x, scale, shift), (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:4]))]
    with torch.enable_grad():
        y = instance_norm(x.contiguous(), ctx.eps, scale, shift)
        slope = getattr(ctx, "activation_slope", None)
        y = y if slope is None else F.leaky_relu(y, slope)
        grads = iter(torch.autograd.grad(y, [t for t, w in zip((x, scale, shift), wanted) if w], dy, create_graph=True))
    dx, d_scale, d_shift = (next(grads) if w else None for w in wanted)
    return dx, None, d_scale, d_shift


def _per_sample(affine: Tensor | None, n: int, c: int, dtype: torch.dtype) -> Tensor | None:
    """A (C,) or (N, C) scale or shift as (N, 1, C) in ``dtype``, to broadcast over (N, HW, C)."""
    return None if affine is None else affine.to(dtype).expand(n, c).reshape(n, 1, c)


def _sum_to(grad: Tensor, affine: Tensor) -> Tensor:
    """The (N, 1, C) gradient of a scale or shift, as that tensor's shape ((C,), (1, C) or (N, C))
    and dtype."""
    grad = grad.reshape(grad.shape[0], grad.shape[2])
    if affine.dim() == 1 or affine.shape[0] == 1:
        grad = grad.sum(0)
    return grad.reshape(affine.shape).to(affine.dtype)


def _per_pixel(x: Tensor) -> Tensor:
    """A channels-last (N, C, H, W) tensor as the (N, HW, C) view of its memory."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).view(n, h * w, c)


def norm_layer(kind: str, channels: int) -> nn.Module:
    """The per-channel normalisation named ``kind``.

    instance: InstanceNorm2d without affine parameters or running statistics (so it has no
    state-dict keys), biased variance, eps 1e-5 — the CycleGAN/CUT default.
    batch: BatchNorm2d with affine parameters and running statistics.
    none: identity (it still takes a slot in a Sequential, keeping layer indices stable).
    """
    if kind == "instance":
        return InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


def conv_bias_for(norm: str) -> bool:
    """Whether a conv followed by ``norm`` carries a bias, as in the reference implementations.

    Batch norm has its own shift, so the conv drops its bias. The reference decides this by
    checking for InstanceNorm, so with ``norm='none'`` the convs have no bias either — a quirk we
    keep so that its checkpoints load and parameter counts match.
    """
    return norm == "instance"


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise conv and linear weights (biases to 0) and batch-norm scales ~ N(1, gain).

    normal: N(0, gain) (CycleGAN, pix2pix); xavier: Glorot normal with ``gain`` (CUT);
    kaiming: He normal, fan-in; orthogonal: with ``gain``.
    """
    if init_type not in INIT_TYPES:
        raise ValueError(f"init_type must be one of {', '.join(INIT_TYPES)}, got {init_type!r}")

    def init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "normal":
                nn.init.normal_(module.weight, 0.0, gain)
            elif init_type == "xavier":
                nn.init.xavier_normal_(module.weight, gain=gain)
            elif init_type == "kaiming":
                nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")
            else:
                nn.init.orthogonal_(module.weight, gain=gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, gain)
            nn.init.zeros_(module.bias)

    net.apply(init_module)
    return net


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


ActivationFactory = Callable[[], nn.Module]
