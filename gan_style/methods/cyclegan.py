"""CycleGAN: Zhu, Park, Isola, Efros, "Unpaired Image-to-Image Translation using Cycle-Consistent
Adversarial Networks", ICCV 2017.

Two generators, G_A: A -> B and G_B: B -> A, and two discriminators, D_A judging B images (real
vs G_A's fakes) and D_B judging A images. The full objective (Sec. 3.3, eq. 3) is

    L = L_GAN(G_A, D_A) + L_GAN(G_B, D_B) + lambda_A * ||G_B(G_A(a)) - a||_1 + lambda_B * ||G_A(G_B(b)) - b||_1

plus the identity loss of Sec. 5.2 / 7.1, lambda_identity * (lambda_B * ||G_A(b) - b||_1 +
lambda_A * ||G_B(a) - a||_1), which keeps colours when translating paintings to photos. The
adversarial terms use least squares (Sec. 4, "Training details") and the discriminators are updated
from a history of 50 generated images, with their loss halved.

Network names and loss names follow the reference implementation (G_A, D_A, cycle_A, idt_A ...)
so that its users find their way and its checkpoints map one to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_style.data.config import DataConfig
from gan_style.engine.contract import Method, MethodConfig, OptimizerSpec, Phase, StepContext, StepOutput, Translator
from gan_style.losses.adversarial import GAN_MODES, gan_loss, gradient_penalty
from gan_style.nn.discriminators import DiscriminatorSpec, build_discriminator
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.nn.image_pool import ImagePool


@dataclass
class CycleGANConfig(MethodConfig):
    """Defaults are the paper's (and the reference's ``train.py --model cycle_gan``)."""

    data: DataConfig = field(default_factory=DataConfig)
    netG: str = "resnet_9blocks"  # resnet_9blocks | resnet_6blocks | unet_128 | unet_256
    ngf: int = 64
    netD: str = "basic"  # basic (70x70 PatchGAN) | n_layers | pixel
    ndf: int = 64
    n_layers_D: int = 3
    norm: str = "instance"  # instance | batch | none
    dropout: bool = False  # the reference's --no_dropout is the CycleGAN default
    init_type: str = "normal"  # normal | xavier | kaiming | orthogonal
    init_gain: float = 0.02
    input_nc: int = 3
    output_nc: int = 3
    gan_mode: str = "lsgan"  # lsgan | vanilla | wgangp (| nonsaturating | hinge)
    lambda_gp: float = 10.0  # gradient-penalty weight, used with gan_mode wgangp only
    pool_size: int = 50
    lambda_A: float = 10.0  # cycle loss A -> B -> A
    lambda_B: float = 10.0  # cycle loss B -> A -> B
    lambda_identity: float = 0.5  # relative to lambda_A / lambda_B; 0 disables the identity passes
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self) -> None:
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {', '.join(GAN_MODES)}, got {self.gan_mode!r}")
        if self.lambda_identity > 0 and self.input_nc != self.output_nc:
            raise ValueError("the identity loss needs input_nc == output_nc; set lambda_identity=0")


class CycleGAN(Method):
    name = "cyclegan"
    Config = CycleGANConfig
    presets = {
        # The paper / reference defaults: 256 px crops from 286 px, batch 1, 100 + 100 epochs.
        "paper": {},
        # The built-in demo: small networks on the procedural 64 px demo set, a few CPU minutes.
        "demo": {
            "data": {"root": "demo", "load_size": 72, "crop_size": 64},
            "ngf": 16,
            "ndf": 16,
            "netG": "resnet_6blocks",
            "train": {"n_epochs": 3, "n_epochs_decay": 2, "log_every": 20, "image_every": 100, "save_every": 500},
        },
        # Reduced widths at 32 px on the demo set: the conformance tests and CI.
        "smoke": {
            "data": {"root": "demo", "load_size": 36, "crop_size": 32, "max_dataset_size": 4},
            "ngf": 4,
            "ndf": 4,
            "netG": "resnet_6blocks",
            "pool_size": 2,
            "train": {"n_epochs": 1, "n_epochs_decay": 2, "log_every": 2, "image_every": 1000, "save_every": 1000},
        },
    }
    default_preset = "paper"
    ema_networks = ("G_A", "G_B")
    directions = ("AtoB", "BtoA")

    config: CycleGANConfig

    def __init__(self, config: CycleGANConfig):
        super().__init__(config)
        self.fake_A_pool = ImagePool(config.pool_size)
        self.fake_B_pool = ImagePool(config.pool_size)

    # -- networks and optimisers ---------------------------------------------------------------
    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config

        def generator(in_nc: int, out_nc: int) -> nn.Module:
            spec = GeneratorSpec(c.netG, c.ngf, c.norm, c.dropout, in_nc, out_nc)
            return build_generator(spec, c.init_type, c.init_gain)

        def discriminator(in_nc: int) -> nn.Module:
            spec = DiscriminatorSpec(c.netD, c.ndf, c.n_layers_D, c.norm, in_nc)
            return build_discriminator(spec, c.init_type, c.init_gain)

        return {
            "G_A": generator(c.input_nc, c.output_nc),
            "G_B": generator(c.output_nc, c.input_nc),
            "D_A": discriminator(c.output_nc),
            "D_B": discriminator(c.input_nc),
        }

    def optimizers(self) -> list[OptimizerSpec]:
        betas = (self.config.beta1, self.config.beta2)
        return [
            OptimizerSpec("G", ("G_A", "G_B"), self.config.lr, betas),
            OptimizerSpec("D", ("D_A", "D_B"), self.config.lr, betas),
        ]

    def phases(self) -> list[Phase]:
        return [Phase("G", "G", self.generator_step), Phase("D", "D", self.discriminator_step)]

    # -- one iteration -------------------------------------------------------------------------
    def _batchable(self) -> bool:
        # Instance norm (or none) treats every image on its own, so calls of one generator on
        # different images can share a batch with identical results. Batch norm cannot.
        return self.config.norm != "batch"

    def translate_all(self, G_A: nn.Module, G_B: nn.Module, real_A: Tensor, real_B: Tensor) -> dict[str, Tensor]:
        """fake, reconstructed and identity images of both directions.

        The reference makes six generator calls (fake_B, rec_A, fake_A, rec_B, idt_A, idt_B).
        The same outputs come from three calls here: G_A on [real_A, real_B] gives fake_B and
        idt_A; G_B on [real_B, real_A, fake_B] gives fake_A, idt_B and rec_A; G_A on fake_A gives
        rec_B. Bigger batches make better use of the convolution kernels.
        """
        identity = self.config.lambda_identity > 0
        n = real_A.shape[0]
        out: dict[str, Tensor] = {}
        if self._batchable():
            # torch.split rather than slicing: the backward of a slice writes its gradient into
            # a zero tensor of the whole batch, split's backward concatenates the pieces.
            first = G_A(torch.cat([real_A, real_B]) if identity else real_A).split(n)
            out["fake_B"] = first[0]
            second_inputs = [real_B] + ([real_A] if identity else []) + [out["fake_B"]]
            second = G_B(torch.cat(second_inputs)).split(n)
            out["fake_A"], out["rec_A"] = second[0], second[-1]
            if identity:
                out["idt_A"], out["idt_B"] = first[1], second[1]
            out["rec_B"] = G_A(out["fake_A"])
        else:
            out["fake_B"], out["fake_A"] = G_A(real_A), G_B(real_B)
            out["rec_A"], out["rec_B"] = G_B(out["fake_B"]), G_A(out["fake_A"])
            if identity:
                out["idt_A"], out["idt_B"] = G_A(real_B), G_B(real_A)
        return out

    def generator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        c = self.config
        nets = ctx.nets
        real_A, real_B = batch["A"], batch["B"]
        images = self.translate_all(nets["G_A"], nets["G_B"], real_A, real_B)
        losses = {
            "G_A": gan_loss(nets["D_A"](images["fake_B"]), True, c.gan_mode, for_discriminator=False),
            "G_B": gan_loss(nets["D_B"](images["fake_A"]), True, c.gan_mode, for_discriminator=False),
            "cycle_A": F.l1_loss(images["rec_A"], real_A) * c.lambda_A,
            "cycle_B": F.l1_loss(images["rec_B"], real_B) * c.lambda_B,
        }
        if c.lambda_identity > 0:
            losses["idt_A"] = F.l1_loss(images["idt_A"], real_B) * c.lambda_B * c.lambda_identity
            losses["idt_B"] = F.l1_loss(images["idt_B"], real_A) * c.lambda_A * c.lambda_identity
        carry = {name: image.detach() for name, image in images.items()}
        return StepOutput(losses, carry)

    def _discriminator_loss(self, D: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """0.5 * (L(D(real), real) + L(D(fake), fake)), plus D's mean scores for logging."""
        c = self.config
        if self._batchable():
            pred_real, pred_fake = D(torch.cat([real, fake])).split([real.shape[0], fake.shape[0]])
        else:
            pred_real, pred_fake = D(real), D(fake)
        loss = 0.5 * (gan_loss(pred_real, True, c.gan_mode) + gan_loss(pred_fake, False, c.gan_mode))
        if c.gan_mode == "wgangp":
            loss = loss + gradient_penalty(D, real, fake, weight=c.lambda_gp)
        return loss, pred_real.detach().mean(), pred_fake.detach().mean()

    def discriminator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        fake_B = self.fake_B_pool.query(ctx.carry["fake_B"], ctx.rng("fake_B_pool"))
        fake_A = self.fake_A_pool.query(ctx.carry["fake_A"], ctx.rng("fake_A_pool"))
        loss_D_A, real_score_A, fake_score_A = self._discriminator_loss(ctx.nets["D_A"], batch["B"], fake_B)
        loss_D_B, real_score_B, fake_score_B = self._discriminator_loss(ctx.nets["D_B"], batch["A"], fake_A)
        logs = {"D_A_real": real_score_A, "D_A_fake": fake_score_A, "D_B_real": real_score_B, "D_B_fake": fake_score_B}
        return StepOutput({"D_A": loss_D_A, "D_B": loss_D_B}, logs=logs)

    # -- data, visuals, inference --------------------------------------------------------------
    def build_dataset(self, seed: int, world_size: int = 1) -> torch.utils.data.Dataset:
        from gan_style.data.unpaired import UnpairedImageDataset

        return UnpairedImageDataset(self.config.data, seed=seed)

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        shape_A = (batch_size, self.config.input_nc, image_size, image_size)
        shape_B = (batch_size, self.config.output_nc, image_size, image_size)
        return {
            "A": torch.rand(shape_A, generator=generator) * 2 - 1,
            "B": torch.rand(shape_B, generator=generator) * 2 - 1,
        }

    def visuals(self, batch: Mapping[str, Any], carry: Mapping[str, Any], nets: Mapping[str, nn.Module] | None = None) -> dict[str, Tensor]:
        order_A = ["fake_B", "rec_A", "idt_B"]
        order_B = ["fake_A", "rec_B", "idt_A"]
        shown = {"real_A": batch["A"]}
        shown.update({k: carry[k] for k in order_A if k in carry})
        shown["real_B"] = batch["B"]
        shown.update({k: carry[k] for k in order_B if k in carry})
        return shown

    def translator(self, nets: Mapping[str, nn.Module], direction: str = "AtoB") -> Translator:
        self.check_direction(direction)
        return Translator.of_network(nets["G_A"] if direction == "AtoB" else nets["G_B"], f"CycleGAN {direction}")

    def state_dict(self) -> dict[str, Any]:
        return {"fake_A_pool": self.fake_A_pool.state_dict(), "fake_B_pool": self.fake_B_pool.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fake_A_pool.load_state_dict(state["fake_A_pool"])
        self.fake_B_pool.load_state_dict(state["fake_B_pool"])
