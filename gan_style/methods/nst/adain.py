"""Huang and Belongie, "Arbitrary Style Transfer in Real-time with Adaptive Instance
Normalization", ICCV 2017.

An encoder f (VGG-19 up to relu4_1, frozen) maps the content c and style s to feature maps; the
AdaIN layer (Sec. 5, Eq. 8) gives the content features the channel-wise mean and standard
deviation of the style features,

    AdaIN(x, y) = sigma(y) * (x - mu(x)) / sigma(x) + mu(y),                     (Eq. 8)
    t = AdaIN(f(c), f(s)),                                                         (Eq. 9)

and a decoder g, trained once for all styles, maps t back to an image, T(c, s) = g(t) (Eq. 10).
The decoder is trained (Sec. 6.2) with

    L = L_c + lambda * L_s,                                                        (Eq. 11)
    L_c = || f(g(t)) - t ||_2,                                                     (Eq. 12)
    L_s = sum_i || mu(phi_i(g(t))) - mu(phi_i(s)) ||_2
                + || sigma(phi_i(g(t))) - sigma(phi_i(s)) ||_2,                    (Eq. 13)

with phi_i = relu1_1, relu2_1, relu3_1, relu4_1; as the reference code, the norms are mean squared
errors. Test-time controls (Sec. 7.3): the content-style trade-off

    T(c, s, alpha) = g((1 - alpha) f(c) + alpha AdaIN(f(c), f(s))),                (Eq. 14)

interpolation between styles (a convex combination of the AdaIN outputs of several styles),
colour preservation (the style image recoloured to the content's colour statistics first, Gatys
et al. 2016b), and spatial control (AdaIN applied separately in each masked region of the
content features, with the statistics of that region and of its style).

Weights: the encoder and decoder load the files of naoto0804/pytorch-AdaIN (MIT licence) as they
are (``vgg_normalised.pth``, ``decoder.pth``; see :mod:`gan_style.nn.vgg`). The decoder trained by
``gan-style train train/adain.yaml`` has the same layout, so its checkpoint loads the same way.
Images are RGB in [0, 1] here (the reference's convention); the training data comes in the
project's [-1, 1] and is converted at the boundary.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from gan_style.data.content_style import ContentStyleDataset
from gan_style.engine.contract import InputSpec, Method, MethodConfig, OptimizerSpec, Phase, StepContext, StepOutput, Translator
from gan_style.losses.perceptual import mean_std_style_loss
from gan_style.methods.nst.gatys import normalised_blend
from gan_style.nn.adain import adaptive_instance_norm
from gan_style.nn.layers import ReflectionPad2d
from gan_style.nn.vgg import (
    ADAIN_RELEASE_URL,
    NormalisedVGGEncoder,
    find_weights,
    load_adain_encoder,
    load_state_dict_file,
)

__all__ = [
    "ADAIN_DECODER_FILE",
    "AdaINConfig",
    "AdaINDataConfig",
    "AdaINDecoder",
    "AdaINStylizer",
    "AdaINTraining",
    "adaptive_instance_norm",
    "load_adain_decoder",
    "masked_adaptive_instance_norm",
    "match_colour",
    "training_checkpoint",
]

ADAIN_DECODER_FILE = "decoder.pth"


# ---------------------------------------------------------------------------------------------
# The AdaIN layer (Sec. 5)
# ---------------------------------------------------------------------------------------------


def masked_adaptive_instance_norm(content: Tensor, styles: Sequence[Tensor], labels: Tensor, eps: float = 1e-5) -> Tensor:
    """Spatial control (Sec. 7.3): AdaIN in each region of ``content`` (1, C, H, W) separately.

    ``labels`` (H, W) holds, for each position, the index of the style in ``styles`` that region
    takes. The statistics of the content are those of the region alone (as the authors' Torch
    code), so each region is fully re-normalised to its style. Regions with fewer than two
    positions keep the content features.
    """
    if content.shape[0] != 1:
        raise ValueError("masked AdaIN takes one content image")
    flat = rearrange(content, "1 c h w -> c (h w)")
    out = flat.clone()
    labels = labels.flatten()
    for index, style in enumerate(styles):
        positions = (labels == index).nonzero(as_tuple=True)[0]
        if positions.numel() < 2:
            continue
        region = rearrange(flat[:, positions], "c n -> 1 c n 1")
        out[:, positions] = rearrange(adaptive_instance_norm(region, style, eps), "1 c n 1 -> c n")
    return rearrange(out, "c (h w) -> 1 c h w", h=content.shape[2])


def match_colour(source: Tensor, target: Tensor, eps: float = 1e-5) -> Tensor:
    """Recolour ``source`` (1, 3, H, W) in [0, 1] so that its pixels have the mean and covariance
    of ``target``'s: ``x' = A (x - mu_s) + mu_t`` with ``A = Sigma_t^(1/2) Sigma_s^(-1/2)``
    (Gatys, Bethge, Hertzmann and Shechtman 2016, "Preserving Color in Neural Artistic Style
    Transfer", Sec. 2, colour histogram matching with the symmetric matrix square root). AdaIN's
    colour preservation applies it to the style image, with the content as target."""

    def stats(image: Tensor) -> tuple[Tensor, Tensor]:
        pixels = rearrange(image.double(), "1 c h w -> c (h w)")
        mean = pixels.mean(dim=1, keepdim=True)
        centred = pixels - mean
        cov = centred @ centred.T / max(1, pixels.shape[1] - 1) + eps * torch.eye(3, dtype=torch.float64, device=image.device)
        return mean, cov

    def matrix_power(cov: Tensor, power: float) -> Tensor:
        values, vectors = torch.linalg.eigh(cov)
        return vectors @ torch.diag(values.clamp_min(eps) ** power) @ vectors.T

    source_mean, source_cov = stats(source)
    target_mean, target_cov = stats(target)
    transform = matrix_power(target_cov, 0.5) @ matrix_power(source_cov, -0.5)
    pixels = rearrange(source.double(), "1 c h w -> c (h w)")
    recoloured = transform @ (pixels - source_mean) + target_mean
    out = rearrange(recoloured, "c (h w) -> 1 c h w", h=source.shape[2])
    return out.clamp(0, 1).to(source.dtype)


# ---------------------------------------------------------------------------------------------
# The decoder (Sec. 6.1) and the stylising network
# ---------------------------------------------------------------------------------------------


class AdaINDecoder(nn.Sequential):
    """The decoder g: "mostly mirrors the encoder, with all pooling layers replaced by nearest
    up-sampling" and reflection padding (Sec. 6.1). relu4_1 features (512 channels, 1/8 size) ->
    RGB image in [0, 1] (not clamped). The layer indices are those of ``net.py``'s ``decoder`` in
    naoto0804/pytorch-AdaIN, so ``decoder.pth`` loads as it is (keys ``1.weight``, ``5.weight``,
    ... ``28.bias``)."""

    def __init__(self) -> None:
        def conv(in_channels: int, out_channels: int, relu: bool = True) -> list[nn.Module]:
            layers: list[nn.Module] = [ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, kernel_size=3)]
            return layers + [nn.ReLU()] if relu else layers

        def up() -> list[nn.Module]:
            return [nn.Upsample(scale_factor=2, mode="nearest")]

        super().__init__(
            *conv(512, 256), *up(),  # mirrors relu4_1 and pool3
            *conv(256, 256), *conv(256, 256), *conv(256, 256), *conv(256, 128), *up(),  # block 3
            *conv(128, 128), *conv(128, 64), *up(),  # block 2
            *conv(64, 64), *conv(64, 3, relu=False),  # block 1, to RGB
        )


def training_checkpoint(path: str | os.PathLike[str] | None) -> Path | None:
    """``path`` as a gan_style training checkpoint file (a run folder gives its newest intact
    checkpoint), or None if it is not one (e.g. the reference's ``decoder.pth``)."""
    from gan_style.engine.checkpoint import FORMAT, load_run_checkpoint

    if path is None or str(path) == "":
        return None
    candidate = Path(path).expanduser()
    if candidate.is_dir():
        return load_run_checkpoint(candidate)[0]
    if not candidate.is_file():
        return None
    return candidate if load_state_dict_file(candidate).get("format") == FORMAT else None


def load_adain_decoder(
    weights: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
) -> AdaINDecoder:
    """The decoder from ``decoder.pth`` (the reference's file), a gan_style training checkpoint of
    ``adain`` (``.pt``), or a run folder (its newest intact checkpoint). Without ``weights`` it
    looks for ``models/decoder.pth`` (the reference's default place)."""
    weights = training_checkpoint(weights) or weights
    path = find_weights(
        weights,
        [Path.cwd() / "models" / ADAIN_DECODER_FILE],
        "AdaIN decoder",
        f"Use a decoder you trained (gan-style train train/adain.yaml; pass the run folder or its "
        f"checkpoints/latest.pt), or the one released by naoto0804/pytorch-AdaIN (MIT licence) at "
        f"{ADAIN_RELEASE_URL}/{ADAIN_DECODER_FILE}: download it yourself and pass its path (--decoder FILE).",
    )
    state: Mapping[str, Any] = load_state_dict_file(path)
    if "networks" in state:  # a gan_style training checkpoint
        if state.get("method") != "adain" or "decoder" not in state["networks"]:
            raise ValueError(f"{path}: a training checkpoint of {state.get('method')!r}, not of 'adain'")
        state = state["networks"]["decoder"]
    decoder = AdaINDecoder()
    try:
        decoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: does not fit the AdaIN decoder layout (pytorch-AdaIN's net.py decoder): {error}") from None
    decoder.requires_grad_(False).eval()
    return decoder.to(device) if device is not None else decoder


class AdaINStylizer(nn.Module):
    """T(c, s) = g(AdaIN(f(c), f(s))) with the test-time controls of Sec. 7.3. Images in [0, 1]."""

    def __init__(self, encoder: NormalisedVGGEncoder, decoder: AdaINDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(
        self,
        content: Tensor,
        styles: Sequence[Tensor],
        alpha: float = 1.0,
        style_weights: Sequence[float] | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Stylise ``content`` (B, 3, H, W) with one or more ``styles`` (each (1 or B, 3, h, w)).

        * ``alpha`` in [0, 1]: Eq. 14; alpha = 0 decodes the content features unchanged;
        * ``style_weights``: blend the styles (normalised to sum 1; default equal weights);
        * ``labels``: (H, W) integer map of which style each pixel takes (spatial control; one
          content image); then ``style_weights`` is not used.

        The output has the content's size (the decoder's output, a multiple of 8, is cropped).
        """
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not styles:
            raise ValueError("need at least one style image")
        height, width = content.shape[-2:]
        content_features = self.encoder.encode(content)
        style_features = [self.encoder.encode(style) for style in styles]
        if labels is not None:
            if labels.shape != (height, width):
                raise ValueError(f"the label map is {tuple(labels.shape)}, the content {height}x{width}")
            small = F.interpolate(labels[None, None].float(), size=content_features.shape[-2:], mode="nearest")[0, 0].long()
            target = masked_adaptive_instance_norm(content_features, style_features, small)
        else:
            weights = normalised_blend(style_weights, len(styles))
            target = sum(w * adaptive_instance_norm(content_features, s) for w, s in zip(weights, style_features))
        target = alpha * target + (1.0 - alpha) * content_features  # Eq. 14
        return self.decoder(target)[..., :height, :width]



# ---------------------------------------------------------------------------------------------
# Training the decoder with the generic trainer (Sec. 6.2, 7.1)
# ---------------------------------------------------------------------------------------------


@dataclass
class AdaINDataConfig:
    """Where the training images are and how they are cropped (Sec. 7.1: shorter side resized to
    512, random 256 x 256 crops; content from MS-COCO, style from WikiArt)."""

    #: a folder holding ``content/`` and ``style/`` (used for the two below when they are unset);
    #: "demo": the built-in demo set's photos as content and its paintings as styles
    root: str = ""
    content_dir: str = ""
    style_dir: str = ""
    load_size: int = 512
    crop_size: int = 256
    num_workers: int = 0

    def folders(self) -> tuple[str, str]:
        if self.root == "demo" and not (self.content_dir or self.style_dir):
            from gan_style.data.demo import ensure_demo_dataset

            demo = ensure_demo_dataset()
            return str(demo / "trainA"), str(demo / "trainB")
        content = self.content_dir or (str(Path(self.root) / "content") if self.root else "")
        style = self.style_dir or (str(Path(self.root) / "style") if self.root else "")
        return content, style


@dataclass
class AdaINConfig(MethodConfig):
    data: AdaINDataConfig = field(default_factory=AdaINDataConfig)
    #: vgg_normalised.pth (see gan_style.nn.vgg.load_adain_encoder); "random": a randomly
    #: initialised encoder, only for benchmarks and smoke tests
    vgg_weights: str = ""
    #: optional decoder weights to start from (decoder.pth or a checkpoint); "": random init
    decoder_weights: str = ""
    lr: float = 1e-4
    #: Adam's betas: the reference uses PyTorch's defaults
    betas: tuple[float, float] = (0.9, 0.999)
    content_weight: float = 1.0
    style_weight: float = 10.0


class AdaINTraining(Method):
    """Trains AdaIN's decoder; the VGG encoder is a frozen network that no optimiser updates.

    Networks: ``encoder`` (NormalisedVGGEncoder, frozen) and ``decoder`` (AdaINDecoder, trained).
    One phase, ``decoder``. Batches: ``{"content", "style"}`` in [-1, 1] (ContentStyleDataset).
    The paper preset has the reference's learning-rate decay: lr / (1 + 5e-5 * iteration), set
    before every iteration (train.py, ``adjust_learning_rate``), for 160,000 iterations.
    """

    name = "adain"
    Config = AdaINConfig
    presets = {
        # Sec. 7.1 and the reference code: batch 8, 160,000 iterations (max_iter; about 16 epochs
        # of the 82,783 MS-COCO training images), lr 1e-4 / (1 + lr_decay * iteration), 5e-5.
        "paper": {"train": {"batch_size": 8, "lr_unit": "iteration", "lr_policy": "inverse", "lr_inverse_k": 5e-5, "max_steps": 160_000, "log_every": 100, "image_every": 1000, "save_every": 10_000}},
        # A smoke run on the small shared/data/nst folders.
        "demo": {"data": {"load_size": 128, "crop_size": 64}, "train": {"batch_size": 2, "n_epochs": 1, "n_epochs_decay": 0, "max_steps": 20, "log_every": 5, "image_every": 10}},
        # A randomly initialised encoder on the built-in demo set, 32 px: conformance tests and CI.
        "smoke": {
            "vgg_weights": "random",
            "data": {"root": "demo", "load_size": 40, "crop_size": 32},
            "train": {"batch_size": 2, "lr_unit": "iteration", "lr_policy": "inverse", "max_steps": 100, "log_every": 2, "image_every": 1000, "save_every": 1000},
        },
    }
    default_preset = "paper"

    config: AdaINConfig

    def build_networks(self) -> dict[str, nn.Module]:
        if self.config.vgg_weights == "random":
            warnings.warn("AdaIN training with a randomly initialised encoder (vgg_weights=random): only for benchmarks and smoke tests", stacklevel=2)
            encoder = NormalisedVGGEncoder()
        else:
            encoder = load_adain_encoder(self.config.vgg_weights or None)
        encoder.requires_grad_(False).eval()
        decoder = load_adain_decoder(self.config.decoder_weights).train() if self.config.decoder_weights else AdaINDecoder()
        decoder.requires_grad_(True)
        return {"encoder": encoder, "decoder": decoder}

    def optimizers(self) -> list[OptimizerSpec]:
        return [OptimizerSpec("decoder", ("decoder",), lr=self.config.lr, betas=self.config.betas)]

    def phases(self) -> list[Phase]:
        return [Phase("decoder", "decoder", self.decoder_step)]

    def decoder_step(self, ctx: StepContext, batch: dict[str, Any]) -> StepOutput:
        encoder: NormalisedVGGEncoder = ctx.nets["encoder"]  # type: ignore[assignment]
        decoder = ctx.nets["decoder"]
        content = (batch["content"] + 1) / 2
        style = (batch["style"] + 1) / 2
        with torch.no_grad():
            content_features = encoder.encode(content)
            style_features = encoder(style)
            target = adaptive_instance_norm(content_features, style_features[-1])  # t, Eq. 9
        output = decoder(target)  # g(t), Eq. 10
        output_features = encoder(output)
        loss_content = F.mse_loss(output_features[-1], target)  # Eq. 12
        loss_style = sum(mean_std_style_loss(o, s) for o, s in zip(output_features, style_features))  # Eq. 13
        return StepOutput(
            losses={
                "content": self.config.content_weight * loss_content,
                "style": self.config.style_weight * loss_style,  # lambda in Eq. 11
            },
            carry={"stylized": output.detach()},
        )

    def build_dataset(self, seed: int, world_size: int = 1) -> torch.utils.data.Dataset:
        content_dir, style_dir = self.config.data.folders()
        return ContentStyleDataset(content_dir, style_dir, self.config.data.load_size, self.config.data.crop_size, seed=seed)

    def synthetic_batch(self, image_size: int, batch_size: int, generator: torch.Generator) -> dict[str, Any]:
        shape = (batch_size, 3, image_size, image_size)
        return {"content": torch.rand(shape, generator=generator) * 2 - 1, "style": torch.rand(shape, generator=generator) * 2 - 1}

    def visuals(self, batch: Mapping[str, Any], carry: Mapping[str, Any], nets: Mapping[str, nn.Module] | None = None) -> dict[str, Tensor]:
        out = {"content": batch["content"], "style": batch["style"]}
        if "stylized" in carry:
            out["stylized"] = carry["stylized"].clamp(0, 1) * 2 - 1
        return out

    def translator(self, nets: Mapping[str, nn.Module], direction: str = "AtoB") -> Translator:
        """T(c, s, alpha) of Eq. 14 on images in [-1, 1]; ``style`` is a (1, 3, h, w) image."""
        self.check_direction(direction)
        stylizer = AdaINStylizer(nets["encoder"], nets["decoder"]).eval()

        def bind(style: Tensor | None = None, alpha: float = 1.0) -> Callable[[Tensor], Tensor]:
            style01 = (style + 1) / 2
            return lambda content: stylizer((content + 1) / 2, [style01.to(content.device)], alpha=alpha) * 2 - 1

        inputs = (
            InputSpec("style", "image", "the style image", required=True),
            InputSpec("alpha", "float", "content-style trade-off in [0, 1] (Eq. 14; default 1)"),
        )
        # Channel statistics are global: tiles would each take the style anew.
        return Translator(bind, size_multiple=1, inputs=inputs, description="AdaIN", local=False)
