"""SinCUT's networks (Park et al., "Contrastive learning for unpaired image-to-image translation",
ECCV 2020, section 5.3 / fig. 9): a StyleGAN2-style encoder-decoder generator and a StyleGAN2
discriminator, built from ``gan_style.nn.stylegan2`` (reference options ``--netG stylegan2
--netD stylegan2``).

Layouts and parameter names follow the reference (``encoder.convs.N``, ``decoder.convs.N``,
``convs.N``, ``final_conv``, ``final_linear``), so its checkpoints load unchanged. As in the
reference, these nets get no extra weight init (the equalised learning rate makes N(0, 1) weights
the right init) and their FusedLeakyReLU biases have shape (1, C, 1, 1).

The widths come from a per-resolution channel table; ``*.from_reference_options`` reproduces the
reference's table from ``--ngf`` / ``--ndf`` and the crop size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gan_style.nn.stylegan2 import ConvLayer, EqualLinear, ResBlock, StyledConv

BIAS_SHAPE = "nchw"  # CUT's FusedLeakyReLU stores its bias as (1, C, 1, 1)


def training_resolution(load_size: int, crop_size: int) -> int:
    """The power of two the reference sizes its tables by: 2^round(log2(min(load, crop)))."""
    return 2 ** round(math.log2(min(load_size, crop_size)))  # round half to even, like np.rint


@dataclass(frozen=True)
class SinCUTGeneratorSpec:
    """Encoder widths from the input resolution down (``channels[0]`` after the 1x1 RGB conv, one
    more per x2 down-sampling); the decoder mirrors them. ``n_blocks`` resolution-keeping residual
    blocks are split evenly between the encoder and the decoder (6 for ``stylegan2``, 2 for
    ``smallstylegan2``, which also turns the decoder's noise off)."""

    channels: tuple[int, ...] = (80, 160)
    n_blocks: int = 6
    inject_noise: bool = True
    in_channels: int = 3
    out_channels: int = 3

    @classmethod
    def from_reference_options(
        cls,
        ngf: int = 10,
        load_size: int = 1024,
        crop_size: int = 64,
        num_downsampling: int = 1,
        n_blocks: int = 6,
        inject_noise: bool = True,
    ) -> SinCUTGeneratorSpec:
        """SinCUT's defaults: ``--ngf 10 --stylegan2_G_num_downsampling 1 --load_size 1024 --crop_size 64``.
        Width at resolution r: round(16384 / r * ngf / 32), at most 512 for r <= 32."""
        multiplier = ngf / 32
        resolution = training_resolution(load_size, crop_size)

        def width(r: int) -> int:
            w = int(round(16384 / r * multiplier))
            return min(512, w) if r <= 32 else w

        channels = tuple(width(resolution // 2**i) for i in range(num_downsampling + 1))
        return cls(channels=channels, n_blocks=n_blocks, inject_noise=inject_noise)


class SinCUTEncoder(nn.Module):
    """``convs``: 0 Identity (so layer 0 is the input, as in CUT's nce_layers), 1 ConvLayer 1x1 to
    channels[0], then one down-sampling ResBlock per further width, then n_blocks // 2 ResBlocks."""

    def __init__(self, spec: SinCUTGeneratorSpec):
        super().__init__()
        channels = spec.channels
        layers: list[nn.Module] = [nn.Identity(), ConvLayer(spec.in_channels, channels[0], 1, bias_shape=BIAS_SHAPE)]
        layers += [ResBlock(c_in, c_out, downsample=True, bias_shape=BIAS_SHAPE) for c_in, c_out in zip(channels, channels[1:])]
        layers += [ResBlock(channels[-1], channels[-1], downsample=False, bias_shape=BIAS_SHAPE) for _ in range(spec.n_blocks // 2)]
        self.convs = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


class SinCUTDecoder(nn.Module):
    """``convs``: n_blocks // 2 ResBlocks, one up-sampling StyledConv (no style: modulation 1) per
    width, then a 1x1 ConvLayer to RGB **with** its leaky-ReLU activation (no tanh), as in the
    reference."""

    def __init__(self, spec: SinCUTGeneratorSpec):
        super().__init__()
        channels = spec.channels[::-1]
        layers: list[nn.Module] = [
            ResBlock(channels[0], channels[0], downsample=False, bias_shape=BIAS_SHAPE) for _ in range(spec.n_blocks // 2)
        ]
        layers += [
            StyledConv(c_in, c_out, 3, upsample=True, inject_noise=spec.inject_noise, bias_shape=BIAS_SHAPE)
            for c_in, c_out in zip(channels, channels[1:])
        ]
        layers.append(ConvLayer(channels[-1], spec.out_channels, 1, bias_shape=BIAS_SHAPE))
        self.convs = nn.Sequential(*layers)

    @property
    def styled_convs(self) -> list[StyledConv]:
        return [layer for layer in self.convs if isinstance(layer, StyledConv)]

    def forward(
        self, x: Tensor, noise: Sequence[Tensor | None] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        styled = self.styled_convs
        if noise is None:
            noise = [None] * len(styled)
        if len(noise) != len(styled):
            raise ValueError(f"the decoder has {len(styled)} noise inputs, got {len(noise)} noise tensors")
        noises = iter(noise)
        for layer in self.convs:
            x = layer(x, noise=next(noises), generator=generator) if isinstance(layer, StyledConv) else layer(x)
        return x


class SinCUTGenerator(nn.Module):
    """Encoder-decoder generator of SinCUT (``--netG stylegan2``); fully convolutional.

    Inputs whose sides are multiples of 2^num_downsampling give outputs of the same size. The
    decoder's StyledConvs add per-pixel noise (strength init 0): pass ``noise`` (one (B, 1, H, W)
    tensor or None per ``decoder.styled_convs`` entry) or a ``generator`` for reproducible draws.
    """

    def __init__(self, spec: SinCUTGeneratorSpec = SinCUTGeneratorSpec()):
        super().__init__()
        self.spec = spec
        self.encoder = SinCUTEncoder(spec)
        self.decoder = SinCUTDecoder(spec)
        self.size_multiple = 2 ** (len(spec.channels) - 1)

    def forward(
        self, x: Tensor, noise: Sequence[Tensor | None] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return self.decoder(self.encoder(x), noise, generator)

    def encode(self, x: Tensor, layers: Sequence[int]) -> list[Tensor]:
        """Outputs of ``encoder.convs`` layers with the given indices (CUT's ``encode_only``; layer 0
        is the input itself); the forward stops after the deepest one."""
        wanted = set(layers)
        if not wanted:
            return []
        if max(wanted) >= len(self.encoder.convs) or min(wanted) < 0:
            raise ValueError(f"encoder layers are 0..{len(self.encoder.convs) - 1}, got {sorted(wanted)}")
        features: dict[int, Tensor] = {}
        for index, layer in enumerate(self.encoder.convs):
            x = layer(x)
            if index in wanted:
                features[index] = x
            if index == max(wanted):
                break
        return [features[i] for i in layers]

    def feature_channels(self, layers: Sequence[int]) -> list[int]:
        """Channels of ``encode``'s features, without running the network."""
        widths = [self.spec.in_channels, self.spec.channels[0], *self.spec.channels[1:]]
        widths += [self.spec.channels[-1]] * (len(self.encoder.convs) - len(widths))
        return [widths[i] for i in layers]


@dataclass(frozen=True)
class SinCUTDiscriminatorSpec:
    """Widths from the input resolution down to 4x4 (``channels[0]`` at the input size, halving
    the resolution per entry); the input must be 4 * 2^(len(channels) - 1) pixels square."""

    channels: tuple[int, ...] = (32, 64, 128, 256, 384)
    in_channels: int = 3

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1)

    @classmethod
    def from_reference_options(cls, ndf: int = 8, load_size: int = 1024, crop_size: int = 64) -> SinCUTDiscriminatorSpec:
        """SinCUT's defaults ``--ndf 8 --load_size 1024 --crop_size 64``. Width at resolution r:
        int(16384 / r * ndf / 64), at most 384 for r <= 32."""
        multiplier = ndf / 64
        size = training_resolution(load_size, crop_size)

        def width(r: int) -> int:
            w = int(16384 // r * multiplier)
            return min(384, w) if r <= 32 else w

        return cls(channels=tuple(width(size // 2**i) for i in range(int(math.log2(size)) - 1)))


class SinCUTDiscriminator(nn.Module):
    """StyleGAN2 discriminator (``--netD stylegan2``): ConvLayer 1x1 from RGB, a down-sampling
    ResBlock per halving down to 4x4, a 3x3 ConvLayer, then two EqualLinear layers (the first with
    leaky ReLU) on the flattened 4x4 map. One logit per image, shape (B, 1). No minibatch
    standard deviation layer (the reference disables it)."""

    def __init__(self, spec: SinCUTDiscriminatorSpec = SinCUTDiscriminatorSpec()):
        super().__init__()
        self.spec = spec
        channels = spec.channels
        layers: list[nn.Module] = [ConvLayer(spec.in_channels, channels[0], 1, bias_shape=BIAS_SHAPE)]
        layers += [ResBlock(c_in, c_out, downsample=True, bias_shape=BIAS_SHAPE) for c_in, c_out in zip(channels, channels[1:])]
        self.convs = nn.Sequential(*layers)
        self.final_conv = ConvLayer(channels[-1], channels[-1], 3, bias_shape=BIAS_SHAPE)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[-1] * 4 * 4, channels[-1], activation=True),
            EqualLinear(channels[-1], 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        size = self.spec.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"this discriminator takes {size}x{size} images, got {tuple(x.shape[-2:])}")
        out = self.final_conv(self.convs(x))
        return self.final_linear(out.flatten(1))
