"""Official checkpoints of the reference implementations, loaded into gan_style networks.

``import_reference_checkpoint(path_or_state_dict)`` reads a reference file (without executing
pickled code), infers the architecture from its keys and shapes, builds the matching gan_style
network and loads the weights strictly. A file that fits no known layout raises
``CheckpointLayoutError`` listing, for each layout tried, what did not match.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from gan_style.hub import cut_family, pix2pix_family
from gan_style.hub.errors import CheckpointLayoutError, LayoutMismatch

Importer = Callable[[dict[str, Tensor]], tuple[nn.Module, Any]]

#: tried in order; later methods append their importers here
IMPORTERS: list[Importer] = [*pix2pix_family.IMPORTERS, *cut_family.IMPORTERS]


def read_checkpoint_file(path: str | Path) -> Any:
    """A reference file's content, read weights-only (see ``engine.checkpoint.read_weights``)."""
    from gan_style.engine.checkpoint import read_weights

    return read_weights(path)


def _load_strict(net: nn.Module, state: Mapping[str, Tensor], layout: str) -> None:
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    if wrong_shape:
        problems.append(f"shape mismatches {wrong_shape[:8]}{' ...' if len(wrong_shape) > 8 else ''}")
    if problems:
        raise LayoutMismatch(layout, "; ".join(problems))
    net.load_state_dict(state, strict=True)


def import_reference_state_dict(state: Mapping[str, Tensor], source: str = "state dict") -> tuple[nn.Module, Any]:
    """Build and load the network that ``state`` belongs to; returns (network, its spec)."""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointLayoutError(f"{source} is not a flat state_dict of tensors")
    state = pix2pix_family.prepare_state(state)
    reasons: list[str] = []
    for importer in IMPORTERS:
        try:
            net, spec = importer(state)
            _load_strict(net, state, type(spec).__name__ + f"({spec})")
        except LayoutMismatch as exc:
            reasons.append(str(exc))
            continue
        return net.eval(), spec
    listing = "\n  - ".join(reasons)
    raise CheckpointLayoutError(f"{source} fits no known reference layout. Tried:\n  - {listing}")


def import_reference_checkpoint(source: str | Path | Mapping[str, Tensor]) -> nn.Module:
    """A reference checkpoint file (or its loaded state_dict) as a gan_style network in eval mode."""
    if isinstance(source, (str, Path)):
        state = read_checkpoint_file(source)
        return import_reference_state_dict(state, str(source))[0]
    return import_reference_state_dict(source)[0]
