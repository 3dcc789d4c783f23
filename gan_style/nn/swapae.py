"""The Swapping Autoencoder's encoder E and generator G (Park et al., "Swapping Autoencoder for Deep
Image Manipulation", NeurIPS 2020, section 3 and appendix B.1), built from ``gan_style.nn.stylegan2``.

* ``SwapAEEncoder``: E(x) = (z_s, z_t). A shared residual trunk down-samples the image; one head
  keeps the spatial extent and maps it to the few-channel **structure** code z_s, the other
  down-samples further and average-pools everything into the **texture** vector z_t (section 3.1:
  the texture code has no spatial extent, so it can only carry what is the same everywhere).
* ``SwapAEGenerator``: G(z_s, z_t). The structure code is modulated by the texture, refined by
  resolution-keeping residual blocks, then up-sampled by residual blocks; every convolution is
  modulated by z_t (StyleGAN2-style, with this model's input-modulation variant) and gets
  per-pixel noise.

Both codes are L2-normalised (by E, and again by G). Module and parameter names follow the
reference checkpoints (``E.FromRGB.Conv.weight``, ``G.HeadResnetBlock0.conv1.conv.weight``, ...), so
``gan_style.hub.swapae`` loads them without renaming. The widths follow the reference's rules,
checked against its parameter counts (see the specs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from gan_style.nn.stylegan2 import (
    DEFAULT_BLUR_TAPS,
    Blur,
    ConvLayer,
    EqualConv2d,
    EqualLinear,
    FusedLeakyReLU,
    ModulatedConv2d,
    ResBlock,
    StyledConv,
    residual_sum,
    upsampling_blur_pad,
)

LAYOUT = "named"  # the reference's ConvLayers name their parts Blur / Conv / Act
ANTIALIAS_TAPS = (1, 2, 1)  # E's down-sampling low-pass (``--use_antialias``)
NO_BLUR = (1,)  # a trivial filter: plain strided convolution


def normalize_code(code: Tensor, eps: float = 1e-8) -> Tensor:
    """v / ||v|| over the channels (dim 1), as E and G apply to both codes (section 3.1, appendix B.1)."""
    return code * torch.rsqrt(code.pow(2).sum(dim=1, keepdim=True) + eps)


# -- encoder E ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwapAEEncoderSpec:
    """Options of E (``--netE StyleGAN2Resnet``); the defaults are the reference's at crop 256
    (30,584,872 parameters).

    Width after the i-th halving: nc(i) = min(global_code_ch, round(32 * nc_steepness^i * scale_capacity)),
    i.e. 32, 64, ..., 2048 at the defaults and 8, 16, 32, 64, 64 for the tiny golden (scale 0.25,
    global_code_ch 64). The reference does not document ``nc_steepness``; reading it as the growth
    factor per halving reproduces both the tiny golden's widths and the full-size count. The first
    ``num_downsampling_sp`` halvings are shared residual blocks, the next ``num_downsampling_gl``
    belong to the texture head. ``antialias`` blurs with [1, 2, 1] before each strided conv of the
    trunk (False: no blur, an assumption: no golden covers it).
    """

    spatial_code_ch: int = 8
    global_code_ch: int = 2048
    scale_capacity: float = 1.0
    num_downsampling_sp: int = 4
    num_downsampling_gl: int = 2
    nc_steepness: float = 2.0
    antialias: bool = True

    def channels(self, i: int) -> int:
        """Width after ``i`` halvings (``channels(0)`` after the 1x1 conv from RGB)."""
        return min(self.global_code_ch, round(32 * self.nc_steepness**i * self.scale_capacity))

    @property
    def min_texture_side(self) -> int:
        """The smallest side E's texture head runs on: its unpadded stride-2 convolutions need
        2^(gl+1) - 1 pixels of the trunk (7 at 1/16 of the side for the defaults: 112 pixels)."""
        return 2**self.num_downsampling_sp * (2 ** (self.num_downsampling_gl + 1) - 1)


def fit_texture_image(images: Tensor, spec: SwapAEEncoderSpec) -> Tensor:
    """``images`` enlarged (bilinear, aspect kept) when their short side is below what E's texture
    head needs (``spec.min_texture_side``); as they are otherwise."""
    least = spec.min_texture_side
    if min(images.shape[-2:]) >= least:
        return images
    return F.interpolate(images, scale_factor=least / min(images.shape[-2:]), mode="bilinear", align_corners=False)


def strided_conv_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 stride-2 conv without padding + bias + leaky ReLU (the texture head's halvings: 16 -> 7 -> 3).
    The reference keeps a trivial 1x1 blur kernel (``Blur.kernel`` = [[1]]) there; so do we, for the keys."""
    return nn.Sequential(
        OrderedDict(
            Blur=Blur(NO_BLUR, (0, 0)),
            Conv=EqualConv2d(in_channels, out_channels, 3, stride=2, padding=0, bias=False),
            Act=FusedLeakyReLU(out_channels, inplace=True),  # on the convolution's fresh output
        )
    )


class SwapAEEncoder(nn.Module):
    """E (section 3.1, appendix B.1): image (B, 3, H, W) -> structure code (B, spatial_code_ch,
    H / 2^sp, W / 2^sp) and texture code (B, global_code_ch), both L2-normalised over channels.

    ``FromRGB`` (1x1) -> ``DownToSpatialCode`` (sp residual halvings, reflection padding, anti-aliased)
    = the shared trunk; ``ToSpatialCode``: two 1x1 convs (the last linear) to the structure code;
    ``DownToGlobalCode`` (gl strided convs) -> spatial mean -> ``ToGlobalCode`` (linear) to the texture code.
    """

    def __init__(self, spec: SwapAEEncoderSpec = SwapAEEncoderSpec()):
        super().__init__()
        self.spec = spec
        nc, sp, gl = spec.channels, spec.num_downsampling_sp, spec.num_downsampling_gl
        taps = ANTIALIAS_TAPS if spec.antialias else NO_BLUR
        self.FromRGB = ConvLayer(3, nc(0), 1, layout=LAYOUT)
        # blocks are named by the down-scaling factor of their input
        self.DownToSpatialCode = nn.Sequential(
            OrderedDict(
                (f"ResBlockDownBy{2**i}", ResBlock(nc(i), nc(i + 1), blur_taps=taps, layout=LAYOUT, pad_mode="reflect"))
                for i in range(sp)
            )
        )
        self.ToSpatialCode = nn.Sequential(
            ConvLayer(nc(sp), nc(sp), 1, layout=LAYOUT),
            ConvLayer(nc(sp), spec.spatial_code_ch, 1, activate=False, layout=LAYOUT),
        )
        self.DownToGlobalCode = nn.Sequential(
            OrderedDict((f"ConvLayerDownBy{2**i}", strided_conv_layer(nc(i), nc(i + 1))) for i in range(sp, sp + gl))
        )
        self.ToGlobalCode = nn.Sequential(EqualLinear(nc(sp + gl), spec.global_code_ch))

    def trunk(self, x: Tensor) -> Tensor:
        """The shared features both codes are computed from (B, nc(sp), H / 2^sp, W / 2^sp)."""
        return self.DownToSpatialCode(self.FromRGB(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.trunk(x)
        structure = self.ToSpatialCode(features)
        texture = reduce(self.DownToGlobalCode(features), "b c h w -> b c", "mean")
        return normalize_code(structure), normalize_code(self.ToGlobalCode(texture))

    def extract_features(self, x: Tensor) -> Tensor:
        """Texture features with spatial extent (the reference's ``extract_features``): the first
        texture-head conv on the trunk reflect-padded by 1 on the left/top (so the stride-2 grid is
        centred), bilinearly resized to the grid that conv gives without the padding
        ((n - 3) // 2 + 1 per side, 7x7 for a 16x16 trunk: the golden's case)."""
        if not len(self.DownToGlobalCode):
            raise ValueError("extract_features needs at least one texture down-sampling (num_downsampling_gl >= 1)")
        features = self.trunk(x)
        size = tuple((n - 3) // 2 + 1 for n in features.shape[-2:])
        out = self.DownToGlobalCode[0](F.pad(features, (1, 0, 1, 0), mode="reflect"))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


# -- generator G ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SwapAEGeneratorSpec:
    """Options of G (``--netG StyleGAN2Resnet``); the defaults are the reference's at crop 256
    (25,064,743 parameters). ``num_downsampling`` is E's ``num_downsampling_sp`` (G undoes it).

    Widths: nf(j) = int(min(512, 128 * 2^(num_downsampling - j)) * scale_capacity) after j up-samplings
    (512, 512, 512, 256, 128 at the defaults; 64, 32, 16 for the tiny golden: scale 0.125, 2 halvings);
    the i-th resolution-keeping block outputs max(8, round((i + 1) / 2 * nf(0))) (256, 512; 32, 64).
    ``use_noise`` switches the noise of the up-sampling blocks only: the reference's head blocks
    always inject noise. ``up_block_names_from`` is the number in the first up-sampling block's
    name (``UpsamplingResBlock16``, then doubling): the structure code's side at the training crop
    in every configuration checked; only the parameter names depend on it.
    """

    spatial_code_ch: int = 8
    global_code_ch: int = 2048
    scale_capacity: float = 1.0
    num_base_resnet_layers: int = 2
    num_downsampling: int = 4
    use_noise: bool = True
    up_block_names_from: int = 16

    def channels(self, j: int) -> int:
        """Width after ``j`` up-samplings."""
        return int(min(512, 128 * 2 ** (self.num_downsampling - j)) * self.scale_capacity)

    def head_channels(self, i: int) -> int:
        """Output width of the ``i``-th resolution-keeping block."""
        return max(8, round((i + 1) / 2 * self.channels(0)))


class SpatialCodeModulation(nn.Module):
    """The texture code's first effect: a per-channel affine map of the structure code, z_s * A(z_t) + B(z_t)."""

    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.scale = EqualLinear(style_dim, channels)
        self.bias = EqualLinear(style_dim, channels)

    def forward(self, structure: Tensor, texture: Tensor) -> Tensor:
        scale, bias = (rearrange(f(texture), "b c -> b c 1 1") for f in (self.scale, self.bias))
        return structure * scale + bias


NoiseInputs = Sequence[Tensor | None]


class ModulatedResBlock(nn.Module):
    """G's residual block (appendix B.1): res = two 3x3 StyledConvs (the first up-samples x2 if
    ``upsample``), out = (skip(x) + res(x)) / sqrt(2).

    Resolution-keeping (``HeadResnetBlock*``): skip = 1x1 conv without bias or activation when the
    width changes, else the identity. Up-sampling (``UpsamplingResBlock*``): skip = 1x1 conv with
    bias and leaky ReLU when the width changes (else the identity; this is what the reference's
    full-size parameter count requires), then a bilinear x2 (align_corners False).
    """

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool, inject_noise: bool = True):
        super().__init__()
        self.upsample = upsample
        self.conv1 = StyledConv(in_channels, out_channels, 3, style_dim, upsample, inject_noise=inject_noise, modulate_input=True)
        self.conv2 = StyledConv(out_channels, out_channels, 3, style_dim, inject_noise=inject_noise, modulate_input=True)
        if in_channels == out_channels:
            self.skip: nn.Module = nn.Identity()
        else:
            self.skip = ConvLayer(in_channels, out_channels, 1, bias=upsample, activate=upsample, layout=LAYOUT)

    def forward(self, x: Tensor, style: Tensor, noise: NoiseInputs = (None, None), generator: torch.Generator | None = None) -> Tensor:
        skip = self.skip(x)
        if self.upsample:
            skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
        res = self.conv2(self.conv1(x, style, noise[0], generator), style, noise[1], generator)
        return residual_sum(res, skip)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation, plus a bias (StyleGAN2's tRGB). The
    reference also registers an up-sampling blur (``upsample.kernel``) that G never uses; it is
    kept so that the keys match."""

    def __init__(self, in_channels: int, style_dim: int, out_channels: int = 3):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.upsample = Blur(DEFAULT_BLUR_TAPS, upsampling_blur_pad(len(DEFAULT_BLUR_TAPS), 1), upsample_factor=2)
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, style_dim, demodulate=False, modulate_input=True)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        return self.conv(x, style) + self.bias


class SwapAEGenerator(nn.Module):
    """G (section 3.1, appendix B.1): (structure code, texture code) -> image (B, 3, H, W), no tanh.

    ``SpatialCodeModulation`` -> ``HeadResnetBlock0..`` (resolution-keeping) -> ``UpsamplingResBlock{r}``
    (one per halving of E) -> ``ToRGB``; the texture code modulates every convolution.

    Noise (per StyledConv, in the order of ``noise_layers``): ``fixed_noise`` gives one map per
    StyledConv ((1 or B, 1, h, w) at that layer's resolution; a None entry is drawn as below, and
    entries of layers without noise are ignored), else the maps are drawn from ``noise`` (a torch.Generator, on its own device, then
    moved to the input's) or, without one, from torch's global RNG.
    """

    def __init__(self, spec: SwapAEGeneratorSpec = SwapAEGeneratorSpec()):
        super().__init__()
        self.spec = spec
        style = spec.global_code_ch
        self.SpatialCodeModulation = SpatialCodeModulation(style, spec.spatial_code_ch)
        self.block_names: list[str] = []
        width = spec.spatial_code_ch
        for i in range(spec.num_base_resnet_layers):
            self._add_block(f"HeadResnetBlock{i}", ModulatedResBlock(width, spec.head_channels(i), style, upsample=False))
            width = spec.head_channels(i)
        for j in range(spec.num_downsampling):
            block = ModulatedResBlock(width, spec.channels(j + 1), style, upsample=True, inject_noise=spec.use_noise)
            self._add_block(f"UpsamplingResBlock{spec.up_block_names_from * 2**j}", block)
            width = spec.channels(j + 1)
        self.ToRGB = ToRGB(width, style)

    def _add_block(self, name: str, block: ModulatedResBlock) -> None:
        self.add_module(name, block)
        self.block_names.append(name)

    def draw_noise(self, size: tuple[int, int], generator: torch.Generator | None = None) -> list[Tensor | None]:
        """One (1, 1, h, w) N(0, 1) map per StyledConv, for a structure code of spatial ``size``,
        drawn in the order the forward pass draws them (None for a layer without noise); on the
        generator's device. Passed as ``fixed_noise``, they are shared by a batch, so that an
        image's output does not depend on the batch it is in (and a tiled pass can cut them up)."""
        device = generator.device if generator is not None else None
        height, width = size
        maps: list[Tensor | None] = []
        for name in self.block_names:
            block = getattr(self, name)
            if block.upsample:
                height, width = 2 * height, 2 * width
            for conv in (block.conv1, block.conv2):
                maps.append(torch.randn(1, 1, height, width, generator=generator, device=device) if conv.inject_noise else None)
        return maps

    def seeded(self, structure: Tensor, texture: Tensor, seed: int = 0) -> Tensor:
        """G(structure, texture) with the noise ``draw_noise`` draws from ``seed`` (inference: the
        same noise for every image of the batch and for every texture, so sequences do not flicker)."""
        noise = self.draw_noise(structure.shape[-2:], torch.Generator().manual_seed(seed))
        return self(structure, texture, fixed_noise=[n if n is None else n.to(structure) for n in noise])

    @property
    def noise_layers(self) -> list[str]:
        """The names of the noise inputs, in the order ``fixed_noise`` takes them."""
        return [f"{name}.{conv}.noise" for name in self.block_names for conv in ("conv1", "conv2")]

    def forward(
        self,
        structure: Tensor,
        texture: Tensor,
        noise: torch.Generator | None = None,
        fixed_noise: Sequence[Tensor | None] | None = None,
    ) -> Tensor:
        n_layers = 2 * len(self.block_names)
        if fixed_noise is not None and len(fixed_noise) != n_layers:
            raise ValueError(f"fixed_noise needs one map per StyledConv ({n_layers}: {self.noise_layers}), got {len(fixed_noise)}")
        noises: NoiseInputs = list(fixed_noise) if fixed_noise is not None else [None] * n_layers
        structure, texture = normalize_code(structure), normalize_code(texture)
        x = self.SpatialCodeModulation(structure, texture)
        for k, name in enumerate(self.block_names):
            x = getattr(self, name)(x, texture, noises[2 * k : 2 * k + 2], noise)
        return self.ToRGB(x, texture)
