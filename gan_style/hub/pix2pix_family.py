"""Import the CycleGAN/pix2pix and CUT reference checkpoints (``latest_net_G_A.pth``, the model
zoo's ``style_vangogh.pth``, CUT's ``latest_net_G.pth`` / ``latest_net_D.pth``).

Those files are bare ``state_dict``s: the options that built the network (--netG, --ngf,
--n_blocks, --norm, --no_antialias) are not stored. We read them back from the keys and shapes,
build our network with the same layout, and load strictly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from torch import Tensor, nn

from gan_style.hub.errors import LayoutMismatch
from gan_style.nn.discriminators import DiscriminatorSpec, build_discriminator
from gan_style.nn.generators import GeneratorSpec, build_generator

_STALE_NORM_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _layer_indices(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state if (m := regex.match(key))})


def _drop_stale_instance_norm_stats(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Pre-0.4 PyTorch saved running statistics for InstanceNorm layers; they have no matching
    parameter (affine=False), and the reference's loader deletes them. A batch-norm layer has a
    ``weight`` beside its statistics, so it is kept."""
    cleaned = {}
    for key, value in state.items():
        prefix, _, suffix = key.rpartition(".")
        if suffix in _STALE_NORM_SUFFIXES and f"{prefix}.weight" not in state:
            continue
        cleaned[key] = value
    return cleaned


def _norm_kind(state: Mapping[str, Tensor], first_conv: str, first_norm_prefix: str) -> str:
    if f"{first_norm_prefix}.weight" in state and state[f"{first_norm_prefix}.weight"].ndim == 1:
        return "batch"
    # The reference gives convs before a norm a bias only for instance norm.
    return "instance" if f"{first_conv}.bias" in state else "none"


def import_resnet_generator(state: dict[str, Tensor]) -> tuple[nn.Module, GeneratorSpec]:
    if "model.1.weight" not in state or not any(".conv_block." in k for k in state):
        raise LayoutMismatch("resnet generator", "no 'model.1.weight' or no 'model.N.conv_block.*' keys")
    first = state["model.1.weight"]
    if first.ndim != 4 or first.shape[-1] != 7:
        raise LayoutMismatch("resnet generator", f"'model.1.weight' has shape {tuple(first.shape)}, expected a 7x7 conv")
    blocks = _layer_indices(state, r"model\.(\d+)\.conv_block\.")
    antialias = "model.7.filt" in state
    first_up = blocks[-1] + 1
    antialias_up = f"model.{first_up}.filt" in state
    # With dropout the second conv of a block moves from index 5 to 6.
    second_conv = state.get(f"model.{blocks[0]}.conv_block.6.weight")
    dropout = second_conv is not None and second_conv.ndim == 4
    last_conv = max(_layer_indices(state, r"model\.(\d+)\.weight"))
    spec = GeneratorSpec(
        kind=f"resnet_{len(blocks)}blocks",
        ngf=first.shape[0],
        norm=_norm_kind(state, "model.1", "model.2"),
        dropout=dropout,
        in_channels=first.shape[1],
        out_channels=state[f"model.{last_conv}.weight"].shape[0],
        antialias=antialias,
        antialias_up=antialias_up,
    )
    return build_generator(spec, init_type=None), spec


def import_unet_generator(state: dict[str, Tensor]) -> tuple[nn.Module, GeneratorSpec]:
    if "model.model.0.weight" not in state:
        raise LayoutMismatch("unet generator", "no 'model.model.0.weight' key")
    first = state["model.model.0.weight"]
    # Each nesting level adds ".model.N" to the key of its down conv; count the levels.
    down_convs = [k for k in state if re.fullmatch(r"model(\.model\.\d+)*\.model\.[01]\.weight", k) and state[k].ndim == 4]
    depth = max(k.count(".model.") for k in down_convs)
    num_downs = depth
    kinds = {7: "unet_128", 8: "unet_256"}
    if num_downs not in kinds:
        raise LayoutMismatch("unet generator", f"found {num_downs} down-sampling levels; only unet_128 (7) and unet_256 (8) exist")
    spec = GeneratorSpec(
        kind=kinds[num_downs],
        ngf=first.shape[0],
        norm=_norm_kind(state, "model.model.1.model.1", "model.model.1.model.2"),
        in_channels=first.shape[1],
        out_channels=state["model.model.3.weight"].shape[1],
    )
    return build_generator(spec, init_type=None), spec


def import_patchgan_discriminator(state: dict[str, Tensor]) -> tuple[nn.Module, DiscriminatorSpec]:
    if "model.0.weight" not in state or state["model.0.weight"].ndim != 4 or state["model.0.weight"].shape[-1] != 4:
        raise LayoutMismatch("PatchGAN discriminator", "no 4x4 conv at 'model.0.weight'")
    convs = [i for i in _layer_indices(state, r"model\.(\d+)\.weight") if state[f"model.{i}.weight"].ndim == 4]
    n_layers = len(convs) - 2
    antialias = any(k.endswith(".filt") for k in state)
    norm = _norm_kind(state, f"model.{convs[1]}", f"model.{convs[1] + 1}")
    spec = DiscriminatorSpec(
        kind="basic" if n_layers == 3 else "n_layers",
        ndf=state["model.0.weight"].shape[0],
        n_layers=n_layers,
        norm=norm,
        in_channels=state["model.0.weight"].shape[1],
        antialias=antialias,
    )
    return build_discriminator(spec, init_type=None), spec


def import_pixel_discriminator(state: dict[str, Tensor]) -> tuple[nn.Module, DiscriminatorSpec]:
    if "net.0.weight" not in state:
        raise LayoutMismatch("pixel discriminator", "no 'net.0.weight' key")
    first = state["net.0.weight"]
    spec = DiscriminatorSpec(
        kind="pixel", ndf=first.shape[0], norm=_norm_kind(state, "net.2", "net.3"), in_channels=first.shape[1]
    )
    return build_discriminator(spec, init_type=None), spec


IMPORTERS = (import_resnet_generator, import_unet_generator, import_patchgan_discriminator, import_pixel_discriminator)


def prepare_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip a DataParallel/DDP ``module.`` prefix and drop stale instance-norm statistics."""
    state = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}
    return _drop_stale_instance_norm_stats(state)
