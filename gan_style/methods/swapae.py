"""The Swapping Autoencoder: Park, Zhu, Wang, Lu, Shechtman, Efros, Zhang, "Swapping Autoencoder for
Deep Image Manipulation", NeurIPS 2020.

An encoder E maps an image x to two codes (Sec. 3): a **structure** code z_s, a tensor with spatial
extent (8 channels at 1/16 of the image side) that keeps the layout, and a **texture** code z_t, a
vector (2048-d, pooled over all positions) that keeps what is the same everywhere: colours,
materials, strokes. A generator G decodes the pair back into an image. Training (Sec. 3.1-3.2):

    L_rec   = || x - G(E(x)) ||_1                                                       (eq. 1)
    L_GAN   = the non-saturating GAN loss (Goodfellow et al. 2014) of D on the
              reconstruction G(z_s^1, z_t^1) (weight 0.5) and on the swap G(z_s^2, z_t^1) (weight 1)
    L_CooccurGAN = E[-log Dpatch(crop(G(z_s^2, z_t^1)), crops(x^1))]                    (eq. 3)

The **patch co-occurrence discriminator** Dpatch (Sec. 3.2) judges whether a patch of the swapped
image could come from the image whose texture it took: it compares one patch with the average
features of several reference patches of that image. So the texture code must carry the texture
and the structure code cannot (a swap would otherwise be caught). Both discriminators get R1
(Mescheder et al. 2018) with gamma 10 for D and 1 for Dpatch, applied lazily every 16 D steps and
scaled by 16, with their Adam's learning rate and betas rescaled by c = 16/17 (StyleGAN2,
Karras et al. 2020, appendix B); D and G iterations alternate.

Swaps pair the images of a batch: image 2k takes the structure of image 2k + 1 and the other way
round (so the batch must be even). Random crops for Dpatch come from the engine's streams.

Where the paper leaves a choice, this file says what it does: each GAN term is the full two-sided
objective with its weight (so D's real term weighs 0.5 + 1), and the lazy R1 of Dpatch is taken
with respect to the judged real patches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gan_style.data.folder import FolderDataConfig
from gan_style.engine.config import TrainConfig
from gan_style.engine.contract import InputSpec, Method, MethodConfig, OptimizerSpec, Phase, StepContext, StepOutput, Translator
from gan_style.losses.adversarial import gan_loss, r1_penalty
from gan_style.nn.swapae import SwapAEEncoder, SwapAEEncoderSpec, SwapAEGenerator, SwapAEGeneratorSpec, fit_texture_image
from gan_style.nn.swapae_discriminators import (
    PatchCooccurrenceDiscriminator,
    PatchDiscriminatorSpec,
    SwapAEDiscriminator,
    SwapAEDiscriminatorSpec,
    random_crops,
)

_PATCH = PatchDiscriminatorSpec()
# 25 M images (the reference's training budget) at the paper preset's batch 16
IMAGE_BUDGET = 25_000_000


@dataclass
class SwapAEConfig(MethodConfig):
    """The reference's options and defaults (crop 256); names follow the reference."""

    data: FolderDataConfig = field(default_factory=FolderDataConfig)  # load 256, crop 256, flips
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            batch_size=16, lr_unit="iteration", lr_policy="constant", max_steps=IMAGE_BUDGET // 16,
            log_every=100, image_every=1000, save_every=10_000, trim_heap=True,
        )
    )
    # codes
    spatial_code_ch: int = 8
    global_code_ch: int = 2048
    # E: widths min(global_code_ch, 2^(5+i) * scale_capacity), 4 downsamplings to the structure code, 2 more to the texture
    netE_scale_capacity: float = 1.0
    netE_num_downsampling_sp: int = 4
    netE_num_downsampling_gl: int = 2
    netE_nc_steepness: float = 2.0
    use_antialias: bool = True
    # G: widths min(512, 128 * 2^(4-j)) * scale_capacity, 2 resolution-keeping blocks, noise inputs
    netG_scale_capacity: float = 1.0
    netG_num_base_resnet_layers: int = 2
    netG_use_noise: bool = True
    # D: StyleGAN2 with channel multiplier 2 * scale_capacity (and, ours, a cap on its 512 widths)
    netD_scale_capacity: float = 1.0
    netD_max_nc: int = 512
    # Dpatch: crops of 1/8 to 1/4 of the side, resized to patch_size, averaged over the reference crops
    netPatchD_scale_capacity: float = _PATCH.scale_capacity
    netPatchD_max_nc: int = _PATCH.max_nc
    patch_size: int = _PATCH.patch_size
    patch_num_crops: int = 8
    patch_min_scale: float = 1 / 8
    patch_max_scale: float = 1 / 4
    patch_use_aggregation: bool = True
    # memory, not numerics: Dpatch recomputes each block's activations in the backward
    # (activation checkpointing) instead of keeping those of its 8 crops x 3 patch sets
    patch_recompute: bool = True
    # objective
    lambda_L1: float = 1.0
    lambda_GAN: float = 1.0  # non-saturating GAN on the swapped images
    lambda_GAN_rec: float = 0.5  # ... and on the reconstructions
    lambda_PatchGAN: float = 1.0
    lambda_R1: float = 10.0
    lambda_patch_R1: float = 1.0
    R1_once_every: int = 16
    # optimisers (D's rescaled by c = R1_once_every / (R1_once_every + 1))
    lr: float = 2e-3
    beta1: float = 0.0
    beta2: float = 0.99

    def __post_init__(self) -> None:
        if self.train.batch_size % 2:
            raise ValueError(f"train.batch_size must be even (swaps pair the images of a batch), got {self.train.batch_size}")
        if not 0 < self.patch_min_scale <= self.patch_max_scale <= 1:
            raise ValueError(f"need 0 < patch_min_scale <= patch_max_scale <= 1, got {self.patch_min_scale}, {self.patch_max_scale}")
        if self.R1_once_every < 1 or self.patch_num_crops < 1:
            raise ValueError("R1_once_every and patch_num_crops must be >= 1")
        if self.data.crop_size % 2 ** self.netE_num_downsampling_sp:
            raise ValueError(f"data.crop_size ({self.data.crop_size}) must be a multiple of 2^netE_num_downsampling_sp = {2 ** self.netE_num_downsampling_sp}")


def config_overrides_from_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``SwapAEConfig`` overrides that rebuild the networks the importer found (the options of
    ``gan_style.hub.swapae.import_swapae_checkpoint``: the reference's option names, which are
    ours, plus ``crop_size`` and file bookkeeping)."""
    overrides = {k: v for k, v in options.items() if k not in ("crop_size", "num_discriminator_iters", "fixed_noise")}
    if "crop_size" in options:
        overrides["data"] = {"load_size": options["crop_size"], "crop_size": options["crop_size"]}
    return overrides


def swap_pairs(codes: Tensor) -> Tensor:
    """Exchange the codes of images 2k and 2k + 1."""
    return rearrange(codes, "(n pair) ... -> n pair ...", pair=2).flip(1).flatten(0, 1)


# reduced widths that keep every path of the networks (tests, CI, CPU demos)
SMALL = {
    "global_code_ch": 64,
    "netE_scale_capacity": 0.25,
    "netE_num_downsampling_sp": 2,
    "netG_scale_capacity": 0.125,
    "netD_scale_capacity": 0.125,
    "netD_max_nc": 64,
    "netPatchD_scale_capacity": 0.5,
    "netPatchD_max_nc": 32,
    "patch_size": 16,
    "patch_num_crops": 4,
}


class SwapAE(Method):
    """Networks E, G (trained by one Adam), D and Dpatch (the other)."""

    name = "swapae"
    Config = SwapAEConfig
    presets: dict[str, dict[str, Any]] = {
        "paper": {},
        # the reference's launcher for mountain landscapes: 512 px, a stronger R1 on Dpatch
        "mountain": {"data": {"load_size": 512, "crop_size": 512}, "lambda_patch_R1": 10.0},
        # small networks on the built-in 64 px demo set: a few CPU minutes. What a budget of ~1000
        # iterations needs (measured, docs/swapae.md): a structure code of 8x8 at 64 px (the
        # paper's 1/16 of the side, 4x4, is not used yet that early; 16x16 carries the colour too),
        # the reconstruction and patch co-occurrence terms at 4x their paper weights (the image
        # GAN at a quarter of its relative weight: at the paper's, reconstruction barely starts),
        # and a weight average (the swaps' colour swings from one evaluation to the next without it)
        "demo": {
            **SMALL,
            "netE_num_downsampling_sp": 3,
            "lambda_L1": 4.0,
            "lambda_PatchGAN": 4.0,
            "data": {"root": "demo", "load_size": 64, "crop_size": 64},
            "train": {"batch_size": 4, "max_steps": 2000, "log_every": 20, "image_every": 200, "save_every": 500, "ema_decay": 0.995},
        },
        "smoke": {
            **SMALL,
            "data": {"root": "demo", "load_size": 64, "crop_size": 64, "max_dataset_size": 8},
            "train": {"batch_size": 2, "max_steps": 100, "log_every": 2, "image_every": 1000, "save_every": 1000},
        },
    }
    default_preset = "paper"
    ema_networks = ("E", "G")
    bench_batch_size = 2  # the smallest batch with a swap pair, as the reference is timed
    kernel_probe = "stylegan2"

    config: SwapAEConfig

    # -- networks and optimisers ---------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        encoder = SwapAEEncoderSpec(
            c.spatial_code_ch, c.global_code_ch, c.netE_scale_capacity, c.netE_num_downsampling_sp,
            c.netE_num_downsampling_gl, c.netE_nc_steepness, c.use_antialias,
        )
        generator = SwapAEGeneratorSpec(
            c.spatial_code_ch, c.global_code_ch, c.netG_scale_capacity, c.netG_num_base_resnet_layers,
            c.netE_num_downsampling_sp, c.netG_use_noise,
        )
        return {
            "E": SwapAEEncoder(encoder),
            "G": SwapAEGenerator(generator),
            "D": SwapAEDiscriminator(SwapAEDiscriminatorSpec(c.data.crop_size, c.netD_scale_capacity, c.netD_max_nc)),
            "Dpatch": PatchCooccurrenceDiscriminator(PatchDiscriminatorSpec(c.patch_size, c.netPatchD_scale_capacity, c.netPatchD_max_nc),
                                                     recompute=c.patch_recompute),
        }

    def optimizers(self) -> list[OptimizerSpec]:
        c = self.config
        ratio = c.R1_once_every / (c.R1_once_every + 1)  # StyleGAN2 appendix B: lazy regularisation
        return [
            OptimizerSpec("G", ("E", "G"), c.lr, (c.beta1, c.beta2)),
            OptimizerSpec("D", ("D", "Dpatch"), c.lr * ratio, (c.beta1**ratio, c.beta2**ratio)),
        ]

    def phases(self) -> list[Phase]:
        return [
            Phase("D", "D", self.discriminator_step, every=2, offset=0),
            Phase("D_R1", "D", self.r1_step, every=self.config.R1_once_every, of="D"),
            Phase("G", "G", self.generator_step, every=2, offset=1),
        ]

    # -- the pieces of the objective -----------------------------------------------------------
    def reconstruct_and_swap(self, ctx: StepContext, x: Tensor) -> tuple[Tensor, Tensor]:
        """G(z_s, z_t) and G(swap(z_s), z_t) in one generator call."""
        structure, texture = ctx.nets["E"](x)
        out = ctx.nets["G"](torch.cat([structure, swap_pairs(structure)]), torch.cat([texture, texture]), noise=ctx.rng("noise"))
        return out.split(x.shape[0])

    def crops(self, ctx: StepContext, images: Tensor) -> Tensor:
        c = self.config
        return random_crops(images, c.patch_num_crops, c.patch_min_scale, c.patch_max_scale, c.patch_size, generator=ctx.rng("crops"))

    def discriminator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        c = self.config
        D, Dpatch = ctx.nets["D"], ctx.nets["Dpatch"]
        x = batch["image"]
        with torch.no_grad():
            rec, mix = self.reconstruct_and_swap(ctx, x)
        real, fake_rec, fake_mix = D(torch.cat([x, rec, mix])).split(x.shape[0])
        losses = {
            "real": (c.lambda_GAN + c.lambda_GAN_rec) * gan_loss(real, True, "nonsaturating"),
            "rec": c.lambda_GAN_rec * gan_loss(fake_rec, False, "nonsaturating"),
            "swap": c.lambda_GAN * gan_loss(fake_mix, False, "nonsaturating"),
        }
        logs = {"D_real": real.detach().mean(), "D_swap": fake_mix.detach().mean()}
        if c.lambda_PatchGAN > 0:  # real patches and the swap's, each against the same references
            judged = torch.cat([self.crops(ctx, x), self.crops(ctx, mix)])
            real_patch, mix_patch = Dpatch(self.crops(ctx, x), judged, c.patch_use_aggregation).chunk(2)
            losses["patch_real"] = c.lambda_PatchGAN * gan_loss(real_patch, True, "nonsaturating")
            losses["patch_swap"] = c.lambda_PatchGAN * gan_loss(mix_patch, False, "nonsaturating")
        return StepOutput(losses, logs=logs)

    def r1_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        """Lazy R1: gamma / 2 * E||grad D||^2, every R1_once_every D steps and scaled by it."""
        c = self.config
        x = batch["image"].detach().requires_grad_(True)
        scale = 0.5 * c.R1_once_every
        # "+ 0 * prediction": the last layers' biases do not change the input gradient, yet DDP
        # expects a gradient for every parameter of the backward (StyleGAN2 does the same)
        prediction = ctx.nets["D"](x)
        losses = {"R1": c.lambda_R1 * scale * r1_penalty(prediction, x) + 0 * prediction.sum()}
        if c.lambda_patch_R1 > 0 and c.lambda_PatchGAN > 0:
            reference = self.crops(ctx, batch["image"])
            judged = self.crops(ctx, batch["image"]).detach().requires_grad_(True)
            prediction = ctx.nets["Dpatch"](reference, judged, c.patch_use_aggregation)
            losses["patch_R1"] = c.lambda_patch_R1 * scale * r1_penalty(prediction, judged) + 0 * prediction.sum()
        return StepOutput(losses)

    def generator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        c = self.config
        x = batch["image"]
        rec, mix = self.reconstruct_and_swap(ctx, x)
        fake_rec, fake_mix = ctx.nets["D"](torch.cat([rec, mix])).split(x.shape[0])
        losses = {
            "L1": c.lambda_L1 * F.l1_loss(rec, x),  # eq. 1
            "GAN_rec": c.lambda_GAN_rec * gan_loss(fake_rec, True, "nonsaturating"),
            "GAN_swap": c.lambda_GAN * gan_loss(fake_mix, True, "nonsaturating"),
        }
        if c.lambda_PatchGAN > 0:  # eq. 3: the swap's patches should pass for the texture source's
            prediction = ctx.nets["Dpatch"](self.crops(ctx, x), self.crops(ctx, mix), c.patch_use_aggregation)
            losses["PatchGAN"] = c.lambda_PatchGAN * gan_loss(prediction, True, "nonsaturating")
        return StepOutput(losses, carry={"rec": rec.detach(), "swap": mix.detach()})

    # -- data, visuals, inference --------------------------------------------------------------
    def build_dataset(self, seed: int, world_size: int = 1) -> torch.utils.data.Dataset:
        from gan_style.data.folder import ImageFolderDataset

        return ImageFolderDataset(self.config.data, seed)

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        return {"image": torch.rand(batch_size, 3, image_size, image_size, generator=generator) * 2 - 1}

    def visuals(self, batch: Mapping[str, Any], carry: Mapping[str, Any], nets: Mapping[str, nn.Module] | None = None) -> dict[str, Tensor]:
        shown = {"real": batch["image"]}
        shown.update({k: carry[k] for k in ("rec", "swap") if k in carry})
        if "swap" in carry:
            shown["texture_from"] = batch["image"]
            shown["structure_from"] = swap_pairs(batch["image"])
        return shown

    def translator(self, nets: Mapping[str, nn.Module], direction: str = "AtoB") -> Translator:
        """The structure of the input images with the texture of ``texture``, the texture code
        interpolated by ``alpha`` from the input's own (0) to the texture image's (1). The noise
        is drawn from a generator seeded by ``seed``, so a sequence of alphas does not flicker."""
        self.check_direction(direction)
        E, G = nets["E"], nets["G"]

        def bind(texture: Tensor | None = None, alpha: float = 1.0, seed: int = 0) -> Callable[[Tensor], Tensor]:
            # the texture code is computed at the first call, not here: an exact tiled swap never
            # calls this function and computes the code tile by tile (a huge texture image fits)
            codes: list[Tensor] = []

            def swap(images: Tensor) -> Tensor:
                if not codes:  # a texture image smaller than the texture head needs is enlarged
                    codes.append(E(fit_texture_image(texture, E.spec))[1])
                target = codes[0]
                structure, own = E(images)
                mixed = torch.lerp(own, target.to(own.dtype).expand_as(own) if target.shape[0] == 1 else target, alpha)
                return G.seeded(structure, mixed, seed)  # an image's output does not depend on its batch

            return swap

        inputs = (
            InputSpec("texture", "image", "the image whose texture the output takes", required=True),
            InputSpec("alpha", "float", "0: the input's own texture ... 1: the texture image's (default)"),
            InputSpec("seed", "int", "seed of the generator's noise (default 0)"),
        )
        multiple = 2 ** self.config.netE_num_downsampling_sp
        return Translator(bind, size_multiple=multiple, inputs=inputs, description="Swapping Autoencoder", local=False)

    def functions(self, nets: Mapping[str, nn.Module]) -> dict[str, Callable[..., Any]]:
        """``encode(images) -> (structure, texture)`` and ``decode(structure, texture) -> images``
        on tensors in [-1, 1] (``Model.swap`` wraps the translator)."""
        E, G = nets["E"], nets["G"]
        return {
            "encode": lambda images: E(images),
            "decode": lambda structure, texture, seed=0: G.seeded(structure, texture, seed),
        }
