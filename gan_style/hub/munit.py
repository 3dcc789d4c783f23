"""Import the reference MUNIT's checkpoint files (Huang et al., ECCV 2018) into gan_style networks.

The reference trainer saves ``gen_XXXXXXXX.pt`` = ``{"a": gen_a.state_dict(), "b": gen_b.state_dict()}``
and ``dis_XXXXXXXX.pt`` likewise; ``a`` encodes and decodes domain A. They become our ``G_A``,
``G_B`` (:class:`~gan_style.nn.munit_networks.MUNITGenerator`) and ``D_A``, ``D_B``
(:class:`~gan_style.nn.discriminators.MultiScaleDiscriminator`). Widths, depths and the number of
scales are read back from the keys and shapes; the activation, the padding, the discriminator's
``in`` norm (keyless, like ``none``) and ``gan_type`` leave no trace in the weights, so they keep the
reference defaults unless given in ``gen_options`` / ``dis_options``.

Two kinds of keys are dropped before loading, as the reference's own ``test.py`` does: the
instance-norm running statistics that PyTorch 0.3 wrote into the content encoder of the released
models, and the AdaIN layers' dummy ``running_mean`` / ``running_var`` buffers, which never affect
the output (our AdaIN layers have no state).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from gan_style.hub.errors import LayoutMismatch
from gan_style.nn.discriminators import MultiScaleDiscriminator, MultiScaleDiscriminatorSpec
from gan_style.nn.munit_networks import STYLE_DOWNSAMPLE, MUNITGenerator, MUNITGeneratorSpec

__all__ = ["import_munit_checkpoint", "is_munit_discriminator_state", "is_munit_generator_state"]

GENERATOR_PARTS = ("enc_style", "enc_content", "dec", "mlp")
GEN_LAYOUT = "MUNIT generator file (gen_XXXXXXXX.pt)"
DIS_LAYOUT = "MUNIT discriminator file (dis_XXXXXXXX.pt)"
#: which reference sub-dict becomes which of our networks
NAMES = {"gen": {"a": "G_A", "b": "G_B"}, "dis": {"a": "D_A", "b": "D_B"}}

_STATELESS_NORM_KEY = re.compile(r"(enc_content|dec)\.(.+\.)?norm\.(running_mean|running_var|num_batches_tracked)")


def _is_generator(state: Any) -> bool:
    return isinstance(state, Mapping) and bool(state) and {str(k).split(".")[0] for k in state} == set(GENERATOR_PARTS)


def _is_discriminator(state: Any) -> bool:
    return isinstance(state, Mapping) and bool(state) and all(re.match(r"cnns\.\d+\.", str(k)) for k in state)


def _domains(content: Any) -> Mapping[str, Any] | None:
    return content if isinstance(content, Mapping) and content and set(content) <= {"a", "b"} else None


def is_munit_generator_state(state: Any) -> bool:
    """Whether ``state`` is a reference gen file's content ({"a": ..., "b": ...}) or one of its generators."""
    domains = _domains(state)
    return all(_is_generator(s) for s in domains.values()) if domains else _is_generator(state)


def is_munit_discriminator_state(state: Any) -> bool:
    """Whether ``state`` is a reference dis file's content ({"a": ..., "b": ...}) or one of its discriminators."""
    domains = _domains(state)
    return all(_is_discriminator(s) for s in domains.values()) if domains else _is_discriminator(state)


def _read(source: Mapping[str, Any] | str | os.PathLike[str], layout: str, belongs: Any) -> Mapping[str, Mapping[str, Tensor]]:
    """The {"a", "b"} sub-dicts of a file (read weights-only) or of its loaded content."""
    if isinstance(source, (str, os.PathLike)):
        from gan_style.engine.checkpoint import read_weights

        source = read_weights(source)
    domains = _domains(source)
    if domains is None:
        if belongs(source):
            raise LayoutMismatch(layout, "the keys of one network at the top level; the reference's files are {'a': state, 'b': state} (pass {'a': state} or {'b': state})")
        top = list(source)[:6] if isinstance(source, Mapping) else type(source).__name__
        raise LayoutMismatch(layout, f"expected a dict with keys 'a' and/or 'b' (one state dict per domain), got {top}")
    for domain, state in domains.items():
        if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
            raise LayoutMismatch(layout, f"['{domain}'] is not a flat state dict of tensors")
    return domains


def _load(net: nn.Module, state: Mapping[str, Tensor], layout: str) -> nn.Module:
    from gan_style.hub import _load_strict  # lazy: gan_style.hub may import this module

    _load_strict(net, state, layout)
    return net.eval()


def _indices(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.match(k))})


def generator_spec(state: Mapping[str, Tensor], layout: str = GEN_LAYOUT, **options: Any) -> MUNITGeneratorSpec:
    """The ``MUNITGeneratorSpec`` of one generator's state dict (stale norm statistics already dropped)."""
    foreign = [k for k in state if k.split(".")[0] not in GENERATOR_PARTS]
    missing = [p for p in GENERATOR_PARTS if not any(k.startswith(p + ".") for k in state)]
    if foreign or missing:
        raise LayoutMismatch(layout, f"keys outside {GENERATOR_PARTS}: {foreign[:4]}" if foreign else f"no '{missing[0]}.*' keys (an AdaINGen has {', '.join(GENERATOR_PARTS)})")
    first, mlp = state.get("enc_content.model.0.conv.weight"), state.get("mlp.model.0.fc.weight")
    style = state.get(f"enc_style.model.{STYLE_DOWNSAMPLE + 2}.weight")  # the 1x1 conv after the pooling
    if first is None or first.ndim != 4 or mlp is None or mlp.ndim != 2 or style is None or style.ndim != 4:
        raise LayoutMismatch(layout, f"no 'enc_content.model.0.conv.weight' conv, 'mlp.model.0.fc.weight' linear or 'enc_style.model.{STYLE_DOWNSAMPLE + 2}.weight' style conv")
    n_downsample = 0
    while f"enc_content.model.{n_downsample + 1}.conv.weight" in state:
        n_downsample += 1
    n_res = len(_indices(state, rf"enc_content\.model\.{n_downsample + 1}\.model\.(\d+)\."))
    inferred = {
        "dim": first.shape[0],
        "input_dim": first.shape[1],
        "style_dim": style.shape[0],
        "mlp_dim": mlp.shape[0],
        "n_downsample": n_downsample,
        "n_res": n_res,
    }
    if any(k.endswith(".activation.weight") for k in state):
        inferred["activ"] = "prelu"
    return dataclasses.replace(MUNITGeneratorSpec(**inferred), **options)


def discriminator_spec(state: Mapping[str, Tensor], layout: str = DIS_LAYOUT, **options: Any) -> MultiScaleDiscriminatorSpec:
    """The ``MultiScaleDiscriminatorSpec`` of one discriminator's state dict."""
    if not _is_discriminator(state):
        raise LayoutMismatch(layout, f"keys other than 'cnns.<scale>.*': {[k for k in state if not k.startswith('cnns.')][:4]}")
    scales = _indices(state, r"cnns\.(\d+)\.")
    last = _indices(state, r"cnns\.0\.(\d+)\.weight$")  # the plain 1x1 conv closing each scale
    first = state.get("cnns.0.0.conv.weight")
    if scales != list(range(len(scales))) or len(last) != 1 or first is None or first.ndim != 4:
        raise LayoutMismatch(layout, f"scales {scales} (expected 0..n-1), each conv blocks 'cnns.s.i.conv' closed by one plain conv 'cnns.s.n.weight'")
    norm = "bn" if "cnns.0.1.norm.running_mean" in state else "ln" if "cnns.0.1.norm.gamma" in state else "none"
    inferred: dict[str, Any] = {"dim": first.shape[0], "input_dim": first.shape[1], "n_layer": last[0], "num_scales": len(scales), "norm": norm}
    if any(k.endswith(".activation.weight") for k in state):
        inferred["activ"] = "prelu"
    return dataclasses.replace(MultiScaleDiscriminatorSpec(**inferred), **options)


def import_munit_checkpoint(
    gen_state: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    dis_state: Mapping[str, Any] | str | os.PathLike[str] | None = None,
    *,
    gen_options: Mapping[str, Any] | None = None,
    dis_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The networks of a reference gen file and/or dis file (paths, read weights-only, or their
    loaded content), in eval mode: ``{"G_A", "G_B", "D_A", "D_B"}`` for the domains present, and
    ``"specs"``: each network's inferred spec by the same names.

    ``gen_options`` / ``dis_options`` set the spec fields the weights cannot tell (activ, pad_type;
    the discriminator's norm "in" and gan_type). Raises ``LayoutMismatch`` naming what did not match.
    """
    if gen_state is None and dis_state is None:
        raise ValueError("pass a MUNIT gen file, a dis file, or both")
    out: dict[str, Any] = {"specs": {}}
    if gen_state is not None:
        for domain, state in _read(gen_state, GEN_LAYOUT, _is_generator).items():
            state = {k: v for k, v in state.items() if not _STATELESS_NORM_KEY.fullmatch(k)}
            layout = f"{GEN_LAYOUT}['{domain}']"
            spec = generator_spec(state, layout, **(gen_options or {}))
            name = NAMES["gen"][domain]
            out[name], out["specs"][name] = _load(MUNITGenerator(spec), state, f"{layout} as {spec}"), spec
    if dis_state is not None:
        for domain, state in _read(dis_state, DIS_LAYOUT, _is_discriminator).items():
            layout = f"{DIS_LAYOUT}['{domain}']"
            spec = discriminator_spec(state, layout, **(dis_options or {}))
            name = NAMES["dis"][domain]
            out[name], out["specs"][name] = _load(MultiScaleDiscriminator(spec), state, f"{layout} as {spec}"), spec
    return out
