"""CUT, FastCUT and SinCUT: Park, Efros, Zhang, Zhu, "Contrastive Learning for Unpaired
Image-to-Image Translation", ECCV 2020.

One generator G: X -> Y and one discriminator D, no inverse generator and no cycle. The content of
the input is kept by **PatchNCE** (Sec. 3.1, eq. 2): a patch of the output G(x) must be more
similar to the input patch at the same position (the positive) than to the other input patches
(the negatives), an (N+1)-way classification with temperature tau = 0.07 over L2-normalised
features:

    l(v, v+, v-) = -log( exp(v.v+ / tau) / (exp(v.v+ / tau) + sum_n exp(v.v-_n / tau)) )

**Multilayer, patchwise** (Sec. 3.2, eq. 3): the features are those of G's own encoder at several
layers l (the padded image, two convolutions and two residual blocks for the ResNet G: layers
0, 4, 8, 12, 16), each position a patch whose receptive field grows with depth. At each layer 256
positions are sampled, and a small two-layer MLP H_l (256 wide; ``F`` as in the reference) projects
them. The queries come from G(x) re-encoded by G's encoder, the keys from x (held fixed).

**Full objective** (eq. 5):

    L = L_GAN(G, D, X, Y) + lambda_X L_PatchNCE(G, H, X) + lambda_Y L_PatchNCE(G, H, Y)

The second PatchNCE term, on images y of the target domain and their "identity" translations
G(y), plays the role of CycleGAN's identity loss. **CUT** uses it with lambda_X = lambda_Y = 1
(the reference weights each term by 1/2: ``lambda_NCE * (NCE_X + NCE_Y) / 2``). **FastCUT**
(Sec. 4) drops it, uses lambda_X = 10 and adds flip-equivariance augmentation: with probability
1/2 an iteration translates the horizontally flipped input, and the query features are flipped
back, so G must commute with flipping. Adversarial loss: least squares (LSGAN), no image pool,
D's loss halved.

**SinCUT** (Sec. 5.3, fig. 9) learns from a single image per domain: crops of the two images
(``gan_style.data.single_image``), StyleGAN2-style G and D, the non-saturating GAN loss with an R1
penalty on D (Mescheder et al. 2018) of weight 1, PatchNCE (weight 4, layers 0, 2, 4, one patch per
crop, negatives taken from the other crops of the minibatch) and an L1 identity loss ||G(y) - y||.

Each iteration (the reference's order): one forward of G on the batch [x; y], then a D step on
its output, then a G (and H) step on the same forward.

Work saved against the reference, with identical numbers: the keys' encoder features of x and y
are the activations G's forward has already computed (read with forward hooks, detached), not a
second encoder pass over x and y; the queries of G(x) and G(y) come from one encoder pass over
the batch [G(x); G(y)], not two. (Instance norm and the other layers treat every image of a batch
on its own, so batching changes no value.) When an iteration flips its input (FastCUT), the
forward saw the flipped images, so the keys need one gradient-free encoder pass over the unflipped
ones, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_style.data.config import DataConfig
from gan_style.data.single_image import SingleImageDataConfig
from gan_style.data.transforms import ImageTransform
from gan_style.data.unpaired import UnpairedImageDataset
from gan_style.engine.config import TrainConfig
from gan_style.engine.contract import Method, MethodConfig, OptimizerSpec, Phase, StepContext, StepOutput, Translator
from gan_style.losses.adversarial import GAN_MODES, gan_loss, r1_penalty
from gan_style.losses.patchnce import multilayer_patch_nce_loss
from gan_style.nn.discriminators import DiscriminatorSpec, build_discriminator
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.nn.patch_sampler import PatchSampleMLP, feature_channels
from gan_style.nn.sincut_networks import (
    SinCUTDiscriminator,
    SinCUTDiscriminatorSpec,
    SinCUTGenerator,
    SinCUTGeneratorSpec,
)

PATCH_SAMPLERS = ("mlp_sample", "sample")


# -- configuration ----------------------------------------------------------------------------------
@dataclass
class CUTConfig(MethodConfig):
    """Defaults are CUT's (the reference's ``train.py --model cut --CUT_mode CUT``); FastCUT and
    SinCUT change some of them (presets / ``SinCUTConfig``). Option names follow the reference."""

    data: DataConfig = field(default_factory=DataConfig)  # load 286, crop 256, flip
    train: TrainConfig = field(default_factory=lambda: TrainConfig(n_epochs=200, n_epochs_decay=200))
    # The reference's data quirks: an epoch has |A| + |B| items (not max), and in the decay epochs
    # (epoch > n_epochs) images are resized straight to crop_size, without the random-crop jitter.
    fixed_crop_when_decaying: bool = True
    # networks
    netG: str = "resnet_9blocks"  # resnet_9blocks | resnet_6blocks | resnet_4blocks
    ngf: int = 64
    normG: str = "instance"
    antialias: bool = True  # blurred down-sampling in G and D (the reference's --no_antialias turns it off)
    antialias_up: bool = True  # blurred up-sampling + conv in G (--no_antialias_up)
    netD: str = "basic"  # basic (70x70 PatchGAN) | n_layers | pixel
    ndf: int = 64
    n_layers_D: int = 3
    normD: str = "instance"
    init_type: str = "xavier"
    init_gain: float = 0.02
    input_nc: int = 3
    output_nc: int = 3
    # objective (eq. 5)
    gan_mode: str = "lsgan"
    lambda_GAN: float = 1.0
    lambda_NCE: float = 1.0
    nce_idt: bool = True  # the second PatchNCE term, on target-domain images y and G(y)
    nce_layers: tuple[int, ...] = (0, 4, 8, 12, 16)
    num_patches: int = 256  # sampled positions per layer (0: all)
    nce_T: float = 0.07
    nce_includes_all_negatives_from_minibatch: bool = False  # negatives from the whole batch (SinCUT)
    netF: str = "mlp_sample"  # mlp_sample: two-layer MLP heads H_l | sample: raw features
    netF_nc: int = 256
    flip_equivariance: bool = False  # FastCUT
    lambda_R1: float = 0.0  # R1 penalty on D's real inputs (SinCUT: 1)
    lambda_identity: float = 0.0  # L1 ||G(y) - y|| (SinCUT: 1)
    # optimisers: G and the heads share one Adam, D has its own
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999

    def __post_init__(self) -> None:
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {', '.join(GAN_MODES)}, got {self.gan_mode!r}")
        if self.netF not in PATCH_SAMPLERS:
            raise ValueError(f"netF must be one of {', '.join(PATCH_SAMPLERS)}, got {self.netF!r}")
        if self.lambda_NCE > 0 and not self.nce_layers:
            raise ValueError("nce_layers is empty; name the encoder layers PatchNCE reads, e.g. 0,4,8,12,16")
        if self.num_patches < 0:
            raise ValueError(f"num_patches must be >= 0 (0 = every position), got {self.num_patches}")
        if (self.nce_idt or self.lambda_identity > 0) and self.input_nc != self.output_nc:
            raise ValueError("nce_idt and lambda_identity translate target images, so they need input_nc == output_nc")
        self.check_networks()

    def check_networks(self) -> None:
        if not (self.netG.startswith("resnet_") and self.netG.endswith("blocks")):
            raise ValueError(f"CUT's generator must be a ResNet generator (resnet_9blocks, resnet_6blocks ...), got {self.netG!r}")


@dataclass
class SinCUTConfig(CUTConfig):
    """SinCUT's defaults (the reference's ``--model sincut``)."""

    data: SingleImageDataConfig = field(default_factory=SingleImageDataConfig)  # 64 px crops, zoom up to 3x
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=16, n_epochs=8, n_epochs_decay=8))
    netG: str = "stylegan2"  # stylegan2 | smallstylegan2 (2 residual blocks, no noise)
    ngf: int = 10
    netD: str = "stylegan2"
    ndf: int = 8
    stylegan2_G_num_downsampling: int = 1
    gan_mode: str = "nonsaturating"
    lambda_NCE: float = 4.0
    nce_layers: tuple[int, ...] = (0, 2, 4)
    num_patches: int = 1
    nce_includes_all_negatives_from_minibatch: bool = True
    lambda_R1: float = 1.0
    lambda_identity: float = 1.0
    lr: float = 2e-3
    beta1: float = 0.0
    beta2: float = 0.99

    def check_networks(self) -> None:
        if self.netG not in ("stylegan2", "smallstylegan2"):
            raise ValueError(f"SinCUT's generator is stylegan2 or smallstylegan2, got {self.netG!r}")
        if self.netD != "stylegan2":
            raise ValueError(f"SinCUT's discriminator is stylegan2, got {self.netD!r}")


# -- helpers --------------------------------------------------------------------------------------
def unwrap(net: nn.Module) -> nn.Module:
    """The plain network inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(net, "module", None)
        if isinstance(inner, nn.Module):
            net = inner
            continue
        inner = getattr(net, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            net = inner
            continue
        return net


def mirrored_patch_ids(patch_ids: Tensor, width: int) -> Tensor:
    """The ids (y * W + x, ``gan_style.nn.patch_sampler``) of the same positions in a map flipped
    left-right: y * W + (W - 1 - x)."""
    return patch_ids - 2 * (patch_ids % width) + (width - 1)


def run_keeping_features(
    run: Callable[[Tensor], Tensor], layers: nn.Sequential, indices: Sequence[int], x: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """``run(x)`` (a full forward, through DDP if wrapped), also returning the outputs of
    ``layers[i]`` for ``i`` in ``indices``: the very tensors ``encode(x, indices)`` returns. The
    hooks live only for this call. ``encode`` stops after the deepest layer, the full forward does
    not: if the layer after the deepest one works in place (a ReLU), its output is copied first."""
    modules = list(layers)
    kept: dict[int, Tensor] = {}
    handles = []
    deepest = max(indices, default=-1)
    for index in sorted(set(indices)):
        overwritten = index == deepest and index + 1 < len(modules) and getattr(modules[index + 1], "inplace", False)

        def keep(module: nn.Module, inputs: Any, output: Tensor, index: int = index, overwritten: bool = overwritten) -> None:
            kept[index] = output.clone() if overwritten else output

        handles.append(modules[index].register_forward_hook(keep))
    try:
        out = run(x)
    finally:
        for handle in handles:
            handle.remove()
    return out, [kept[i] for i in indices]


class CUTUnpairedDataset(UnpairedImageDataset):
    """The reference CUT's unaligned data: item i pairs A image i % |A| with a random B image;
    an epoch has |A| + |B| items; with ``fixed_crop_when_decaying``, epochs after ``n_epochs``
    resize straight to crop_size (no crop jitter, flips kept)."""

    def __init__(self, config: DataConfig, seed: int, n_epochs: int, fixed_crop_when_decaying: bool):
        super().__init__(config, seed)
        self.n_epochs = n_epochs
        self._jittered = (self.transform_A, self.transform_B)
        if fixed_crop_when_decaying and config.preprocess in ("resize_and_crop", "scale_width_and_crop"):
            def fixed(grey: bool) -> ImageTransform:
                return ImageTransform(config.preprocess, config.crop_size, config.crop_size, not config.no_flip, grey)

            self._fixed = (fixed(config.grayscale_A), fixed(config.grayscale_B))
        else:
            self._fixed = self._jittered

    def __len__(self) -> int:
        return self.len_A + self.len_B

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Tensor | str]:
        epoch = index[0] if isinstance(index, tuple) else self.epoch
        self.transform_A, self.transform_B = self._fixed if epoch > self.n_epochs else self._jittered
        return super().__getitem__(index)


# -- the method -----------------------------------------------------------------------------------
FASTCUT = {
    "nce_idt": False,
    "lambda_NCE": 10.0,
    "flip_equivariance": True,
    "train": {"n_epochs": 150, "n_epochs_decay": 50},
}
DEMO = {
    "data": {"root": "demo", "load_size": 72, "crop_size": 64},
    "ngf": 16,
    "ndf": 16,
    "netG": "resnet_6blocks",
    "train": {"n_epochs": 3, "n_epochs_decay": 2, "log_every": 20, "image_every": 100, "save_every": 500},
}
# Reduced widths at 32 px on the demo set: the conformance tests and CI.
SMOKE = {
    "data": {"root": "demo", "load_size": 36, "crop_size": 32, "max_dataset_size": 2},
    "ngf": 4,
    "ndf": 4,
    "netG": "resnet_6blocks",
    "netF_nc": 16,
    "num_patches": 16,
    "train": {"n_epochs": 1, "n_epochs_decay": 2, "log_every": 2, "image_every": 1000, "save_every": 1000},
}


class CUT(Method):
    """CUT (and, through its presets, FastCUT): networks G, D and the projection heads F."""

    name = "cut"
    Config = CUTConfig
    presets: dict[str, dict[str, Any]] = {
        "paper": {},  # CUT as published
        "fastcut": FASTCUT,
        "demo": DEMO,  # small networks on the procedural 64 px demo set, a few CPU minutes
        "fastcut_demo": {**DEMO, **{k: v for k, v in FASTCUT.items() if k != "train"}},
        "smoke": SMOKE,
    }
    default_preset = "paper"
    ema_networks = ("G",)

    config: CUTConfig

    # -- networks and optimisers ---------------------------------------------------------------
    def build_generator(self) -> nn.Module:
        c = self.config
        spec = GeneratorSpec(c.netG, c.ngf, c.normG, False, c.input_nc, c.output_nc, c.antialias, c.antialias_up)
        return build_generator(spec, c.init_type, c.init_gain)

    def build_discriminator(self) -> nn.Module:
        c = self.config
        spec = DiscriminatorSpec(c.netD, c.ndf, c.n_layers_D, c.normD, c.output_nc, antialias=c.antialias and c.netD != "pixel")
        return build_discriminator(spec, c.init_type, c.init_gain)

    def encoder_layers(self, G: nn.Module) -> nn.Sequential:
        """The Sequential that ``nce_layers`` index (and ``G.encode`` runs)."""
        return G.model

    def generate(self, G: nn.Module, x: Tensor, noise: torch.Generator | None = None) -> Tensor:
        return G(x)

    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        G = self.build_generator()
        D = self.build_discriminator()
        # The heads H_l, built up front from the channels of G's features (the reference builds
        # them lazily on the first batch).
        channels = feature_channels(G, c.nce_layers, c.input_nc)
        heads = PatchSampleMLP(channels, c.netF_nc, use_mlp=c.netF == "mlp_sample", init_type=c.init_type, init_gain=c.init_gain)
        return {"G": G, "D": D, "F": heads}

    def optimizers(self) -> list[OptimizerSpec]:
        # The reference has one Adam for G and one for F with the same hyper-parameters and
        # schedule, stepped after the same backward pass; Adam works per parameter, so one Adam
        # over both is the same update (and one fused foreach step).
        c = self.config
        betas = (c.beta1, c.beta2)
        trained_with_G = ("G", "F") if c.netF == "mlp_sample" else ("G",)
        return [OptimizerSpec("D", ("D",), c.lr, betas), OptimizerSpec("G", trained_with_G, c.lr, betas)]

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", self.discriminator_step), Phase("G", "G", self.generator_step)]

    # -- one iteration -------------------------------------------------------------------------
    @property
    def translates_target_images(self) -> bool:
        """Whether G also translates y (for the PatchNCE term on Y or the identity loss)."""
        return self.config.nce_idt or self.config.lambda_identity > 0

    def forward(self, ctx: StepContext, batch: Mapping[str, Any]) -> dict[str, Any]:
        """G on [x; y] once (x alone for FastCUT); keep the encoder features of the sources."""
        c = self.config
        real_A, real_B = batch["A"], batch["B"]
        real = torch.cat([real_A, real_B]) if self.translates_target_images else real_A
        # The engine's random streams (per process, checkpointed): FastCUT's flips, PatchNCE's
        # patch positions, SinCUT's generator noise.
        flipped = c.flip_equivariance and bool(torch.rand((), generator=ctx.rng("flip")) < 0.5)
        G = ctx.nets["G"]
        G_plain = unwrap(G)
        keep = list(c.nce_layers) if c.lambda_NCE > 0 and not flipped else []
        fake, source_features = run_keeping_features(
            lambda x: self.generate(G, x, ctx.rng("noise")), self.encoder_layers(G_plain), keep, real.flip(3) if flipped else real
        )
        if c.lambda_NCE > 0 and flipped:
            # The forward saw flip(x); the keys are the features of x itself.
            with torch.no_grad():
                source_features = G_plain.encode(real, list(c.nce_layers))
        # split, not slicing: a slice's backward zero-fills a tensor the size of the whole batch
        fake_B, idt_B = fake.split(real_A.shape[0]) if self.translates_target_images else (fake, None)
        if flipped and idt_B is not None:
            idt_B = idt_B.flip(3)
        return {
            "fake": fake,  # G's output on the (possibly flipped) batch, with its graph
            "fake_B": fake_B,
            "idt_B": idt_B,
            "flipped": flipped,
            "source_features": [f.detach() for f in source_features],
        }

    def discriminator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        """0.5 * (L_GAN(D(y), real) + L_GAN(D(G(x)), fake)) [+ R1 on the real images]."""
        c = self.config
        D = ctx.nets["D"]
        fake_B = ctx.carry["fake_B"].detach()
        real_B = batch["B"]
        if c.lambda_R1 > 0:
            real_B = real_B.detach().requires_grad_(True)
        if c.normD != "batch":  # per-image layers: one call on [G(x); y] gives the same scores
            scores = D(torch.cat([fake_B, real_B]))
            pred_fake, pred_real = scores[: fake_B.shape[0]], scores[fake_B.shape[0] :]
        else:
            pred_fake, pred_real = D(fake_B), D(real_B)
        loss_fake = gan_loss(pred_fake, False, c.gan_mode)
        loss_real = gan_loss(pred_real, True, c.gan_mode)
        losses = {"D": 0.5 * (loss_fake + loss_real)}
        if c.lambda_R1 > 0:
            # gamma / 2 * E||grad D(y)||^2 at every step (no lazy regularisation), as the reference
            losses["D_R1"] = 0.5 * c.lambda_R1 * r1_penalty(pred_real, real_B)
        return StepOutput(losses, logs={"D_real": loss_real.detach(), "D_fake": loss_fake.detach()})

    def patch_nce_loss(self, heads: nn.Module, query_features: Sequence[Tensor], key_features: Sequence[Tensor], patch_rng: torch.Generator,
                       mirrored: bool = False) -> Tensor:
        """lambda_NCE * L_PatchNCE (eq. 3 as the reference averages it): sample ``num_patches``
        positions per layer, project keys and queries at the same positions with H_l, then the mean
        over layers of the mean per-patch loss of eq. 2. The keys carry no gradient. ``mirrored``:
        the query maps are left-right flipped against the keys' (FastCUT's flipped steps), so each
        query is read at the mirror image of its key's position: the reference's flipping of the
        whole maps back, without copying them (a flipped bf16 FastCUT step 0.99 of the time, paired)."""
        c = self.config
        with torch.no_grad():
            keys, patch_ids = heads(key_features, c.num_patches, generator=patch_rng)
        if mirrored:
            patch_ids = [mirrored_patch_ids(ids, query.shape[-1]) for ids, query in zip(patch_ids, query_features, strict=True)]
        queries, _ = heads(query_features, c.num_patches, patch_ids=patch_ids)
        nce = multilayer_patch_nce_loss(queries, keys, c.nce_T, c.nce_includes_all_negatives_from_minibatch)
        return c.lambda_NCE * nce

    def generator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        """eq. 5: L_GAN(G(x)) + PatchNCE on X [+ PatchNCE on Y, averaged] [+ identity L1]."""
        c = self.config
        carry = ctx.carry
        fake_B, idt_B = carry["fake_B"], carry["idt_B"]
        n = fake_B.shape[0]
        losses: dict[str, Tensor] = {}
        logs: dict[str, Tensor] = {}
        if c.lambda_GAN > 0:
            losses["G_GAN"] = c.lambda_GAN * gan_loss(ctx.nets["D"](fake_B), True, c.gan_mode, for_discriminator=False)
        if c.lambda_NCE > 0:
            # One encoder pass over [G(x); G(y)] gives the queries of both terms.
            # In a flipped step G translated flip(x): its queries' maps are the keys' mirrored left-right.
            queries = unwrap(ctx.nets["G"]).encode(carry["fake"], list(c.nce_layers))
            mirrored = carry["flipped"]
            keys = carry["source_features"]
            if self.translates_target_images:  # [x; y] -> the x and y halves (split: see forward)
                queries_X, queries_Y = zip(*(q.split(n) for q in queries))
                keys_X, keys_Y = zip(*(k.split(n) for k in keys))
            else:
                queries_X, keys_X = queries, keys
            nce_X = self.patch_nce_loss(ctx.nets["F"], queries_X, keys_X, ctx.rng("patch_ids"), mirrored)
            logs["NCE_X"] = nce_X.detach()
            if c.nce_idt:
                nce_Y = self.patch_nce_loss(ctx.nets["F"], queries_Y, keys_Y, ctx.rng("patch_ids"), mirrored)
                logs["NCE_Y"] = nce_Y.detach()
                losses["NCE"] = 0.5 * (nce_X + nce_Y)
            else:
                losses["NCE"] = nce_X
        if c.lambda_identity > 0:
            losses["idt"] = c.lambda_identity * F.l1_loss(idt_B, batch["B"])
        # Keep only detached images for the visuals; drop the graph and the features.
        shown = {"fake_B": fake_B.detach(), "idt_B": idt_B.detach() if idt_B is not None else None}
        return StepOutput(losses, carry={**shown, "fake": None, "source_features": None}, logs=logs)

    # -- data, visuals, inference --------------------------------------------------------------
    def build_dataset(self, seed: int, world_size: int = 1) -> torch.utils.data.Dataset:
        c = self.config
        return CUTUnpairedDataset(c.data, seed, c.train.n_epochs, c.fixed_crop_when_decaying)

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        shape_A = (batch_size, self.config.input_nc, image_size, image_size)
        shape_B = (batch_size, self.config.output_nc, image_size, image_size)
        return {"A": torch.rand(shape_A, generator=generator) * 2 - 1, "B": torch.rand(shape_B, generator=generator) * 2 - 1}

    def visuals(self, batch: Mapping[str, Any], carry: Mapping[str, Any], nets: Mapping[str, nn.Module] | None = None) -> dict[str, Tensor]:
        fake_B = carry["fake_B"]
        shown = {"real_A": batch["A"], "fake_B": fake_B.flip(3) if carry.get("flipped") else fake_B, "real_B": batch["B"]}
        if carry.get("idt_B") is not None:
            shown["idt_B"] = carry["idt_B"]
        return shown

    def translator(self, nets: Mapping[str, nn.Module], direction: str = "AtoB") -> Translator:
        self.check_direction(direction)
        return Translator.of_network(nets["G"], self.name)


class FastCUT(CUT):
    """FastCUT (Sec. 4): CUT without the PatchNCE term on Y, lambda_NCE 10, flip equivariance,
    150 + 50 epochs. The same class; only the default preset differs."""

    name = "fastcut"
    presets = {"paper": FASTCUT, "demo": CUT.presets["fastcut_demo"], "smoke": {**SMOKE, **{k: v for k, v in FASTCUT.items() if k != "train"}}}
    default_preset = "paper"


class SinCUT(CUT):
    """SinCUT (Sec. 5.3): CUT on crops of one image per domain, with StyleGAN2-style networks,
    the non-saturating loss + R1, and an L1 identity loss (the losses are CUT's, see ``CUT``)."""

    name = "sincut"
    Config = SinCUTConfig
    kernel_probe = "stylegan2"
    presets = {
        "paper": {},
        # reduced widths for CPU runs (a few hundred steps in minutes)
        "small": {"ngf": 4, "ndf": 4, "train": {"batch_size": 8, "log_every": 20, "image_every": 200}},
        # the demo set's first photo and painting, 32 px crops, tiny widths: conformance tests and CI
        "smoke": {
            "ngf": 2,
            "ndf": 2,
            "data": {"root": "demo", "crop_size": 32, "load_size": 64, "length": 8},
            "train": {"batch_size": 2, "n_epochs": 1, "n_epochs_decay": 2, "log_every": 2, "image_every": 1000, "save_every": 1000},
        },
    }
    default_preset = "paper"

    config: SinCUTConfig

    def build_generator(self) -> nn.Module:
        c = self.config
        small = c.netG == "smallstylegan2"
        spec = SinCUTGeneratorSpec.from_reference_options(
            c.ngf, c.data.load_size, c.data.crop_size, c.stylegan2_G_num_downsampling, n_blocks=2 if small else 6, inject_noise=not small
        )
        return SinCUTGenerator(spec)  # StyleGAN2 layers keep their own N(0, 1) init

    def build_discriminator(self) -> nn.Module:
        c = self.config
        return SinCUTDiscriminator(SinCUTDiscriminatorSpec.from_reference_options(c.ndf, c.data.load_size, c.data.crop_size))

    def encoder_layers(self, G: nn.Module) -> nn.Sequential:
        return G.encoder.convs

    def generate(self, G: nn.Module, x: Tensor, noise: torch.Generator | None = None) -> Tensor:
        return G(x, generator=noise)

    def build_dataset(self, seed: int, world_size: int = 1) -> torch.utils.data.Dataset:
        from gan_style.data.single_image import SingleImageDataset

        return SingleImageDataset(self.config.data, seed, self.config.train.batch_size, world_size)

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        """Training always sees ``crop_size`` crops (D takes nothing else), so the step cost does not
        depend on ``image_size``: crops at random positions of a random ``image_size`` image per
        domain (independent random crops when the image is not larger than one crop)."""
        crop = self.config.data.crop_size
        batch: dict[str, Any] = {}
        for domain in "AB":
            if image_size <= crop:
                batch[domain] = torch.rand(batch_size, 3, crop, crop, generator=generator) * 2 - 1
                continue
            image = torch.rand(1, 3, image_size, image_size, generator=generator) * 2 - 1
            corners = torch.randint(0, image_size - crop + 1, (batch_size, 2), generator=generator).tolist()
            batch[domain] = torch.cat([image[..., y : y + crop, x : x + crop] for y, x in corners])
        return batch
