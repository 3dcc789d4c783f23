"""The Swapping Autoencoder's two discriminators (Park et al., "Swapping Autoencoder for Deep Image
Manipulation", NeurIPS 2020, section 3.2 and appendix B.1) and the random crops fed to the second.

* ``SwapAEDiscriminator`` (D): the StyleGAN2 image discriminator of the GAN loss (eq. 2), which
  keeps reconstructions and swapped hybrids realistic.
* ``PatchCooccurrenceDiscriminator`` (Dpatch): the co-occurrence patch discriminator of eq. 3. A
  patch of a hybrid image is judged together with a set of reference patches of the texture
  source, so that the texture code must carry the joint patch statistics of its image.
* ``random_crops``: the patches of eq. 3 (appendix B.1: 1/8 to 1/4 of the image side per axis,
  resized to the patch size).

Both nets are built from ``gan_style.nn.stylegan2`` with the reference's key layout (``Conv``,
``Act``, ``Blur`` sub-modules; D wrapped under ``stylegan2_D``; FusedLeakyReLU biases (C,)), so
the ``D.*`` / ``Dpatch.*`` entries of a reference checkpoint load once the prefix is stripped.
The channel tables reproduce the reference's parameter counts (see the specs).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, reduce, repeat
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gan_style.nn.stylegan2 import ConvLayer, EqualLinear, ResBlock

LAYOUT = "named"  # the reference's ConvLayers name their parts Blur / Conv / Act


def _block_name(resolution: int, offset: int, largest_indexed: int) -> str:
    """Reference name of the down-sampling block at ``resolution``: str(offset - log2(res)), or
    ``"RxR"`` above ``largest_indexed`` (where the index would run into ``convs.0`` and below)."""
    if resolution > largest_indexed:
        return f"{resolution}x{resolution}"
    return str(offset - int(math.log2(resolution)))


# -- image discriminator D ------------------------------------------------------------------------
@dataclass(frozen=True)
class SwapAEDiscriminatorSpec:
    """Options of D (``--netD StyleGAN2 --crop_size --netD_scale_capacity``); the defaults are the
    reference's at crop 256 (28,859,521 parameters)."""

    crop_size: int = 256
    scale_capacity: float = 1.0
    # The reference hard-codes 512 channels at 4x4 and 8x8 (and caps every width there); a lower
    # cap is ours, for CPU demos and tests, and changes nothing at the default.
    max_nc: int = 512

    @property
    def image_size(self) -> int:
        """The resolution D is built for: 2^round(log2(crop_size))."""
        return 2 ** round(math.log2(self.crop_size))

    def channels(self, resolution: int) -> int:
        """Width at ``resolution``: rosinality's table with multiplier c = 2 * scale_capacity, 512 at
        4x4 and 8x8 whatever c is, min(512, 512c) at 16 and 32, 16384 c / r from 64 up."""
        c = 2 * self.scale_capacity
        if resolution <= 8:
            return self.max_nc
        if resolution <= 32:
            return min(self.max_nc, int(512 * c))
        return int(16384 // resolution * c)


class StyleGAN2Discriminator(nn.Module):
    """The StyleGAN2 residual discriminator (StyleGAN2 fig. 7b) as the Swapping Autoencoder uses it
    for D (section 3.2): 1x1 ConvLayer from RGB, a down-sampling ResBlock per halving down to 4x4
    (named ``convs.{9 - log2 r}``), a 3x3 ConvLayer, two EqualLinear on the flattened 4x4 map.
    Same structure as SinCUT's discriminator; only the widths and names differ, and there is no
    minibatch standard-deviation layer."""

    def __init__(self, spec: SwapAEDiscriminatorSpec):
        super().__init__()
        size, width = spec.image_size, spec.channels
        layers: list[tuple[str, nn.Module]] = [("0", ConvLayer(3, width(size), 1, layout=LAYOUT))]
        resolution = size
        while resolution > 4:
            block = ResBlock(width(resolution), width(resolution // 2), always_skip_conv=True, layout=LAYOUT)
            layers.append((_block_name(resolution, 9, 256), block))
            resolution //= 2
        self.convs = nn.Sequential(OrderedDict(layers))
        self.final_conv = ConvLayer(width(4), width(4), 3, layout=LAYOUT)
        self.final_linear = nn.Sequential(EqualLinear(width(4) * 4 * 4, width(4), activation=True), EqualLinear(width(4), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.final_linear(self.final_conv(self.convs(x)).flatten(1))


class SwapAEDiscriminator(nn.Module):
    """The Swapping Autoencoder's image discriminator D (section 3.2, GAN loss of eq. 2): one logit
    per image, (B, 1). Takes ``spec.image_size`` square images (fixed flatten size); state-dict keys
    are the reference's without the ``D.`` prefix (``stylegan2_D.convs.0.Conv.weight``, ...)."""

    def __init__(self, spec: SwapAEDiscriminatorSpec = SwapAEDiscriminatorSpec()):
        super().__init__()
        self.spec = spec
        self.stylegan2_D = StyleGAN2Discriminator(spec)

    def forward(self, x: Tensor) -> Tensor:
        size = self.spec.image_size
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"this discriminator takes {size}x{size} images, got {tuple(x.shape[-2:])}")
        return self.stylegan2_D(x)


# -- patch co-occurrence discriminator Dpatch ----------------------------------------------------
@dataclass(frozen=True)
class PatchDiscriminatorSpec:
    """Options of Dpatch (``--netPatchD StyleGAN2 --patch_size --netPatchD_scale_capacity
    --netPatchD_max_nc``); the defaults are the reference's (24,522,145 parameters; the only
    (patch size, capacity, max_nc) on a power-of-two grid that gives that count)."""

    patch_size: int = 128
    scale_capacity: float = 4.0
    max_nc: int = 384

    def channels(self, resolution: int) -> int:
        """Width at ``resolution``: 1024 c / r with c = scale_capacity, capped at max_nc up to 16x16."""
        width = int(1024 // resolution * self.scale_capacity)
        return min(self.max_nc, width) if resolution <= 16 else width


class PatchCooccurrenceDiscriminator(nn.Module):
    """Dpatch, the co-occurrence patch discriminator of eq. 3 (appendix B.1).

    Feature extractor ``convs``: 3x3 ConvLayer from RGB, down-sampling ResBlocks from the patch size
    to 4x4 (named ``convs.{7 - log2 r}``), a ResBlock widening to 2 max_nc, a 3x3 ConvLayer without
    padding to max_nc (4x4 -> 2x2). ``pairlinear``: a 4-layer MLP (2048, 2048, 1024, 1; hard-coded
    widths) on the concatenated features of a reference and a judged patch. Keys are the
    reference's without the ``Dpatch.`` prefix.
    """

    def __init__(self, spec: PatchDiscriminatorSpec = PatchDiscriminatorSpec(), recompute: bool = False):
        super().__init__()
        self.spec = spec
        # keep only each block's input for the backward and recompute its inside there
        # (activation checkpointing: the same gradients, R1's double backward included)
        self.recompute = recompute
        width, max_nc = spec.channels, spec.max_nc
        if width(4) != max_nc:
            # the first pair layer is sized from the 4x4 width but sees 2 x (max_nc, 2, 2) features
            raise ValueError(f"the patch discriminator needs its 4x4 width ({width(4)}) to equal max_nc ({max_nc})")
        layers: list[tuple[str, nn.Module]] = [("0", ConvLayer(3, width(spec.patch_size), 3, layout=LAYOUT))]
        resolution = spec.patch_size
        while resolution > 4:
            block = ResBlock(width(resolution), width(resolution // 2), always_skip_conv=True, layout=LAYOUT)
            layers.append((_block_name(resolution, 7, 64), block))
            resolution //= 2
        layers.append(("5", ResBlock(width(4), 2 * max_nc, downsample=False, always_skip_conv=True, layout=LAYOUT)))
        layers.append(("6", ConvLayer(2 * max_nc, max_nc, 3, padding=0, layout=LAYOUT)))
        self.convs = nn.Sequential(OrderedDict(layers))
        self.pairlinear = nn.Sequential(
            EqualLinear(2 * width(4) * 2 * 2, 2048, activation=True),
            EqualLinear(2048, 2048, activation=True),
            EqualLinear(2048, 1024, activation=True),
            EqualLinear(1024, 1),
        )

    def extract_features(self, patches: Tensor, aggregate: bool = False) -> Tensor:
        """Features (B*T, max_nc, 2, 2) of patches (B, T, 3, P, P). ``aggregate`` averages them over
        the T patches of each image and repeats the mean T times: the reference-patch set of eq. 3."""
        batch, _, _, height, width = patches.shape
        size = self.spec.patch_size
        if (height, width) != (size, size):
            raise ValueError(f"this patch discriminator takes {size}x{size} patches, got {(height, width)}")
        features = rearrange(patches, "b t c h w -> (b t) c h w")
        if self.recompute and torch.is_grad_enabled():
            for block in self.convs:
                features = checkpoint(block, features, use_reentrant=False)
        else:
            features = self.convs(features)
        if aggregate:
            mean = reduce(features, "(b t) c h w -> b c h w", "mean", b=batch)
            features = repeat(mean, "b c h w -> (b t) c h w", t=patches.shape[1])
        return features

    def discriminate_features(self, reference: Tensor, judged: Tensor) -> Tensor:
        """Logit (B*T, 1) that ``judged`` patch features co-occur with the ``reference`` features."""
        return self.pairlinear(torch.cat([reference.flatten(1), judged.flatten(1)], dim=1))

    def forward(self, reference_patches: Tensor, judged_patches: Tensor, aggregate: bool = True) -> Tensor:
        """Eq. 3's Dpatch(judged, reference set): the judged patches (B * k, T, ...) against the
        aggregated reference patches of their image (B, T, ...), the reference features computed
        once for all k judged sets (real and swapped in one call). Training calls go through
        ``forward``, so that DDP sees them."""
        reference = self.extract_features(reference_patches, aggregate=aggregate)
        repeats = judged_patches.shape[0] // reference_patches.shape[0]
        return self.discriminate_features(reference.repeat(repeats, 1, 1, 1), self.extract_features(judged_patches))


# -- random crops ---------------------------------------------------------------------------------
def random_crops(images: Tensor, num_crops: int, min_scale: float, max_scale: float, patch_size: int, generator: torch.Generator | None = None) -> Tensor:
    """``num_crops`` random patches per image, (B, T, 3, P, P): the patches of eq. 3 (appendix B.1).

    Each crop has its own side lengths, a fraction of the image side drawn uniformly in
    [min_scale, max_scale] per axis (so the aspect ratio varies too), a uniform position inside
    the image and a horizontal flip with probability 1/2; it is resampled to P x P by bilinear
    ``grid_sample`` (align_corners False, so scale 1 without flip is a plain bilinear resize).
    Draws come from ``generator`` (on its device) when given.
    """
    if not 0 < min_scale <= max_scale <= 1:
        raise ValueError(f"crop scales must satisfy 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
    batch = images.shape[0]
    device = generator.device if generator is not None else images.device

    def uniform(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device=device).to(images.device, images.dtype)

    scale = min_scale + (max_scale - min_scale) * uniform(batch, num_crops, 2)  # (x, y) half-extents in [-1, 1] units
    center = (1 - scale) * (2 * uniform(batch, num_crops, 2) - 1)  # keeps the crop inside the image
    flip = torch.where(uniform(batch, num_crops) < 0.5, -1.0, 1.0).to(images.dtype)
    zero = torch.zeros_like(flip)
    theta = torch.stack(
        [
            torch.stack([scale[..., 0] * flip, zero, center[..., 0]], dim=-1),
            torch.stack([zero, scale[..., 1], center[..., 1]], dim=-1),
        ],
        dim=-2,
    )  # (B, T, 2, 3): output grid [-1, 1]^2 -> image coordinates
    grid = F.affine_grid(rearrange(theta, "b t i j -> (b t) i j"), [batch * num_crops, 1, patch_size, patch_size], align_corners=False)
    # stack each image's T grids vertically and sample them in one call, instead of repeating the image T times
    grid = rearrange(grid, "(b t) h w xy -> b (t h) w xy", b=batch)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rearrange(crops, "b c (t h) w -> b t c h w", t=num_crops)
