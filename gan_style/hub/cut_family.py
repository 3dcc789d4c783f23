"""Import CUT's own network files: the patch projection heads ``latest_net_F.pth`` (CUT, FastCUT,
SinCUT; ``--netF mlp_sample``) and SinCUT's StyleGAN2 generator and discriminator
(``--netG stylegan2`` / ``--netD stylegan2``). CUT's ResNet generator and PatchGAN discriminator
files are handled by ``pix2pix_family``.

Like those, the files are bare state_dicts; the options are read back from the keys and shapes.
Each importer accepts only its own layout (it raises ``LayoutMismatch`` otherwise), so the order in
``gan_style.hub.IMPORTERS`` does not matter for these files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from gan_style.hub.errors import LayoutMismatch
from gan_style.nn.patch_sampler import PatchSampleMLP
from gan_style.nn.sincut_networks import (
    SinCUTDiscriminator,
    SinCUTDiscriminatorSpec,
    SinCUTGenerator,
    SinCUTGeneratorSpec,
)

_MLP_KEY = re.compile(r"mlp_(\d+)\.([02])\.(weight|bias)")


@dataclass(frozen=True)
class PatchSampleSpec:
    """``PatchSampleMLP`` options: the channels of each sampled feature map and the projection width."""

    in_channels: tuple[int, ...]
    out_channels: int = 256


def import_patch_sample_mlp(state: dict[str, Tensor]) -> tuple[PatchSampleMLP, PatchSampleSpec]:
    layout = "CUT patch sampler F (mlp_sample)"
    if not state:
        raise LayoutMismatch(layout, "empty state dict (a never-run reference F, or --netF sample, has no weights)")
    foreign = [k for k in state if not _MLP_KEY.fullmatch(k)]
    if foreign:
        raise LayoutMismatch(layout, f"keys other than 'mlp_K.{{0,2}}.{{weight,bias}}': {foreign[:4]}")
    heads = sorted({int(_MLP_KEY.fullmatch(k).group(1)) for k in state})  # type: ignore[union-attr]
    if heads != list(range(len(heads))):
        raise LayoutMismatch(layout, f"heads are not numbered 0..{len(heads) - 1}: {heads}")
    in_channels = []
    for k in heads:
        first, second = state.get(f"mlp_{k}.0.weight"), state.get(f"mlp_{k}.2.weight")
        if first is None or second is None or first.ndim != 2 or second.ndim != 2:
            raise LayoutMismatch(layout, f"mlp_{k} is not two Linear layers")
        in_channels.append(first.shape[1])
    out_channels = state["mlp_0.2.weight"].shape[0]
    spec = PatchSampleSpec(tuple(in_channels), out_channels)
    return PatchSampleMLP(spec.in_channels, spec.out_channels, use_mlp=True, init_type=None), spec


def _resblock_indices(state: dict[str, Tensor], prefix: str) -> list[int]:
    regex = re.compile(re.escape(prefix) + r"(\d+)\.conv1\.")
    return sorted({int(m.group(1)) for key in state if (m := regex.match(key))})


def _is_downsampling(state: dict[str, Tensor], block: str) -> bool:
    return f"{block}.conv2.0.kernel" in state


def import_sincut_generator(state: dict[str, Tensor]) -> tuple[SinCUTGenerator, SinCUTGeneratorSpec]:
    layout = "SinCUT generator (stylegan2)"
    rgb = state.get("encoder.convs.1.0.weight")
    if rgb is None or rgb.ndim != 4 or not any(k.startswith("decoder.convs.") for k in state):
        raise LayoutMismatch(layout, "no 'encoder.convs.1.0.weight' conv or no 'decoder.convs.*' keys")
    blocks = _resblock_indices(state, "encoder.convs.")
    down = [i for i in blocks if _is_downsampling(state, f"encoder.convs.{i}")]
    keep = [i for i in blocks if i not in down]
    expected = list(range(2, 2 + len(blocks)))
    if blocks != expected or down != expected[: len(down)]:
        raise LayoutMismatch(layout, f"encoder blocks {blocks}: expected down-sampling blocks from index 2, then the others")
    channels = [rgb.shape[0]] + [state[f"encoder.convs.{i}.conv2.1.weight"].shape[0] for i in down]
    decoder_layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("decoder.convs.")})
    last = state.get(f"decoder.convs.{decoder_layers[-1]}.0.weight")
    if last is None or last.ndim != 4:
        raise LayoutMismatch(layout, "the decoder does not end in a 1x1 ConvLayer to RGB")
    spec = SinCUTGeneratorSpec(
        channels=tuple(channels), n_blocks=2 * len(keep), in_channels=rgb.shape[1], out_channels=last.shape[0]
    )
    return SinCUTGenerator(spec), spec


def import_sincut_discriminator(state: dict[str, Tensor]) -> tuple[SinCUTDiscriminator, SinCUTDiscriminatorSpec]:
    layout = "SinCUT discriminator (stylegan2)"
    rgb = state.get("convs.0.0.weight")
    if rgb is None or rgb.ndim != 4 or "final_conv.0.weight" not in state or "final_linear.0.weight" not in state:
        raise LayoutMismatch(layout, "no 'convs.0.0.weight', 'final_conv.0.weight' or 'final_linear.0.weight' key")
    blocks = _resblock_indices(state, "convs.")
    if blocks != list(range(1, 1 + len(blocks))) or not all(_is_downsampling(state, f"convs.{i}") for i in blocks):
        raise LayoutMismatch(layout, f"expected down-sampling ResBlocks at convs.1, convs.2, ...; found {blocks}")
    channels = [rgb.shape[0]] + [state[f"convs.{i}.conv2.1.weight"].shape[0] for i in blocks]
    spec = SinCUTDiscriminatorSpec(channels=tuple(channels), in_channels=rgb.shape[1])
    return SinCUTDiscriminator(spec), spec


IMPORTERS = (import_patch_sample_mlp, import_sincut_generator, import_sincut_discriminator)
