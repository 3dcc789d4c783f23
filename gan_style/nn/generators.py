"""Image-to-image generators: the ResNet generator (Johnson et al. 2016, used by CycleGAN and CUT)
and the U-Net generator (pix2pix, Isola et al. 2017).

Both keep the reference layer layout (one ``nn.Sequential`` named ``model``), so layer indices
match: CUT's ``nce_layers`` index this Sequential, and official checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gan_style.nn.antialias import Downsample, Upsample
from gan_style.nn.layers import Conv2d, ReflectionPad2d, ReplicationPad2d, conv_bias_for, init_weights, norm_layer

GENERATORS = ("resnet_9blocks", "resnet_6blocks", "resnet_4blocks", "unet_128", "unet_256")


class ResnetBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection: out = x + F(x), no activation after the sum."""

    def __init__(self, channels: int, norm: str, dropout: bool, padding: str = "reflect"):
        super().__init__()
        bias = conv_bias_for(norm)

        def pad() -> list[nn.Module]:
            if padding == "reflect":
                return [ReflectionPad2d(1)]
            if padding == "replicate":
                return [ReplicationPad2d(1)]
            return []

        conv_padding = 1 if padding == "zero" else 0
        layers: list[nn.Module] = [
            *pad(),
            Conv2d(channels, channels, 3, padding=conv_padding, bias=bias),
            norm_layer(norm, channels),
            nn.ReLU(True),
        ]
        if dropout:
            layers.append(nn.Dropout(0.5))
        layers += [*pad(), Conv2d(channels, channels, 3, padding=conv_padding, bias=bias), norm_layer(norm, channels)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 down-samplings, ``n_blocks`` residual blocks at 4*ngf channels, two
    up-samplings, c7s1-3, tanh (CycleGAN appendix 7.2).

    ``antialias`` / ``antialias_up`` replace the strided convs by stride-1 convs followed by blurred
    down-sampling, and the transposed convs by blurred up-sampling followed by a 3x3 conv (CUT).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
        dropout: bool = False,
        padding: str = "reflect",
        antialias: bool = False,
        antialias_up: bool = False,
    ):
        super().__init__()
        bias = conv_bias_for(norm)
        layers: list[nn.Module] = [
            ReflectionPad2d(3),
            Conv2d(in_channels, ngf, 7, padding=0, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        channels = ngf
        for _ in range(2):
            if antialias:
                layers += [
                    Conv2d(channels, channels * 2, 3, stride=1, padding=1, bias=bias),
                    norm_layer(norm, channels * 2),
                    nn.ReLU(True),
                    Downsample(channels * 2),
                ]
            else:
                layers += [
                    Conv2d(channels, channels * 2, 3, stride=2, padding=1, bias=bias),
                    norm_layer(norm, channels * 2),
                    nn.ReLU(True),
                ]
            channels *= 2
        layers += [ResnetBlock(channels, norm, dropout, padding) for _ in range(n_blocks)]
        for _ in range(2):
            if antialias_up:
                layers += [
                    Upsample(channels),
                    Conv2d(channels, channels // 2, 3, stride=1, padding=1, bias=bias),
                    norm_layer(norm, channels // 2),
                    nn.ReLU(True),
                ]
            else:
                layers += [
                    nn.ConvTranspose2d(channels, channels // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
                    norm_layer(norm, channels // 2),
                    nn.ReLU(True),
                ]
            channels //= 2
        layers += [ReflectionPad2d(3), Conv2d(channels, out_channels, 7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        #: inputs whose sides are multiples of this give outputs of the same size
        self.size_multiple = 4

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def encode(self, x: Tensor, layers: list[int]) -> list[Tensor]:
        """Outputs of the Sequential layers with the given indices (CUT's ``encode_only``); the
        forward stops after the deepest one."""
        wanted = sorted(set(layers))
        if not wanted:
            return []
        features: dict[int, Tensor] = {}
        for index, layer in enumerate(self.model):
            x = layer(x)
            if index in wanted:
                features[index] = x
            if index == wanted[-1]:
                break
        return [features[i] for i in layers]


class UnetSkipBlock(nn.Module):
    """One level of the U-Net: down-sample, the inner levels, up-sample, and (except at the
    outermost level) concatenate the input with the result: cat([x, block(x)])."""

    def __init__(
        self,
        outer_channels: int,
        inner_channels: int,
        in_channels: int | None = None,
        submodule: nn.Module | None = None,
        outermost: bool = False,
        innermost: bool = False,
        norm: str = "instance",
        dropout: bool = False,
    ):
        super().__init__()
        self.outermost = outermost
        bias = conv_bias_for(norm)
        in_channels = outer_channels if in_channels is None else in_channels
        down_conv = nn.Conv2d(in_channels, inner_channels, 4, stride=2, padding=1, bias=bias)
        if outermost:
            layers = [
                down_conv,
                submodule,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_channels * 2, outer_channels, 4, stride=2, padding=1),
                nn.Tanh(),
            ]
        elif innermost:
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_channels, outer_channels, 4, stride=2, padding=1, bias=bias),
                norm_layer(norm, outer_channels),
            ]
        else:
            layers = [
                nn.LeakyReLU(0.2, True),
                down_conv,
                norm_layer(norm, inner_channels),
                submodule,
                nn.ReLU(True),
                nn.ConvTranspose2d(inner_channels * 2, outer_channels, 4, stride=2, padding=1, bias=bias),
                norm_layer(norm, outer_channels),
            ]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], dim=1)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` halvings (7 for 128x128 inputs, 8 for 256x256): channels ngf, 2ngf,
    4ngf, then 8ngf for every further level."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_downs: int = 8,
        ngf: int = 64,
        norm: str = "instance",
        dropout: bool = False,
    ):
        super().__init__()
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, norm=norm)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, dropout=dropout)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, norm=norm)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, norm=norm)
        self.model = UnetSkipBlock(out_channels, ngf, in_channels=in_channels, submodule=block, outermost=True, norm=norm)
        self.size_multiple = 2**num_downs

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


@dataclass
class GeneratorSpec:
    """The options that define a CycleGAN-family generator (reference: --netG --ngf --norm ...)."""

    kind: str = "resnet_9blocks"
    ngf: int = 64
    norm: str = "instance"
    dropout: bool = False
    in_channels: int = 3
    out_channels: int = 3
    antialias: bool = False
    antialias_up: bool = False


def build_generator(spec: GeneratorSpec, init_type: str | None = "normal", init_gain: float = 0.02) -> nn.Module:
    if spec.kind.startswith("resnet_") and spec.kind.endswith("blocks"):
        n_blocks = int(spec.kind[len("resnet_") : -len("blocks")])
        net: nn.Module = ResnetGenerator(
            spec.in_channels,
            spec.out_channels,
            spec.ngf,
            n_blocks,
            spec.norm,
            spec.dropout,
            antialias=spec.antialias,
            antialias_up=spec.antialias_up,
        )
    elif spec.kind in ("unet_128", "unet_256"):
        if spec.antialias or spec.antialias_up:
            raise ValueError("antialiased sampling exists only for the ResNet generators")
        num_downs = 7 if spec.kind == "unet_128" else 8
        net = UnetGenerator(spec.in_channels, spec.out_channels, num_downs, spec.ngf, spec.norm, spec.dropout)
    else:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {spec.kind!r}")
    if init_type is not None:
        init_weights(net, init_type, init_gain)
    return net
