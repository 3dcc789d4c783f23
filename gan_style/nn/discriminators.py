"""PatchGAN discriminators (pix2pix / CycleGAN): a fully convolutional net that classifies each
overlapping patch as real or fake. ``basic`` is the 70x70 PatchGAN (3 layers); ``pixel`` is the 1x1
PixelGAN. Reference layer layout (one Sequential), so official checkpoints load unchanged.
Also MUNIT's multi-scale discriminator (``MultiScaleDiscriminator``, the reference's ``cnns.s`` layout).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from gan_style.losses.adversarial import gan_loss
from gan_style.nn.antialias import Downsample
from gan_style.nn.layers import Conv2d, conv_bias_for, init_weights, norm_layer
from gan_style.nn.munit_networks import Conv2dBlock

DISCRIMINATORS = ("basic", "n_layers", "pixel")


class NLayerDiscriminator(nn.Module):
    """C64-C128-C256-C512 with 4x4 convs (CycleGAN appendix 7.2): ``n_layers`` stride-2 convs (the
    first without normalisation), a stride-1 conv, and a 1-channel stride-1 conv. LeakyReLU 0.2.

    With ``antialias`` (CUT) every stride-2 conv becomes a stride-1 conv followed by blurred
    down-sampling. The convolutions are :class:`~gan_style.nn.layers.Conv2d` (``nn.Conv2d``'s
    parameters): the stride-1 ones can run as Winograd's F(3x3, 4x4) in fp32 steps.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance", antialias: bool = False):
        super().__init__()
        bias = conv_bias_for(norm)

        def down(in_ch: int, out_ch: int, with_bias: bool, normalise: bool) -> list[nn.Module]:
            stride = 1 if antialias else 2
            layers: list[nn.Module] = [Conv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=with_bias)]
            if normalise:
                layers.append(norm_layer(norm, out_ch))
            layers.append(nn.LeakyReLU(0.2, True))
            if antialias:
                layers.append(Downsample(out_ch))
            return layers

        layers = down(in_channels, ndf, True, False)
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += down(ndf * prev, ndf * mult, bias, True)
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=bias),
            norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2, True),
            Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN (PixelGAN): judges each pixel's colour independently."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, norm: str = "instance"):
        super().__init__()
        bias = conv_bias_for(norm)
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, ndf, 1),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, bias=bias),
            norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, bias=bias),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class DiscriminatorSpec:
    """The options that define a PatchGAN discriminator (reference: --netD --ndf --n_layers_D --norm)."""

    kind: str = "basic"
    ndf: int = 64
    n_layers: int = 3
    norm: str = "instance"
    in_channels: int = 3
    antialias: bool = False


def build_discriminator(spec: DiscriminatorSpec, init_type: str | None = "normal", init_gain: float = 0.02) -> nn.Module:
    if spec.kind == "basic":
        net: nn.Module = NLayerDiscriminator(spec.in_channels, spec.ndf, 3, spec.norm, spec.antialias)
    elif spec.kind == "n_layers":
        net = NLayerDiscriminator(spec.in_channels, spec.ndf, spec.n_layers, spec.norm, spec.antialias)
    elif spec.kind == "pixel":
        net = PixelDiscriminator(spec.in_channels, spec.ndf, spec.norm)
    else:
        raise ValueError(f"discriminator must be one of {', '.join(DISCRIMINATORS)}, got {spec.kind!r}")
    if init_type is not None:
        init_weights(net, init_type, init_gain)
    return net


# ---------------------------------------------------------------------------------------------
# MUNIT's multi-scale discriminator
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiScaleDiscriminatorSpec:
    """The reference MUNIT's ``dis`` options; the defaults are ``configs/edges2shoes_folder.yaml``.
    ``gan_type`` (lsgan or nsgan) selects the objective of the two loss methods below."""

    dim: int = 64
    n_layer: int = 4
    norm: str = "none"
    activ: str = "lrelu"
    num_scales: int = 3
    pad_type: str = "reflect"
    gan_type: str = "lsgan"
    input_dim: int = 3


class MultiScaleDiscriminator(nn.Module):
    """MUNIT's discriminator (Huang et al. 2018, implementation details: the LSGAN objective and the
    "multi-scale discriminators proposed by Wang et al." [pix2pixHD]): ``num_scales`` identical fully convolutional
    nets (``cnns.s``) applied to the image and to its 2x, 4x, ... average-pooled versions, so that
    one scale judges details and the coarsest the global structure.

    Each net: ``n_layer`` stride-2 4x4 conv blocks (``Conv2dBlock``: padding, biased conv, norm,
    LeakyReLU 0.2), the first without norm and each further one doubling the width, then a 1x1
    conv to one channel. Weight init is the caller's: the reference uses
    ``init_weights(dis, "normal", 0.02)`` (``gan_style.nn.layers``).
    """

    def __init__(self, spec: MultiScaleDiscriminatorSpec | None = None):
        super().__init__()
        self.spec = spec = spec or MultiScaleDiscriminatorSpec()
        if spec.gan_type not in ("lsgan", "nsgan"):
            raise ValueError(f"gan_type must be lsgan or nsgan, got {spec.gan_type!r}")

        def scale() -> nn.Sequential:
            dim = spec.dim
            layers: list[nn.Module] = [Conv2dBlock(spec.input_dim, dim, 4, 2, 1, "none", spec.activ, spec.pad_type)]
            for _ in range(spec.n_layer - 1):
                layers.append(Conv2dBlock(dim, dim * 2, 4, 2, 1, spec.norm, spec.activ, spec.pad_type))
                dim *= 2
            return nn.Sequential(*layers, nn.Conv2d(dim, 1, 1))

        self.cnns = nn.ModuleList(scale() for _ in range(spec.num_scales))
        # padded positions are left out of the average, so borders are not darkened
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: Tensor) -> list[Tensor]:
        """One output map per scale, finest first (a 64x64 input gives 4x4, 2x2 and 1x1 maps)."""
        outputs = []
        for i, net in enumerate(self.cnns):
            if i:
                x = self.downsample(x)
            outputs.append(net(x))
        return outputs

    @property
    def gan_mode(self) -> str:
        """The ``gan_style.losses.adversarial.gan_loss`` mode of ``spec.gan_type`` (nsgan: the
        cross-entropy on logits)."""
        return {"lsgan": "lsgan", "nsgan": "vanilla"}[self.spec.gan_type]

    def discriminator_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        """The discriminator's side of the adversarial loss L_GAN (summed over scales): fakes judged fake,
        reals judged real. ``fake`` is detached here."""
        return gan_loss(self(fake.detach()), False, self.gan_mode) + gan_loss(self(real), True, self.gan_mode)

    def generator_loss(self, fake: Tensor) -> Tensor:
        """The generator's side of the adversarial loss L_GAN (summed over scales): its fakes judged real."""
        return gan_loss(self(fake), True, self.gan_mode, for_discriminator=False)
