"""PatchGAN discriminators (pix2pix / CycleGAN): a fully convolutional net that classifies each
overlapping patch as real or fake. ``basic`` is the 70x70 PatchGAN (3 layers); ``pixel`` is the 1x1
PixelGAN. Reference layer layout (one Sequential), so official checkpoints load unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from gan_style.nn.antialias import Downsample
from gan_style.nn.layers import conv_bias_for, init_weights, norm_layer

DISCRIMINATORS = ("basic", "n_layers", "pixel")


class NLayerDiscriminator(nn.Module):
    """C64-C128-C256-C512 with 4x4 convs (CycleGAN appendix 7.2): ``n_layers`` stride-2 convs (the
    first without normalisation), a stride-1 conv, and a 1-channel stride-1 conv. LeakyReLU 0.2.

    With ``antialias`` (CUT) every stride-2 conv becomes a stride-1 conv followed by blurred
    down-sampling.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: str = "instance", antialias: bool = False):
        super().__init__()
        bias = conv_bias_for(norm)

        def down(in_ch: int, out_ch: int, with_bias: bool, normalise: bool) -> list[nn.Module]:
            stride = 1 if antialias else 2
            layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 4, stride=stride, padding=1, bias=with_bias)]
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
            nn.Conv2d(ndf * prev, ndf * mult, 4, stride=1, padding=1, bias=bias),
            norm_layer(norm, ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1),
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
