"""MUNIT: Huang, Liu, Belongie, Kautz, "Multimodal Unsupervised Image-to-Image Translation", ECCV 2018.

An image x_i of domain i is assumed to be a **content** code c, shared by the domains (a spatial
map: the layout), combined with a **style** code s_i of that domain (a vector: the appearance),
Sec. 3.1. Each domain has an auto-encoder (Fig. 2): encoders E^c_i, E^s_i and a decoder G_i
(``gan_style.nn.munit_networks``; here ``G_A``, ``G_B``). To translate x_1 into domain 2, its content
goes through the other domain's decoder with a style s_2 drawn from the prior q(s_2) = N(0, I):
x_1->2 = G_2(E^c_1(x_1), s_2). Different draws give different translations (multimodality); the
style encoded from an example image of domain 2 gives an example-guided one.

The objective (Sec. 3.2), for both directions alike:

    L^x1_recon = E ||G_1(E^c_1(x_1), E^s_1(x_1)) - x_1||_1                      (eq. 1, image reconstruction)
    L^c1_recon = E ||E^c_2(G_2(c_1, s_2)) - c_1||_1                            (eq. 2, content reconstruction)
    L^s2_recon = E ||E^s_2(G_2(c_1, s_2)) - s_2||_1                            (eq. 3, style reconstruction)
    L^x2_GAN   = E[log(1 - D_2(G_2(c_1, s_2)))] + E[log D_2(x_2)]               (eq. 4)
    min_{E, G} max_D  L^x1_GAN + L^x2_GAN + lambda_x (L^x1_recon + L^x2_recon)
                      + lambda_c (L^c1_recon + L^c2_recon) + lambda_s (L^s1_recon + L^s2_recon)   (eq. 5)

with lambda_x = 10, lambda_c = lambda_s = 1 and, in place of eq. 4's cross-entropy, least squares
(LSGAN, implementation details) summed over the scales of a multi-scale discriminator (pix2pixHD).
Two optional terms of the release's configurations: the **explicit cycle** x_1 -> 2 -> 1 decoded with
x_1's own style (the style-augmented cycle consistency of Sec. 4 made a loss; weight 10 for
summer2winter and SYNTHIA -> Cityscapes), and the **domain-invariant perceptual loss** (the paper's
implementation details): the distance between VGG features of x_1->2 and x_1 after instance
normalisation, which removes the domain-specific feature statistics (VGG-16 relu5_3, MSE; weight 1
for street scenes).

Each iteration updates the discriminators once, then the auto-encoders once. Both steps use one
shared ``forward``: the D step judges the detached translations that the G step back-propagates
through. The reference runs a second generator forward for the D step instead; the two are equal
up to the random draw of the styles (the generators do not change in between), so this saves one
of the two encoder/decoder passes. Within a pass the decoder of one domain runs once on the batch
[own content; other domain's content] with [own style; random style]: AdaIN, layer norm and the
convolutions treat every image on its own, so batching changes no value (tests/test_munit.py).

Names: ``G_A`` encodes and decodes domain A (A->B = G_B.decode(G_A content, a style of B)); ``D_A``
judges domain A images (real A vs translations B->A). Loss names: ``recon_x_A`` (eq. 1 for A),
``recon_c_A`` (A's content recovered from A->B), ``recon_s_A`` (the random A style recovered from
B->A), ``adv_A`` (D_A on B->A), ``cyc_x_A`` (A->B->A), ``vgg_A`` (B->A against its source).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from gan_style.data.config import DataConfig
from gan_style.engine.config import TrainConfig
from gan_style.engine.contract import InputSpec, Method, MethodConfig, OptimizerSpec, Phase, StepContext, StepOutput, Translator
from gan_style.errors import UserError
from gan_style.losses.adversarial import gan_loss
from gan_style.nn.discriminators import MultiScaleDiscriminator, MultiScaleDiscriminatorSpec
from gan_style.nn.layers import INIT_TYPES, init_weights, instance_norm
from gan_style.nn.munit_networks import STYLE_DOWNSAMPLE, MUNITGenerator, MUNITGeneratorSpec

__all__ = ["MUNIT", "MUNITAutoEncoder", "MUNITConfig", "config_overrides_from_specs", "random_style", "random_styles"]

logger = logging.getLogger(__name__)

#: gan_mode -> the mode of ``gan_style.losses.adversarial.gan_loss``
GAN_MODES = {"lsgan": "lsgan", "nsgan": "vanilla", "hinge": "hinge"}
#: per-sample discriminator norms: real and fake images can share one batch
PER_SAMPLE_NORMS = ("none", "in", "ln")
#: how many fixed random styles the training visuals show per direction
VISUAL_STYLES = 6


@dataclass
class MUNITConfig(MethodConfig):
    """The paper's settings (the release's ``edges2shoes`` / ``edges2handbags`` configurations);
    the option names are the release's, with ``gen_`` / ``dis_`` for its ``gen`` / ``dis`` groups."""

    # 256 px crops of images resized to 256, random flips; a grey domain (data.grayscale_A/B) has 1 channel
    data: DataConfig = field(default_factory=lambda: DataConfig(load_size=256, crop_size=256))
    # batch 1, 1,000,000 iterations, lr x 0.5 every 100,000 (the release's step policy)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            batch_size=1, lr_unit="iteration", lr_policy="step", lr_step_size=100_000, lr_gamma=0.5,
            max_steps=1_000_000, log_every=100, image_every=1000, save_every=10_000,
        )
    )
    # auto-encoders (MUNITGeneratorSpec)
    gen_dim: int = 64
    mlp_dim: int = 256
    style_dim: int = 8
    n_downsample: int = 2
    n_res: int = 4
    activ: str = "relu"
    pad_type: str = "reflect"
    gen_init: str = "kaiming"
    gen_init_gain: float = 0.02  # normal / xavier / orthogonal only
    # discriminators (MultiScaleDiscriminatorSpec)
    dis_dim: int = 64
    dis_n_layer: int = 4
    dis_norm: str = "none"
    dis_activ: str = "lrelu"
    num_scales: int = 3
    dis_pad_type: str = "reflect"
    dis_init: str = "normal"
    dis_init_gain: float = 0.02
    gan_mode: str = "lsgan"  # lsgan | nsgan | hinge
    spectral_norm: bool = False  # on every conv and linear weight of G and D (imaginaire)
    # objective (eq. 5) and the optional terms
    gan_w: float = 1.0
    recon_x_w: float = 10.0
    recon_s_w: float = 1.0
    recon_c_w: float = 1.0
    recon_x_cyc_w: float = 0.0
    vgg_w: float = 0.0
    #: torchvision's vgg16-397923af.pth for vgg_w > 0; "": torchvision's cache; "random": random weights (tests)
    vgg_weights: str = ""
    # optimisers: Adam (L2 weight decay), the same for G and D unless dis_lr is set
    lr: float = 1e-4
    dis_lr: float | None = None
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        if self.gan_mode not in GAN_MODES:
            raise ValueError(f"gan_mode must be one of {', '.join(GAN_MODES)}, got {self.gan_mode!r}")
        for name in ("gen_init", "dis_init"):
            if getattr(self, name) not in INIT_TYPES:
                raise ValueError(f"{name} must be one of {', '.join(INIT_TYPES)}, got {getattr(self, name)!r}")
        if self.vgg_w > 0 and self.channels != (3, 3):
            raise ValueError("the perceptual loss (vgg_w > 0) needs RGB images in both domains (VGG-16 takes RGB)")
        crop, multiple = self.data.crop_size, 2**self.n_downsample
        if crop % multiple:
            raise ValueError(f"data.crop_size ({crop}) must be a multiple of 2^n_downsample = {multiple}")
        # each scale halves the image and each D layer halves it again; the last layer's reflection
        # padding needs at least 2 pixels
        least = 2 ** (self.num_scales + self.dis_n_layer - 1)
        if crop < least:
            raise ValueError(f"data.crop_size ({crop}) is too small for {self.num_scales} scales of {self.dis_n_layer} layers: "
                             f"needs >= {least}; lower num_scales or dis_n_layer")

    @property
    def channels(self) -> tuple[int, int]:
        return 1 if self.data.grayscale_A else 3, 1 if self.data.grayscale_B else 3


# -- networks ---------------------------------------------------------------------------------------
class MUNITAutoEncoder(MUNITGenerator):
    """``MUNITGenerator`` (same modules and state-dict keys) whose forward also encodes or decodes:
    DDP synchronises the gradients of what runs through its wrapper's forward, so training calls
    ``G(x, op="encode")`` and ``G(c, s, op="decode")`` rather than the methods. ``G(x)`` is still
    the reconstruction G(E^c(x), E^s(x))."""

    def forward(self, *inputs: Tensor, op: str = "reconstruct") -> Any:  # type: ignore[override]
        if op == "reconstruct":
            return super().forward(*inputs)
        if op == "encode":
            return self.encode(*inputs)
        if op == "decode":
            return self.decode(*inputs)
        raise ValueError(f"op must be 'reconstruct', 'encode' or 'decode', got {op!r}")


def apply_spectral_norm(net: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every conv and linear weight of ``net``."""
    for module in list(net.modules()):
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            spectral_norm(module)
    return net


@contextmanager
def evaluating(*nets: nn.Module) -> Iterator[None]:
    """Eval mode for a while: spectral norm's power iteration must not advance outside training."""
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    try:
        yield
    finally:
        for net, mode in zip(nets, modes):
            net.train(mode)


def random_styles(count: int, style_dim: int, seed: int = 0, start: int = 0) -> Tensor:
    """Codes ``start`` .. ``start + count - 1`` of the stream of N(0, I) style codes seeded by
    ``seed``, (count, style_dim, 1, 1): ``--num-styles N --seed S`` translates with codes 0 .. N-1."""
    if start < 0 or count < 0:
        raise UserError(f"style numbers count from 0, got start {start}, count {count}")
    codes = torch.randn(start + count, style_dim, 1, 1, generator=torch.Generator().manual_seed(seed))
    return codes[start:]


def random_style(style_dim: int, seed: int = 0, number: int = 0) -> Tensor:
    """The ``number``-th code of the stream seeded by ``seed``, (1, style_dim, 1, 1)."""
    return random_styles(1, style_dim, seed, number)


def decode_batched(G: nn.Module, pairs: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """G(c, s) for every (content, style) pair with one decoder call when the contents have one
    shape: the decoder's layers work per image, so the batch gives each pair's own output."""
    contents, styles = zip(*pairs)
    if len({c.shape[1:] for c in contents}) > 1:
        return [G(c, s, op="decode") for c, s in pairs]
    # torch.split rather than slicing: split's backward concatenates, a slice's zero-fills the batch
    return list(G(torch.cat(contents), torch.cat(styles), op="decode").split([c.shape[0] for c in contents]))


def perceptual_distances(vgg: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """The domain-invariant perceptual loss of each image against its target, (B,): the mean
    squared difference of instance-normalised VGG-16 relu5_3 features; the normalisation removes
    the feature statistics that carry the domain. The targets carry no gradient."""
    with torch.no_grad():
        wanted = instance_norm(vgg(targets, ["relu5_3"])["relu5_3"].float())
    features = instance_norm(vgg(images, ["relu5_3"])["relu5_3"].float())
    return (features - wanted).pow(2).flatten(1).mean(1)


# -- the method -------------------------------------------------------------------------------------
#: reduced widths, the whole architecture (every block kind) kept
SMALL = {"gen_dim": 16, "mlp_dim": 64, "n_res": 2, "dis_dim": 16}


class MUNIT(Method):
    """MUNIT's two auto-encoders (``G_A``, ``G_B``, one Adam) and two multi-scale discriminators
    (``D_A``, ``D_B``, the other). Batches: ``{"A", "B"}`` in [-1, 1] (``UnpairedImageDataset``)."""

    name = "munit"
    Config = MUNITConfig
    presets: dict[str, dict[str, Any]] = {
        # edges <-> shoes / handbags, the paper's main setting
        "paper": {},
        # the release's summer <-> winter (Yosemite) configuration: an explicit cycle loss
        "summer2winter": {"recon_x_cyc_w": 10.0},
        # SYNTHIA -> Cityscapes: the cycle and the domain-invariant perceptual loss, 512 px
        "synthia2cityscape": {"recon_x_cyc_w": 10.0, "vgg_w": 1.0, "data": {"load_size": 512, "crop_size": 512}},
        # the improvements published later with MUNIT (imaginaire): spectral norm in G and D, the
        # hinge loss, two time-scale learning rates without decay, orthogonal init, weight averaging
        "imaginaire": {
            "spectral_norm": True, "gan_mode": "hinge", "lr": 1e-4, "dis_lr": 4e-4,
            "gen_init": "orthogonal", "gen_init_gain": 1.0, "dis_init": "orthogonal", "dis_init_gain": 1.0,
            "train": {"lr_policy": "constant", "ema_decay": 0.9999, "ema_start_step": 1000},
        },
        # small networks on the built-in 64 px demo set: a few CPU minutes
        "demo": {
            **SMALL,
            "data": {"root": "demo", "load_size": 64, "crop_size": 64},
            "train": {"max_steps": 2000, "lr_step_size": 1000, "log_every": 20, "image_every": 200, "save_every": 1000},
        },
        # tiny networks at 32 px (two D layers per scale): the conformance tests and CI
        "smoke": {
            "gen_dim": 4, "mlp_dim": 8, "n_res": 1, "dis_dim": 4, "dis_n_layer": 2,
            "data": {"root": "demo", "load_size": 36, "crop_size": 32, "max_dataset_size": 4},
            "train": {"max_steps": 100, "lr_step_size": 50, "log_every": 2, "image_every": 1000, "save_every": 1000},
        },
    }
    default_preset = "paper"
    ema_networks = ("G_A", "G_B")
    directions = ("AtoB", "BtoA")

    config: MUNITConfig

    def __init__(self, config: MUNITConfig):
        super().__init__(config)
        # the perceptual loss's VGG-16: a fixed part of the loss, not of the model, loaded on first
        # use (so checkpoints do not carry its 59 MB and inference never needs its file)
        self._vgg: nn.Module | None = None

    # -- networks and optimisers ---------------------------------------------------------------
    def generator_spec(self, channels: int) -> MUNITGeneratorSpec:
        c = self.config
        return MUNITGeneratorSpec(dim=c.gen_dim, mlp_dim=c.mlp_dim, style_dim=c.style_dim, n_downsample=c.n_downsample,
                                  n_res=c.n_res, activ=c.activ, pad_type=c.pad_type, input_dim=channels)

    def discriminator_spec(self, channels: int) -> MultiScaleDiscriminatorSpec:
        c = self.config
        return MultiScaleDiscriminatorSpec(dim=c.dis_dim, n_layer=c.dis_n_layer, norm=c.dis_norm, activ=c.dis_activ, num_scales=c.num_scales,
                                           pad_type=c.dis_pad_type, gan_type="nsgan" if c.gan_mode == "nsgan" else "lsgan", input_dim=channels)

    def build_networks(self) -> dict[str, nn.Module]:
        c = self.config
        nets: dict[str, nn.Module] = {}
        for domain, channels in zip("AB", c.channels):
            # the release: kaiming (He, fan-in) for the auto-encoders, N(0, 0.02) for the discriminators
            nets[f"G_{domain}"] = init_weights(MUNITAutoEncoder(self.generator_spec(channels)), c.gen_init, c.gen_init_gain)
            nets[f"D_{domain}"] = init_weights(MultiScaleDiscriminator(self.discriminator_spec(channels)), c.dis_init, c.dis_init_gain)
        if c.spectral_norm:  # after the init: it re-parametrises the initialised weights
            nets = {name: apply_spectral_norm(net) for name, net in nets.items()}
        return dict(sorted(nets.items()))

    def optimizers(self) -> list[OptimizerSpec]:
        c = self.config
        betas = (c.beta1, c.beta2)
        return [
            OptimizerSpec("D", ("D_A", "D_B"), c.dis_lr if c.dis_lr is not None else c.lr, betas, c.weight_decay),
            OptimizerSpec("G", ("G_A", "G_B"), c.lr, betas, c.weight_decay),
        ]

    def phases(self) -> list[Phase]:
        return [Phase("D", "D", self.discriminator_step), Phase("G", "G", self.generator_step)]

    # -- one iteration -------------------------------------------------------------------------
    def sample_styles(self, ctx: StepContext, count: int, like: Tensor) -> Tensor:
        """s ~ q(s) = N(0, I), (count, style_dim, 1, 1), from the engine's checkpointed stream."""
        return torch.randn(count, self.config.style_dim, 1, 1, generator=ctx.rng("style")).to(like.device)

    def forward(self, ctx: StepContext, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Encode both domains, reconstruct each (eq. 1) and translate each into the other with a
        random style (eqs. 2-4), one decoder call per domain."""
        G_A, G_B = ctx.nets["G_A"], ctx.nets["G_B"]
        x_a, x_b = batch["A"], batch["B"]
        c_a, s_a = G_A(x_a, op="encode")
        c_b, s_b = G_B(x_b, op="encode")
        s_a_rand, s_b_rand = self.sample_styles(ctx, 2 * x_a.shape[0], x_a).split(x_a.shape[0])
        x_a_recon, x_ba = decode_batched(G_A, [(c_a, s_a), (c_b, s_a_rand)])
        x_b_recon, x_ab = decode_batched(G_B, [(c_b, s_b), (c_a, s_b_rand)])
        return {"c_a": c_a, "s_a": s_a, "c_b": c_b, "s_b": s_b, "s_a_rand": s_a_rand, "s_b_rand": s_b_rand,
                "x_a_recon": x_a_recon, "x_b_recon": x_b_recon, "x_ab": x_ab, "x_ba": x_ba}

    def _scores(self, D: nn.Module, fake: Tensor, real: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """D's maps on the fakes and on the reals, per scale; one call when D's norm is per image."""
        if self.config.dis_norm not in PER_SAMPLE_NORMS:
            return D(fake), D(real)
        scores = D(torch.cat([fake.to(real.dtype), real]))
        fake_scores, real_scores = zip(*(s.split([fake.shape[0], real.shape[0]]) for s in scores))
        return list(fake_scores), list(real_scores)

    def discriminator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        """D's side of eq. 4 (least squares by default, summed over scales): D_A tells real A
        images from translations B->A, D_B real B from A->B; weighted by gan_w like G's side."""
        c, mode = self.config, GAN_MODES[self.config.gan_mode]
        losses, logs = {}, {}
        for domain, fake in (("A", ctx.carry["x_ba"]), ("B", ctx.carry["x_ab"])):
            fake_scores, real_scores = self._scores(ctx.nets[f"D_{domain}"], fake.detach(), batch[domain])
            losses[f"D_{domain}"] = c.gan_w * (gan_loss(fake_scores, False, mode) + gan_loss(real_scores, True, mode))
            logs[f"D_{domain}_real"] = torch.stack([s.detach().float().mean() for s in real_scores]).mean()
            logs[f"D_{domain}_fake"] = torch.stack([s.detach().float().mean() for s in fake_scores]).mean()
        return StepOutput(losses, logs=logs)

    def generator_step(self, ctx: StepContext, batch: Mapping[str, Any]) -> StepOutput:
        """The auto-encoders' side of eq. 5, on the shared forward's translations."""
        c, mode, k = self.config, GAN_MODES[self.config.gan_mode], ctx.carry
        G_A, G_B = ctx.nets["G_A"], ctx.nets["G_B"]
        x_a, x_b = batch["A"], batch["B"]
        # the translations encoded again: B->A gives B's content and the random A style back
        c_b_recon, s_a_recon = G_A(k["x_ba"], op="encode")
        c_a_recon, s_b_recon = G_B(k["x_ab"], op="encode")
        losses = {
            "recon_x_A": c.recon_x_w * F.l1_loss(k["x_a_recon"], x_a),  # eq. 1
            "recon_x_B": c.recon_x_w * F.l1_loss(k["x_b_recon"], x_b),
            "recon_c_A": c.recon_c_w * F.l1_loss(c_a_recon, k["c_a"]),  # eq. 2
            "recon_c_B": c.recon_c_w * F.l1_loss(c_b_recon, k["c_b"]),
            "recon_s_A": c.recon_s_w * F.l1_loss(s_a_recon, k["s_a_rand"]),  # eq. 3
            "recon_s_B": c.recon_s_w * F.l1_loss(s_b_recon, k["s_b_rand"]),
            # eq. 4, the generators' side: the translations should pass for real
            "adv_A": c.gan_w * gan_loss(ctx.nets["D_A"](k["x_ba"]), True, mode, for_discriminator=False),
            "adv_B": c.gan_w * gan_loss(ctx.nets["D_B"](k["x_ab"]), True, mode, for_discriminator=False),
        }
        if c.recon_x_cyc_w > 0:  # the style-augmented cycle (Sec. 4) as a loss: back with the own style
            losses["cyc_x_A"] = c.recon_x_cyc_w * F.l1_loss(G_A(c_a_recon, k["s_a"], op="decode"), x_a)
            losses["cyc_x_B"] = c.recon_x_cyc_w * F.l1_loss(G_B(c_b_recon, k["s_b"], op="decode"), x_b)
        if c.vgg_w > 0:  # the domain-invariant perceptual loss: each translation against its source
            vgg = self.perceptual_network(x_a.device)
            distances = perceptual_distances(vgg, torch.cat([k["x_ba"], k["x_ab"]]), torch.cat([x_b, x_a]))  # one VGG call
            vgg_A, vgg_B = distances.split(x_a.shape[0])
            losses["vgg_A"], losses["vgg_B"] = c.vgg_w * vgg_A.mean(), c.vgg_w * vgg_B.mean()
        # keep detached images for the visuals; drop the codes and the graph
        shown = {name: k[name].detach() for name in ("x_a_recon", "x_b_recon", "x_ab", "x_ba")}
        dropped = dict.fromkeys(("c_a", "s_a", "c_b", "s_b", "s_a_rand", "s_b_rand"))
        return StepOutput(losses, carry={**shown, **dropped})

    def perceptual_network(self, device: torch.device) -> nn.Module:
        """VGG-16 features up to relu5_3, frozen, for images in [-1, 1]; loaded on first use."""
        from gan_style.nn.vgg import VGG16Features, load_vgg16

        if self._vgg is None:
            if self.config.vgg_weights == "random":
                logger.warning("MUNIT's perceptual loss with a randomly initialised VGG-16 (vgg_weights=random): only for tests")
                self._vgg = VGG16Features(input_range=(-1.0, 1.0)).requires_grad_(False).eval()
            else:
                self._vgg = load_vgg16(self.config.vgg_weights or None, input_range=(-1.0, 1.0))
        self._vgg = self._vgg.to(device)
        return self._vgg

    # -- data, visuals, inference --------------------------------------------------------------
    def build_dataset(self, seed: int, world_size: int = 1) -> torch.utils.data.Dataset:
        from gan_style.data.unpaired import UnpairedImageDataset

        return UnpairedImageDataset(self.config.data, seed=seed)

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        channels_A, channels_B = self.config.channels
        return {
            "A": torch.rand(batch_size, channels_A, image_size, image_size, generator=generator) * 2 - 1,
            "B": torch.rand(batch_size, channels_B, image_size, image_size, generator=generator) * 2 - 1,
        }

    def visuals(self, batch: Mapping[str, Any], carry: Mapping[str, Any], nets: Mapping[str, nn.Module] | None = None) -> dict[str, Tensor]:
        """Per domain: the image, its reconstruction and its translations with the same
        ``VISUAL_STYLES`` random styles every time (codes 0.. of seed 0, as ``--num-styles``)."""
        shown: dict[str, Tensor] = {}
        for source, target in (("A", "B"), ("B", "A")):
            real = batch[source][:1]
            shown[f"real_{source}"] = real
            if f"x_{source.lower()}_recon" in carry:
                shown[f"rec_{source}"] = carry[f"x_{source.lower()}_recon"][:1]
            if nets is None:
                continue
            encoder, decoder = nets[f"G_{source}"], nets[f"G_{target}"]
            with evaluating(encoder, decoder):
                content = encoder.enc_content(real)
                styles = random_styles(VISUAL_STYLES, self.config.style_dim).to(real.device)
                images = decoder.decode(content.expand(VISUAL_STYLES, -1, -1, -1), styles)
            shown.update({f"{source}to{target}_style{i}": image[None] for i, image in enumerate(images)})
        return shown

    def translator(self, nets: Mapping[str, nn.Module], direction: str = "AtoB") -> Translator:
        """``direction``'s translation: the input's content with the style of ``style`` (a style
        code, or an example image of the target domain whose style the target's encoder takes),
        else the ``style_number``-th random code of the stream seeded by ``seed``, the same for
        every image. Works on ``MUNITGenerator`` networks too (the reference's imported files)."""
        self.check_direction(direction)
        source, target = (nets["G_A"], nets["G_B"]) if direction == "AtoB" else (nets["G_B"], nets["G_A"])
        style_dim = target.spec.style_dim

        def bind(style: Tensor | None = None, seed: int | None = None, style_number: int = 0) -> Callable[[Tensor], Tensor]:
            with torch.no_grad():
                code = style_code(target, style) if style is not None else random_style(style_dim, 0 if seed is None else seed, style_number)

            def translate(images: Tensor) -> Tensor:
                content = source.enc_content(images)
                return target.decode(content, expand_styles(code.to(content.device), images.shape[0]))

            return translate

        inputs = (
            InputSpec("style", "image", "an example image of the target domain whose style the output takes, or style codes (B or 1, style_dim, 1, 1)"),
            InputSpec("seed", "int", "seed of the random styles (default 0); without style, the style is a code of this stream"),
            InputSpec("style_number", "int", "which code of the seed's stream (0, 1, ...; default 0): --num-styles N uses 0 .. N-1"),
        )
        return Translator(bind, size_multiple=source.size_multiple, inputs=inputs, description=f"MUNIT {direction}", local=False)

    def functions(self, nets: Mapping[str, nn.Module]) -> dict[str, Callable[..., Any]]:
        """``encode(images, domain="A") -> (content, style)``, ``decode(content, style, domain="B")
        -> images`` and ``random_styles(count, seed=0, start=0)`` (the codes ``translate``'s
        ``seed`` / ``style_number`` pick), on tensors in [-1, 1]."""

        def network(domain: str) -> nn.Module:
            if domain not in ("A", "B"):
                raise UserError(f"domain must be 'A' or 'B', got {domain!r}")
            return nets[f"G_{domain}"]

        def decode(content: Tensor, style: Tensor, domain: str = "B") -> Tensor:
            G = network(domain)
            return G.decode(content, expand_styles(style_code(G, style, images=False).to(content.device), content.shape[0]))

        return {
            "encode": lambda images, domain="A": network(domain).encode(images),
            "decode": decode,
            "random_styles": lambda count, seed=0, start=0: random_styles(count, nets["G_A"].spec.style_dim, seed, start),
        }


def style_code(G: MUNITGenerator, style: Tensor, images: bool = True) -> Tensor:
    """``style`` as codes (B, style_dim, 1, 1): codes as they are ((B, style_dim) reshaped), images
    (B, C, H, W) encoded by ``G``'s style encoder (example-guided translation, Sec. 3.1)."""
    dim, channels = G.spec.style_dim, G.spec.input_dim
    if style.ndim == 4 and style.shape[1:] == (dim, 1, 1):
        return style
    if style.ndim in (2, 3) and style.shape[-1] == dim:
        return style.reshape(-1, dim, 1, 1)
    if images and style.ndim == 4 and style.shape[1] == channels:
        least = 2**STYLE_DOWNSAMPLE  # four stride-2 convs with reflection padding
        if min(style.shape[-2:]) < least:
            raise UserError(f"a style image must be at least {least} x {least} pixels, got {style.shape[-1]} x {style.shape[-2]}")
        return G.enc_style(style)
    wanted = f"codes (B or 1, {dim}, 1, 1)" + (f" or images (B or 1, {channels}, H, W)" if images else "")
    raise UserError(f"style must be {wanted}, got shape {tuple(style.shape)}")


def expand_styles(codes: Tensor, count: int) -> Tensor:
    """One code for every image, or one per image."""
    if codes.shape[0] == count:
        return codes
    if codes.shape[0] == 1:
        return codes.expand(count, -1, -1, -1)
    raise UserError(f"{codes.shape[0]} styles for {count} images: give one style, or one per image")


def config_overrides_from_specs(specs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``MUNITConfig`` overrides (nested dict) that rebuild the networks described by
    ``specs``: the ``"specs"`` of :func:`gan_style.hub.munit.import_munit_checkpoint` (a
    ``MUNITGeneratorSpec`` for ``G_A`` / ``G_B``, a ``MultiScaleDiscriminatorSpec`` for ``D_A`` /
    ``D_B``, any subset). Use: ``config_from_overrides(MUNIT, "paper", config_overrides_from_specs(specs))``,
    then ``MUNIT(config).translator(networks)`` on the imported networks."""
    overrides: dict[str, Any] = {}
    data: dict[str, Any] = {}

    def shared(names: tuple[str, ...], fields: Mapping[str, str]) -> None:
        present = [(name, specs[name]) for name in names if name in specs]
        for ours, theirs in fields.items():
            values = {getattr(spec, theirs) for _, spec in present}
            if len(values) > 1:
                raise ValueError(f"{' and '.join(n for n, _ in present)} differ in {theirs} ({sorted(map(str, values))}); MUNITConfig has one {ours} for both")
            if values:
                overrides[ours] = values.pop()
        for name, spec in present:
            if spec.input_dim not in (1, 3):
                raise ValueError(f"{name} takes {spec.input_dim}-channel images; MUNITConfig supports 1 (data.grayscale_{name[-1]}) or 3")
            data[f"grayscale_{name[-1]}"] = spec.input_dim == 1

    shared(("G_A", "G_B"), {"gen_dim": "dim", "mlp_dim": "mlp_dim", "style_dim": "style_dim", "n_downsample": "n_downsample",
                            "n_res": "n_res", "activ": "activ", "pad_type": "pad_type"})
    shared(("D_A", "D_B"), {"dis_dim": "dim", "dis_n_layer": "n_layer", "dis_norm": "norm", "dis_activ": "activ",
                            "num_scales": "num_scales", "dis_pad_type": "pad_type", "gan_mode": "gan_type"})
    if data:
        overrides["data"] = data
    return overrides
