"""StyleGAN2 layers in plain PyTorch (Karras et al., "Analyzing and improving the image quality of
StyleGAN", CVPR 2020), no CUDA extension.

These are the layers of the widely used rosinality port, which SinCUT (CUT's single-image model)
and the Swapping Autoencoder build on. Their parameter names and shapes follow that port, so the
reference checkpoints load without renaming:

* ``EqualConv2d`` / ``EqualLinear``: the equalised learning rate (StyleGAN, Karras et al. 2018,
  section 4.1): weights are stored ~ N(0, 1) and scaled by 1/sqrt(fan_in) at run time.
* ``FusedLeakyReLU``: leaky_relu(x + b, 0.2) * sqrt(2), the bias folded into the activation.
* ``upfirdn2d`` / ``Blur``: upsample (zero insertion), pad, FIR filter, downsample; the
  anti-aliasing filters around every resolution change.
* ``ModulatedConv2d``: weight modulation and demodulation (StyleGAN2 eq. 1-3).
* ``NoiseInjection`` and ``StyledConv``: modulated conv, per-pixel noise, bias + activation.
* ``ConvLayer`` and ``ResBlock``: the discriminator / encoder blocks (StyleGAN2 fig. 7, "residual").

Initialisation is the layers' own (N(0, 1) weights, zero biases); the equalised learning rate
makes a separate init pass unnecessary.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gan_style.nn.fixed_filter import fixed_filter
from gan_style.nn.layers import ReflectionPad2d, WinogradCapable

DEFAULT_BLUR_TAPS = (1, 3, 3, 1)


# -- activations ----------------------------------------------------------------------------------
def _broadcast_bias(bias: Tensor, x: Tensor) -> Tensor:
    return bias.view(1, -1, *([1] * (x.ndim - 2))) if bias.ndim == 1 else bias


class _BiasLeakyReLU(torch.autograd.Function):
    """leaky_relu(x + b, slope) * gain that keeps only its output for the backward.

    Autograd's composition of the same ops keeps the pre-activation as well, a second full-size
    tensor per layer; with a positive gain the output's sign is the pre-activation's, so the
    derivative (gain where positive, gain * slope elsewhere, the slope at 0 as in leaky_relu)
    follows from the output alone: one pass of ``leaky_relu_backward`` on it, scaled in place. The
    output is usually the next convolution's saved input too, so a layer costs one tensor instead
    of two. ``inplace`` overwrites ``x`` (a temporary nothing else reads: a convolution's output)
    instead of allocating the output: fresh full-size tensors come from new pages the kernel zeroes,
    which cost several times the arithmetic here. The backward is made of differentiable ops (its
    derivative with respect to the output is zero almost everywhere), so R1's double backward
    through a discriminator works.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor | None, negative_slope: float, scale: float, inplace: bool) -> Tensor:
        out = _bias_leaky_relu(x, bias, negative_slope, scale, inplace)
        if inplace:
            ctx.mark_dirty(out)
        ctx.save_for_backward(out)
        ctx.negative_slope, ctx.scale = negative_slope, scale
        ctx.bias_shape = None if bias is None else bias.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        (out,) = ctx.saved_tensors
        grad_x = torch.ops.aten.leaky_relu_backward(grad, out, ctx.negative_slope, True).mul_(ctx.scale)
        grad_bias = None
        if ctx.needs_input_grad[1]:
            channels_dim = 1 if len(ctx.bias_shape) == 1 else None
            dims = [d for d in range(grad_x.ndim) if d != channels_dim and (channels_dim is not None or ctx.bias_shape[d] == 1)]
            grad_bias = grad_x.sum(dims).reshape(ctx.bias_shape)
        return grad_x, grad_bias, None, None, None


def _bias_leaky_relu(x: Tensor, bias: Tensor | None, negative_slope: float, scale: float, inplace: bool) -> Tensor:
    if bias is not None:
        out = x.add_(_broadcast_bias(bias, x)) if inplace else x + _broadcast_bias(bias, x)
    else:
        out = x if inplace else x.clone()
    return F.leaky_relu_(out, negative_slope).mul_(scale)


def fused_leaky_relu(
    x: Tensor, bias: Tensor | None, negative_slope: float = 0.2, scale: float = math.sqrt(2), inplace: bool = False
) -> Tensor:
    """leaky_relu(x + bias, 0.2) * sqrt(2); ``bias`` is broadcast along dim 1 (channels) when it
    is a vector, and added as is otherwise. The sqrt(2) gain keeps the activations' second
    moment roughly constant (He et al. 2015). When gradients are needed it keeps only its output
    for the backward (``_BiasLeakyReLU``). ``inplace`` writes the result into ``x``, as
    ``nn.ReLU(inplace=True)`` does: for a temporary no one else reads."""
    if bias is not None:
        # in x's dtype: under autocast an fp32 bias would promote the bf16 activation to fp32, a
        # full-size copy here and another one at the next convolution
        bias = bias.to(x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _BiasLeakyReLU.apply(x, bias, negative_slope, scale, inplace)
    return _bias_leaky_relu(x, bias, negative_slope, scale, inplace)


class FusedLeakyReLU(nn.Module):
    """Learned per-channel bias, then leaky ReLU 0.2 with gain sqrt(2).

    ``bias_shape`` only chooses how the bias is stored, so that both reference layouts load:
    ``"vector"`` is (C,) (rosinality, Swapping Autoencoder), ``"nchw"`` is (1, C, 1, 1) (CUT's
    copy used by SinCUT). Both add the same value to every pixel of a channel. ``inplace``
    overwrites the input (``fused_leaky_relu``): the layers that own the tensor before it
    (``ConvLayer``, ``StyledConv``) build it so.
    """

    def __init__(
        self, channels: int, bias_shape: Literal["vector", "nchw"] = "vector", negative_slope: float = 0.2, inplace: bool = False
    ):
        super().__init__()
        shapes = {"vector": (channels,), "nchw": (1, channels, 1, 1)}
        if bias_shape not in shapes:
            raise ValueError(f"bias_shape must be 'vector' or 'nchw', got {bias_shape!r}")
        self.bias = nn.Parameter(torch.zeros(shapes[bias_shape]))
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, inplace=self.inplace)


class ScaledLeakyReLU(nn.Module):
    """leaky_relu(x, 0.2) * sqrt(2) without a bias (``inplace`` as in ``FusedLeakyReLU``)."""

    def __init__(self, negative_slope: float = 0.2, inplace: bool = False):
        super().__init__()
        self.negative_slope = negative_slope
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, None, self.negative_slope, inplace=self.inplace)


# -- FIR filtering --------------------------------------------------------------------------------
def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, filter with ``kernel``, keep every ``down``-th sample.

    The same 2-D ``kernel`` (kh, kw) is applied to every channel, as a true convolution (the kernel
    is flipped, which matters only for asymmetric kernels). ``pad`` = (before, after) on both axes;
    a negative value crops. Output size per axis: (n * up + pad[0] + pad[1] - k) // down + 1.
    The filter is a constant: its backward is its adjoint (``gan_style.nn.fixed_filter``).
    """
    batch, channels, height, width = x.shape
    if up > 1:
        # each sample followed by up - 1 zeros
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(batch, channels, height * up, width * up)
    before, after = pad
    # The filter zero-pads the symmetric part itself: F.pad would zero-fill a whole new tensor and
    # copy the input into it (and its backward copy the gradient out), 0.45-0.6 of the blur's time
    # on the Swapping Autoencoder's maps. Only an asymmetric excess, or a crop, is padded apart.
    common = max(min(before, after), 0)
    if (before, after) != (common, common):
        x = F.pad(x, (before - common, after - common, before - common, after - common))
    weight = torch.flip(kernel, (0, 1)).expand(channels, 1, *kernel.shape)
    return fixed_filter(x, weight, stride=down, padding=common)


def make_blur_kernel(taps: Sequence[float], gain: float = 1.0) -> Tensor:
    """The separable filter outer(taps, taps), normalised to sum ``gain``."""
    row = torch.tensor(list(taps), dtype=torch.float32)
    kernel = torch.outer(row, row)
    return kernel / kernel.sum() * gain


class Blur(nn.Module):
    """FIR low-pass filter (zero padding ``pad``). After a x2 upsampling by zero insertion only a
    quarter of the samples are non-zero, hence ``upsample_factor`` scales the kernel by factor^2.
    The kernel is a registered buffer named ``kernel`` (it is in the reference checkpoints)."""

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps, upsample_factor**2))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


def downsampling_blur_pad(taps: int, kernel_size: int, factor: int = 2) -> tuple[int, int]:
    """Blur padding before a stride-``factor`` conv, so that the output is exactly n / factor."""
    p = (taps - factor) + (kernel_size - 1)
    return ((p + 1) // 2, p // 2)


def upsampling_blur_pad(taps: int, kernel_size: int, factor: int = 2) -> tuple[int, int]:
    """Blur padding after a stride-``factor`` transposed conv, so that the output is exactly n * factor."""
    p = (taps - factor) - (kernel_size - 1)
    return ((p + 1) // 2 + factor - 1, p // 2 + 1)


# -- equalised learning rate ----------------------------------------------------------------------
class EqualConv2d(WinogradCapable, nn.Module):
    """Conv2d whose N(0, 1) weight is scaled by 1/sqrt(in_channels * k * k) at run time; stride 1
    can run by Winograd in fp32 steps, larger strides with their weight gradient by im2col
    (``WinogradCapable``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0, bias: bool = True
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight * self.scale
        if self.stride == 1:
            return self.stride1_conv2d(x, weight, self.bias, self.padding)
        return self.strided_conv2d(x, weight, self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        out_channels, in_channels, k, _ = self.weight.shape
        return f"{in_channels}, {out_channels}, {k}, stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate.

    ``lr_mul`` scales the effective learning rate (StyleGAN's mapping network uses 0.01): the
    stored weight is N(0, 1/lr_mul) and multiplied by lr_mul/sqrt(in) at run time, the bias
    multiplied by lr_mul. ``activation=True`` applies ``fused_leaky_relu`` with the bias.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: bool = False,
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"{in_features}, {out_features}, lr_mul={self.lr_mul}, activation={self.activation}"


# -- modulated convolution ------------------------------------------------------------------------
class ModulatedConv2d(WinogradCapable, nn.Module):
    """StyleGAN2's modulated convolution (eq. 1-3), with optional x2 up- or down-sampling.

    A style vector ``w`` gives per-input-channel scales s = A(w) (``modulation``, an EqualLinear
    initialised to output 1); the weight becomes w'_ijk = s_i * w_ijk (eq. 1) and, with
    ``demodulate``, w''_ijk = w'_ijk / sqrt(sum_ik w'_ijk^2 + 1e-8) (eq. 3), one weight per sample.
    With ``style_dim=None`` there is no modulation (s = 1; SinCUT's decoder): only the
    demodulation normalises the shared weight.

    Up-sampling is a stride-2 transposed conv followed by a blur, down-sampling a blur followed by
    a stride-2 conv. The weight is stored as (1, out, in, k, k) like the reference.

    ``modulate_input=True`` is the Swapping Autoencoder's variant: the style scales the *input*
    channels, s <- s / sqrt(mean_i s_i^2 + 1e-8) when demodulating, and the shared weight is
    demodulated by its own norm (without the style). Not StyleGAN2's eq. 3 (the style does not
    enter the normaliser), but one ordinary convolution then serves the whole batch, and can run by
    Winograd in fp32 steps (``WinogradCapable``), as can an unmodulated one.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int | None = None,
        demodulate: bool = True,
        upsample: bool = False,
        downsample: bool = False,
        blur_taps: Sequence[float] = DEFAULT_BLUR_TAPS,
        eps: float = 1e-8,
        modulate_input: bool = False,
    ):
        super().__init__()
        if upsample and downsample:
            raise ValueError("a ModulatedConv2d up- or down-samples, not both")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.upsample = upsample
        self.downsample = downsample
        self.demodulate = demodulate
        self.eps = eps
        self.modulate_input = modulate_input
        if upsample:
            self.blur = Blur(blur_taps, upsampling_blur_pad(len(blur_taps), kernel_size), upsample_factor=2)
        elif downsample:
            self.blur = Blur(blur_taps, downsampling_blur_pad(len(blur_taps), kernel_size))
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0) if style_dim else None

    def modulated_weight(self, style: Tensor | None) -> Tensor:
        """The (B or 1, out, in, k, k) weight after modulation and demodulation."""
        weight = self.scale * self.weight
        if style is not None:
            if self.modulation is None:
                raise ValueError("this ModulatedConv2d was built without a style input (style_dim=None)")
            scales = self.modulation(style)  # (B, in)
            weight = weight * rearrange(scales, "b i -> b 1 i 1 1")
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + self.eps)
        return weight

    def forward(self, x: Tensor, style: Tensor | None = None) -> Tensor:
        if style is None and self.modulation is not None:
            raise ValueError("this ModulatedConv2d needs a style vector")
        if self.modulate_input and style is not None and self.modulation is not None:
            scales = self.modulation(style)  # (B, in)
            if self.demodulate:
                scales = scales * torch.rsqrt(scales.pow(2).mean(dim=1, keepdim=True) + self.eps)
            x = x * rearrange(scales, "b i -> b i 1 1")
            style = None  # the weight is then shared: demodulated by its own norm only
        weight = self.modulated_weight(style)
        batch = x.shape[0]
        if weight.shape[0] == 1:
            # one weight for the whole batch: an ordinary convolution
            groups = 1
            weight = weight[0]
        else:
            # one weight per sample: fold the batch into the channels of a grouped convolution
            groups = batch
            x = rearrange(x, "b c h w -> 1 (b c) h w")
            weight = rearrange(weight, "b o i kh kw -> (b o) i kh kw")

        if self.upsample:
            # conv_transpose2d takes (in, out / groups, k, k)
            weight = rearrange(weight, "(g o) i kh kw -> (g i) o kh kw", g=groups)
            out = F.conv_transpose2d(x, weight, stride=2, padding=0, groups=groups)
        elif self.downsample and groups == 1:
            out = self.strided_conv2d(self.blur(x), weight, None, 2, 0)
        elif self.downsample:
            out = F.conv2d(self.blur(x), weight, stride=2, padding=0, groups=groups)
        elif groups == 1:
            out = self.stride1_conv2d(x, weight, None, self.padding)
        else:
            out = F.conv2d(x, weight, padding=self.padding, groups=groups)

        if groups > 1:
            out = rearrange(out, "1 (b c) h w -> b c h w", b=batch)
        if self.upsample:
            out = self.blur(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, {self.kernel_size}, style_dim="
            f"{None if self.modulation is None else self.modulation.weight.shape[1]}, demodulate={self.demodulate}, "
            f"upsample={self.upsample}, downsample={self.downsample}"
        )


class NoiseInjection(nn.Module):
    """x + strength * noise, with one learned ``weight`` (the strength, init 0) per layer.

    The noise (B, 1, H, W) ~ N(0, 1) is shared by all channels. It is drawn anew at every call,
    from ``generator`` when one is given, unless it is passed in explicitly (for reproducible
    outputs). The layer keeps no noise between calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        if noise is None:
            batch, _, height, width = x.shape
            device = generator.device if generator is not None else x.device
            noise = torch.randn(batch, 1, height, width, generator=generator, device=device, dtype=x.dtype).to(x.device)
        return x + self.weight.to(x.dtype) * noise  # x's dtype (see fused_leaky_relu)


class StyledConv(nn.Module):
    """ModulatedConv2d -> NoiseInjection -> FusedLeakyReLU (the StyleGAN2 synthesis layer).

    ``inject_noise=False`` keeps the (unused) ``noise`` parameter so that checkpoints load either way.
    ``modulate_input`` selects the Swapping Autoencoder's modulation (see ModulatedConv2d).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int | None = None,
        upsample: bool = False,
        blur_taps: Sequence[float] = DEFAULT_BLUR_TAPS,
        demodulate: bool = True,
        inject_noise: bool = True,
        bias_shape: Literal["vector", "nchw"] = "vector",
        modulate_input: bool = False,
    ):
        super().__init__()
        self.inject_noise = inject_noise
        self.conv = ModulatedConv2d(
            in_channels, out_channels, kernel_size, style_dim, demodulate=demodulate, upsample=upsample, blur_taps=blur_taps,
            modulate_input=modulate_input,
        )
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels, bias_shape=bias_shape, inplace=True)  # on the conv's (+ noise's) fresh output

    def forward(
        self,
        x: Tensor,
        style: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        out = self.conv(x, style)
        if self.inject_noise:
            out = self.noise(out, noise, generator)
        return self.activate(out)


# -- discriminator / encoder blocks ---------------------------------------------------------------
def residual_sum(residual: Tensor, skip: Tensor) -> Tensor:
    """(residual + skip) / sqrt(2), keeping the variance of the sum (StyleGAN2 fig. 7b); the
    division in place on the fresh sum (one full-size tensor instead of two)."""
    return torch.add(residual, skip).div_(math.sqrt(2))


class ConvLayer(nn.Sequential):
    """[Blur if ``downsample``] + EqualConv2d + activation, as one Sequential (reference key layout:
    ``0.weight``, ``1.bias`` without down-sampling; ``0.kernel``, ``1.weight``, ``2.bias`` with it).

    With an activation the bias lives in the FusedLeakyReLU (the conv has none); ``bias=False``
    with an activation gives a bias-free ScaledLeakyReLU; without an activation the conv carries
    the bias (if any). Down-sampling blurs first and then convolves with stride 2 and no padding;
    otherwise the conv zero-pads by ``padding`` (default k // 2; the Swapping Autoencoder's patch
    discriminator ends with a 3x3 conv without padding).

    ``layout="named"`` names the sub-modules ``Blur``, ``Conv``, ``Act`` instead of 0, 1, 2, as the
    Swapping Autoencoder's checkpoints do (``...Conv.weight``, ``...Act.bias``, ``...Blur.kernel``).

    ``pad_mode="reflect"`` pads by reflection instead of zeros (the Swapping Autoencoder's encoder,
    against border artefacts in the structure code): a parameter-free ``ReflectionPad2d`` (``Pad``)
    comes first and takes over the blur's or the conv's padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        downsample: bool = False,
        blur_taps: Sequence[float] = DEFAULT_BLUR_TAPS,
        bias: bool = True,
        activate: bool = True,
        bias_shape: Literal["vector", "nchw"] = "vector",
        padding: int | None = None,
        layout: Literal["index", "named"] = "index",
        pad_mode: Literal["zeros", "reflect"] = "zeros",
    ):
        if pad_mode not in ("zeros", "reflect"):
            raise ValueError(f"pad_mode must be 'zeros' or 'reflect', got {pad_mode!r}")
        if layout not in ("index", "named"):
            raise ValueError(f"layout must be 'index' or 'named', got {layout!r}")
        if downsample and padding is not None:
            raise ValueError("a down-sampling ConvLayer pads in its blur; padding applies only without down-sampling")
        layers: list[tuple[str, nn.Module]] = []
        blur_pad = downsampling_blur_pad(len(blur_taps), kernel_size)
        stride, padding = (2, 0) if downsample else (1, kernel_size // 2 if padding is None else padding)
        if pad_mode == "reflect":
            before, after = blur_pad if downsample else (padding, padding)
            layers.append(("Pad", ReflectionPad2d((before, after, before, after))))
            blur_pad, padding = (0, 0), 0
        if downsample:
            layers.append(("Blur", Blur(blur_taps, blur_pad)))
        layers.append(
            ("Conv", EqualConv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias and not activate))
        )
        if activate:
            # in place: the convolution's output is a temporary nothing else reads
            act = FusedLeakyReLU(out_channels, bias_shape=bias_shape, inplace=True) if bias else ScaledLeakyReLU(inplace=True)
            layers.append(("Act", act))
        if layout == "named":
            super().__init__(OrderedDict(layers))
        else:
            super().__init__(*(module for _, module in layers))


class ResBlock(nn.Module):
    """Residual block: out = (conv2(conv1(x)) + skip(x)) / sqrt(2) (StyleGAN2 fig. 7b).

    conv1 = 3x3 ConvLayer (in -> in), conv2 = 3x3 ConvLayer (in -> out, down-sampling if asked);
    skip = 1x1 ConvLayer without bias or activation (down-sampling if asked), or the identity when
    the channels match and the resolution is kept (``always_skip_conv=True`` keeps the 1x1 conv
    then too, as the Swapping Autoencoder's copy does). The 1/sqrt(2) keeps the variance of the sum.
    ``layout`` names the ConvLayers' sub-modules and ``pad_mode`` pads conv1 and conv2 (see
    ConvLayer; the skip keeps zero padding, as in the Swapping Autoencoder's encoder).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample: bool = True,
        blur_taps: Sequence[float] = DEFAULT_BLUR_TAPS,
        bias_shape: Literal["vector", "nchw"] = "vector",
        always_skip_conv: bool = False,
        layout: Literal["index", "named"] = "index",
        pad_mode: Literal["zeros", "reflect"] = "zeros",
    ):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, in_channels, 3, bias_shape=bias_shape, layout=layout, pad_mode=pad_mode)
        self.conv2 = ConvLayer(
            in_channels, out_channels, 3, downsample=downsample, blur_taps=blur_taps, bias_shape=bias_shape, layout=layout,
            pad_mode=pad_mode,
        )
        if in_channels != out_channels or downsample or always_skip_conv:
            self.skip: nn.Module = ConvLayer(
                in_channels, out_channels, 1, downsample=downsample, blur_taps=blur_taps, bias=False, activate=False, layout=layout
            )
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return residual_sum(self.conv2(self.conv1(x)), self.skip(x))
