"""Import the Swapping Autoencoder's own checkpoints (Park et al., "Swapping Autoencoder for Deep
Image Manipulation", NeurIPS 2020: the networks of section 3 / appendix B.1; the reference saves the
whole model's state dict as ``<iter>k_checkpoint.pth`` / ``latest_checkpoint.pth``).

One file holds every network under a prefix: ``E.*`` (encoder), ``G.*`` (generator), and in
training checkpoints ``D.*`` (image discriminator) and ``Dpatch.*`` (patch co-occurrence
discriminator), plus the counter ``num_discriminator_iters``. The reference's options are not in
the file; they are read back from the key names and shapes, each network is built from them and
loaded strictly.

Not recoverable from the keys: ``--netG_use_noise`` (the noise strengths are stored either way;
pass ``use_noise``) and the exact crop size (only the power of two that D is built for, or
without D the structure code's side times 2^halvings).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, TypeVar

import torch
from torch import Tensor, nn

from gan_style.hub.errors import LayoutMismatch
from gan_style.nn.swapae import SwapAEEncoder, SwapAEEncoderSpec, SwapAEGenerator, SwapAEGeneratorSpec

PREFIXES = ("E", "G", "D", "Dpatch")
COUNTER = "num_discriminator_iters"
LAYOUT = "Swapping Autoencoder checkpoint (E.*, G.*[, D.*, Dpatch.*])"

Spec = TypeVar("Spec")


def is_swapae_state(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` looks like a Swapping Autoencoder checkpoint: it has ``E.*`` and ``G.*`` keys."""
    keys = [k for k in state if isinstance(k, str)] if isinstance(state, Mapping) else []
    return any(k.startswith("E.") for k in keys) and any(k.startswith("G.") for k in keys)


# -- helpers --------------------------------------------------------------------------------------
def _numbered(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    """The sorted numbers N of the keys that fully match ``pattern`` (one ``(\\d+)`` group)."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in state if (m := regex.fullmatch(key))})


def _shape(state: Mapping[str, Tensor], key: str, layout: str) -> tuple[int, ...]:
    if key not in state:
        raise LayoutMismatch(layout, f"no '{key}' key")
    return tuple(state[key].shape)


def _mismatch(net: nn.Module, state: Mapping[str, Tensor]) -> str | None:
    """What differs between ``net``'s state dict and ``state`` (keys, shapes), or None."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {s}" for k, s in expected.items() if k in state and tuple(state[k].shape) != s]
    problems = [
        f"{what} {items[:6]}{' ...' if len(items) > 6 else ''}"
        for what, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if items
    ]
    return "; ".join(problems) or None


def _build(build: Callable[[Spec], nn.Module], candidates: Iterable[Spec], state: Mapping[str, Tensor], layout: str) -> tuple[nn.Module, Spec]:
    """The network of the first candidate spec whose keys and shapes fit ``state`` exactly, loaded
    strictly. Candidates are tried on the meta device (no memory, no init), so guessing is cheap."""
    reasons = []
    for spec in dict.fromkeys(candidates):  # unique, in order
        try:
            with torch.device("meta"):
                net = build(spec)
        except ValueError as error:  # a spec the network rejects
            reasons.append(f"{spec}: {error}")
            continue
        problem = _mismatch(net, state)
        if problem is None:
            net = net.to_empty(device="cpu")  # every entry is overwritten by the strict load below
            net.load_state_dict(dict(state), strict=True)
            return net.eval(), spec
        reasons.append(f"{spec}: {problem}")
    raise LayoutMismatch(layout, " | ".join(reasons[:3]) or "no candidate architecture")


def _scale_candidates(widths: Iterable[tuple[int, float]], rounding: Literal["round", "floor"], at_least: Iterable[tuple[int, float]] = ()) -> list[float]:
    """Scale capacities s that may have given ``width = rounding(base * s)`` for each (width, base).

    First the plain ratios width / base, widest first (exact for the usual powers of two, so the
    options read back as 0.25, not 0.2500001), then the middle of the interval of s that fits every
    width, which also recovers capacities like 0.3 that the rounding hides. ``at_least`` pairs only
    bound s from below (capped widths)."""
    widths = sorted(widths, key=lambda wb: -wb[0])
    low, high = (-0.5, 0.5) if rounding == "round" else (0.0, 1.0)
    bounds = [((w + low) / b, (w + high) / b) for w, b in widths] + [((w + low) / b, float("inf")) for w, b in at_least]
    lower, upper = max((lo for lo, _ in bounds), default=0.0), min((hi for _, hi in bounds), default=float("inf"))
    middle = [(lower + upper) / 2] if lower < upper < float("inf") else []
    return [w / b for w, b in widths] + middle


# -- E and G --------------------------------------------------------------------------------------
def encoder_candidates(state: Mapping[str, Tensor]) -> list[SwapAEEncoderSpec]:
    """Possible ``SwapAEEncoderSpec``s of an ``E.*`` state dict (prefix stripped), likeliest first."""
    layout = "Swapping Autoencoder encoder (E.*)"
    rgb = _shape(state, "FromRGB.Conv.weight", layout)
    spatial_code_ch = _shape(state, "ToSpatialCode.1.Conv.weight", layout)[0]
    global_code_ch = _shape(state, "ToGlobalCode.0.weight", layout)[0]
    trunk = _numbered(state, r"DownToSpatialCode\.ResBlockDownBy(\d+)\.conv1\.Conv\.weight")
    head = _numbered(state, r"DownToGlobalCode\.ConvLayerDownBy(\d+)\.Conv\.weight")
    sp, gl = len(trunk), len(head)
    if trunk != [2**i for i in range(sp)] or head != [2**i for i in range(sp, sp + gl)]:
        raise LayoutMismatch(layout, f"blocks ResBlockDownBy{trunk} / ConvLayerDownBy{head}: expected 1, 2, 4, ... then the following powers of 2")
    widths = [rgb[0]]
    widths += [_shape(state, f"DownToSpatialCode.ResBlockDownBy{n}.conv2.Conv.weight", layout)[0] for n in trunk]
    widths += [_shape(state, f"DownToGlobalCode.ConvLayerDownBy{n}.Conv.weight", layout)[0] for n in head]
    antialias = sp == 0 or _shape(state, "DownToSpatialCode.ResBlockDownBy1.conv2.Blur.kernel", layout)[-1] > 1
    steepness = [2.0] + ([widths[1] / widths[0]] if len(widths) > 1 else [])
    candidates = []
    for st in steepness:
        free = [(w, 32 * st**i) for i, w in enumerate(widths) if w < global_code_ch]
        capped = [(w, 32 * st**i) for i, w in enumerate(widths) if w >= global_code_ch]
        scales = _scale_candidates(free, "round", capped) or [1.0]
        candidates += [SwapAEEncoderSpec(spatial_code_ch, global_code_ch, s, sp, gl, st, antialias) for s in scales]
    return candidates


def generator_candidates(state: Mapping[str, Tensor], use_noise: bool = True) -> list[SwapAEGeneratorSpec]:
    """Possible ``SwapAEGeneratorSpec``s of a ``G.*`` state dict (prefix stripped), likeliest first."""
    layout = "Swapping Autoencoder generator (G.*)"
    spatial_code_ch, global_code_ch = _shape(state, "SpatialCodeModulation.scale.weight", layout)
    rgb = _shape(state, "ToRGB.conv.weight", layout)  # (1, 3, nf(sp), 1, 1)
    heads = _numbered(state, r"HeadResnetBlock(\d+)\.conv1\.conv\.weight")
    ups = _numbered(state, r"UpsamplingResBlock(\d+)\.conv1\.conv\.weight")
    if heads != list(range(len(heads))) or not ups or ups != [ups[0] * 2**j for j in range(len(ups))]:
        raise LayoutMismatch(layout, f"blocks HeadResnetBlock{heads} / UpsamplingResBlock{ups}: expected 0, 1, ... and r, 2r, 4r, ...")
    sp, nb = len(ups), len(heads)
    # nf(j) = int(base_j * s) for j = 1..sp: the up-sampling blocks' outputs (the last one = ToRGB's input)
    widths = [(_shape(state, f"UpsamplingResBlock{r}.conv1.conv.weight", layout)[1], min(512, 128 * 2 ** (sp - j - 1))) for j, r in enumerate(ups)]
    widths.append((rgb[2], 128))
    # nf(0) only shows through the head widths max(8, round((i + 1) / 2 nf(0))): try the integers that give the last one
    nf0: list[int | None] = [None]
    if nb:
        last = _shape(state, f"HeadResnetBlock{nb - 1}.conv1.conv.weight", layout)[1]
        guess = round(2 * last / nb)
        nf0 = [n for n in range(max(1, guess - 2), guess + 3) if max(8, round(nb / 2 * n)) == last] or [guess]
    base0 = min(512, 128 * 2**sp)
    scales = [s for n in nf0 for s in _scale_candidates(widths + ([(n, base0)] if n else []), "floor")]
    return [SwapAEGeneratorSpec(spatial_code_ch, global_code_ch, s, nb, sp, use_noise, ups[0]) for s in scales]


# -- D and Dpatch (classes of gan_style.nn.swapae_discriminators) ---------------------------------
def _block_resolutions(state: Mapping[str, Tensor], prefix: str, offset: int) -> list[int]:
    """Resolutions of the residual blocks ``{prefix}{name}.conv1``: name str(offset - log2 r) or ``RxR``."""
    regex = re.compile(re.escape(prefix) + r"(\d+|\d+x\d+)\.conv1\.Conv\.weight")
    names = {m.group(1) for key in state if (m := regex.fullmatch(key))}
    return sorted({int(n.split("x")[0]) if "x" in n else 2 ** (offset - int(n)) for n in names})


def discriminator_candidates(state: Mapping[str, Tensor]) -> list[Any]:
    """Possible ``SwapAEDiscriminatorSpec``s of a ``D.*`` state dict (prefix stripped)."""
    from gan_style.nn.swapae_discriminators import SwapAEDiscriminatorSpec

    layout = "Swapping Autoencoder discriminator (D.*)"
    resolutions = _block_resolutions(state, "stylegan2_D.convs.", 9)
    if not resolutions:
        raise LayoutMismatch(layout, "no 'stylegan2_D.convs.N.conv1' residual blocks")
    size = resolutions[-1]
    width = _shape(state, "stylegan2_D.convs.0.Conv.weight", layout)[0]
    # width at the input resolution: 16384 / r * 2 s from 64 up, min(512, 512 * 2 s) below
    base = 16384 / size * 2 if size >= 64 else 1024
    candidates = [width / base] if width < 512 or size >= 64 else []
    return [SwapAEDiscriminatorSpec(size, s) for s in [*candidates, 1.0]]


def patch_discriminator_candidates(state: Mapping[str, Tensor]) -> list[Any]:
    """Possible ``PatchDiscriminatorSpec``s of a ``Dpatch.*`` state dict (prefix stripped)."""
    from gan_style.nn.swapae_discriminators import PatchDiscriminatorSpec

    layout = "Swapping Autoencoder patch discriminator (Dpatch.*)"
    resolutions = _block_resolutions(state, "convs.", 7)
    if not resolutions:
        raise LayoutMismatch(layout, "no 'convs.N.conv1' residual blocks")
    patch_size = resolutions[-1]
    width = _shape(state, "convs.0.Conv.weight", layout)[0]
    max_nc = _shape(state, "convs.6.Conv.weight", layout)[0]
    # width at the patch resolution: 1024 / P * s (capped at max_nc up to 16x16)
    return [PatchDiscriminatorSpec(patch_size, s, max_nc) for s in [width * patch_size / 1024, 4.0]]


def import_swapae_discriminators(parts: Mapping[str, Mapping[str, Tensor]]) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """D and Dpatch of a checkpoint's ``D`` / ``Dpatch`` parts (prefixes stripped), with their options."""
    from gan_style.nn.swapae_discriminators import PatchCooccurrenceDiscriminator, SwapAEDiscriminator

    nets: dict[str, nn.Module] = {}
    options: dict[str, Any] = {}
    if parts.get("D"):
        nets["D"], spec = _build(SwapAEDiscriminator, discriminator_candidates(parts["D"]), parts["D"], "Swapping Autoencoder discriminator (D.*)")
        options |= {"crop_size": spec.image_size, "netD_scale_capacity": spec.scale_capacity}
    if parts.get("Dpatch"):
        nets["Dpatch"], spec = _build(
            PatchCooccurrenceDiscriminator, patch_discriminator_candidates(parts["Dpatch"]), parts["Dpatch"], "Swapping Autoencoder patch discriminator (Dpatch.*)"
        )
        options |= {"patch_size": spec.patch_size, "netPatchD_scale_capacity": spec.scale_capacity, "netPatchD_max_nc": spec.max_nc}
    return nets, options


# -- the whole checkpoint -------------------------------------------------------------------------
def import_swapae_checkpoint(state: Mapping[str, Tensor], *, use_noise: bool = True) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The networks of a reference checkpoint ({"E", "G"} and, when present, "D", "Dpatch"; eval
    mode, float32, CPU) and the options read back from it, named like the reference's (and
    ``SwapAEConfig``'s) options: ``spatial_code_ch``, ``global_code_ch``, ``netE_*``, ``use_antialias``,
    ``netG_*``, ``crop_size``, and with the discriminators ``netD_scale_capacity``, ``patch_size``,
    ``netPatchD_*``; also ``num_discriminator_iters`` when stored.

    ``...noise.fixed_noise`` entries (written by the reference after its ``fix_noise``) are not
    parameters: they are returned, in ``G.noise_layers`` order (None where a layer has none), under
    ``options["fixed_noise"]``, for the ``fixed_noise`` argument of ``SwapAEGenerator.forward``. Raises ``LayoutMismatch`` saying what
    does not fit when ``state`` is not such a checkpoint.
    """
    if not isinstance(state, Mapping):
        raise LayoutMismatch(LAYOUT, f"not a state dict but {type(state).__name__}")
    if not is_swapae_state(state):
        sample = [str(k) for k in list(state)[:4]]
        raise LayoutMismatch(LAYOUT, f"no 'E.*' and 'G.*' keys (first keys: {sample})")
    foreign = [k for k in state if k != COUNTER and (not isinstance(k, str) or k.split(".", 1)[0] not in PREFIXES)]
    if foreign:
        raise LayoutMismatch(LAYOUT, f"keys outside E.* / G.* / D.* / Dpatch.* / {COUNTER}: {foreign[:6]}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise LayoutMismatch(LAYOUT, f"entries that are not tensors: {not_tensors[:6]}")
    parts = {p: {k[len(p) + 1 :]: v for k, v in state.items() if k.startswith(p + ".")} for p in PREFIXES}
    fixed = {k: v for k, v in parts["G"].items() if k.endswith(".noise.fixed_noise")}
    for key in fixed:
        del parts["G"][key]

    encoder, e_spec = _build(SwapAEEncoder, encoder_candidates(parts["E"]), parts["E"], "Swapping Autoencoder encoder (E.*)")
    generator, g_spec = _build(
        SwapAEGenerator, generator_candidates(parts["G"], use_noise), parts["G"], "Swapping Autoencoder generator (G.*)"
    )
    if (e_spec.spatial_code_ch, e_spec.global_code_ch) != (g_spec.spatial_code_ch, g_spec.global_code_ch):
        raise LayoutMismatch(LAYOUT, f"E's codes ({e_spec.spatial_code_ch}, {e_spec.global_code_ch}) do not fit G's ({g_spec.spatial_code_ch}, {g_spec.global_code_ch})")
    if e_spec.num_downsampling_sp != g_spec.num_downsampling:
        raise LayoutMismatch(LAYOUT, f"E halves {e_spec.num_downsampling_sp} times but G doubles {g_spec.num_downsampling} times")
    nets: dict[str, nn.Module] = {"E": encoder, "G": generator}
    options: dict[str, Any] = {
        "spatial_code_ch": e_spec.spatial_code_ch,
        "global_code_ch": e_spec.global_code_ch,
        "netE_scale_capacity": e_spec.scale_capacity,
        "netE_num_downsampling_sp": e_spec.num_downsampling_sp,
        "netE_num_downsampling_gl": e_spec.num_downsampling_gl,
        "netE_nc_steepness": e_spec.nc_steepness,
        "use_antialias": e_spec.antialias,
        "netG_scale_capacity": g_spec.scale_capacity,
        "netG_num_base_resnet_layers": g_spec.num_base_resnet_layers,
        "netG_use_noise": g_spec.use_noise,
        # without D: the structure code's side (the first up-sampling block's name) times 2^halvings
        "crop_size": g_spec.up_block_names_from * 2**g_spec.num_downsampling,
    }
    more_nets, more_options = import_swapae_discriminators(parts)
    nets |= more_nets
    options |= more_options
    if COUNTER in state:
        options[COUNTER] = int(state[COUNTER].reshape(-1)[0])
    if fixed:
        layers = generator.noise_layers  # type: ignore[attr-defined]
        unknown = [k for k in fixed if k.removesuffix(".fixed_noise") not in layers]
        if unknown:
            raise LayoutMismatch(LAYOUT, f"fixed noise of unknown layers: {unknown[:4]}")
        options["fixed_noise"] = [fixed.get(f"{name}.fixed_noise") for name in layers]
    return nets, options
