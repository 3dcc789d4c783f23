"""Test-time translation of images of any size: ``gan-style translate``.

A generator needs input sides that are multiples of its total down-sampling factor (4 for the
ResNet generators, 128 / 256 for the U-Nets). Two ways to fit an arbitrary image:

* ``pad`` (default): reflect-pad to the next multiple, translate, crop back. The output has the
  input's exact size and no resampling blur.
* ``resize``: the reference's test-time behaviour (``--preprocess none``): each side is rounded
  to the nearest multiple of 4 with Python's ``round`` (half to even) and the image is resized
  with PIL bicubic if that changed its size; the output keeps the rounded size.

``tile`` translates a large image in overlapping tiles whose outputs are blended with linear
ramps over the overlap, so memory stays bounded whatever the image size (a 3840x2160 photo with
512 px tiles needs well under 2 GB; see README). For networks of local operations the tiled result
equals the whole-image one wherever the discarded quarter of the overlap covers the receptive
field. Instance norm normalises each tile with its own statistics, so use tiles as large as memory
allows: the larger the tile, the closer to a whole-image pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from gan_style.data.images import find_images, is_image_file, load_rgb, pil_to_tensor, tensor_to_pil

FIT_MODES = ("pad", "resize")


@dataclass
class Translator:
    """An image -> image network and what it needs of its input."""

    network: nn.Module
    size_multiple: int
    description: str


def load_translator(checkpoint: str | Path, direction: str = "AtoB", device: str | torch.device = "cpu") -> Translator:
    """A gan_style checkpoint (a ``.pt`` file or a run folder) or an official reference file."""
    from gan_style.engine.checkpoint import FORMAT

    path = Path(checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / "latest.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist (give a .pt/.pth file or a run folder)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        from gan_style.config import apply_overrides
        from gan_style.methods import get_method

        method_cls = get_method(state["method"])
        method = method_cls(apply_overrides(method_cls.Config(), state["config"]))
        networks = method.build_networks()
        for name, net in networks.items():
            net.load_state_dict(state["networks"][name])
        network = method.inference_network(networks, direction)
        description = f"{state['method']} checkpoint {path} (step {state['progress']['step']}, {direction})"
    else:
        from gan_style.hub import import_reference_state_dict

        network, spec = import_reference_state_dict(state, str(path))
        description = f"reference checkpoint {path}: {spec}"
    network = network.eval().to(device)
    return Translator(network, getattr(network, "size_multiple", 4), description)


def reference_size(width: int, height: int, multiple: int = 4) -> tuple[int, int]:
    """Each side rounded to the nearest multiple with Python's round (half to even), as the
    reference's ``__make_power_2`` does; never below one multiple."""
    return max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple)


def _pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x, (height, width)
    # Reflection needs the pad to be smaller than the side; replicate covers tiny images.
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def run_padded(network: Callable[[Tensor], Tensor], x: Tensor, multiple: int) -> Tensor:
    padded, (height, width) = _pad_to_multiple(x, multiple)
    return network(padded)[..., :height, :width]


def _ramp(length: int, overlap: int, at_start: bool, at_end: bool) -> Tensor:
    """1-D blending weights of a tile. On a side that touches a neighbour, the outer quarter of
    the overlap gets weight 0 (those pixels saw zero/reflect padding instead of the real
    neighbourhood) and the next half ramps linearly up to 1; the sides at the image border keep 1.
    Outputs are divided by the summed weights, so the ramps need not sum to one exactly (the
    last tile of a row may overlap its neighbour by more than ``overlap``)."""
    weights = torch.ones(length)
    margin = overlap // 4
    span = max(1, overlap - 2 * margin)
    ramp = ((torch.arange(overlap, dtype=torch.float32) + 0.5 - margin) / span).clamp(0, 1)
    if overlap > 0:
        if not at_start:
            weights[:overlap] = ramp
        if not at_end:
            weights[-overlap:] = torch.minimum(weights[-overlap:], ramp.flip(0))
    return weights


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((length - overlap) / stride)
    starts = [min(i * stride, length - tile) for i in range(count)]
    return sorted(set(starts))


def run_tiled(network: Callable[[Tensor], Tensor], x: Tensor, multiple: int, tile: int, overlap: int) -> Tensor:
    """Translate ``x`` (1, C, H, W) tile by tile; tiles and overlap are rounded to ``multiple``."""
    tile = max(multiple, tile // multiple * multiple)
    overlap = min(overlap // multiple * multiple, tile // 2)
    padded, (height, width) = _pad_to_multiple(x, multiple)
    full_h, full_w = padded.shape[-2:]
    tile_h, tile_w = min(tile, full_h), min(tile, full_w)
    out: Tensor | None = None
    weight_sum = torch.zeros(1, 1, full_h, full_w)
    ys, xs = _tile_starts(full_h, tile_h, overlap), _tile_starts(full_w, tile_w, overlap)
    for y in ys:
        for x0 in xs:
            piece = network(padded[..., y : y + tile_h, x0 : x0 + tile_w]).float().cpu()
            if out is None:
                out = torch.zeros(1, piece.shape[1], full_h, full_w)
            # The actual overlap with the neighbour can exceed `overlap` for the last tile.
            wy = _ramp(tile_h, overlap, y == ys[0], y == ys[-1])
            wx = _ramp(tile_w, overlap, x0 == xs[0], x0 == xs[-1])
            w = torch.outer(wy, wx)[None, None]
            out[..., y : y + tile_h, x0 : x0 + tile_w] += piece * w
            weight_sum[..., y : y + tile_h, x0 : x0 + tile_w] += w
    assert out is not None
    return (out / weight_sum)[..., :height, :width]


def collect_inputs(source: str | Path) -> list[Path]:
    path = Path(source)
    if path.is_file():
        if not is_image_file(path):
            raise ValueError(f"{path} is not an image file this tool reads (jpg, png, webp, bmp, tiff)")
        return [path]
    return find_images(path)


def translate_images(
    translator: Translator,
    inputs: Iterable[Path],
    output_dir: str | Path,
    fit: str = "pad",
    tile: int | None = None,
    tile_overlap: int = 64,
    batch_size: int = 1,
    input_root: Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[Path]:
    """Translate every input image and write a PNG per input into ``output_dir`` (sub-folders of
    ``input_root`` are kept). Returns the written paths."""
    if fit not in FIT_MODES:
        raise ValueError(f"fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    output_dir = Path(output_dir)
    inputs = list(inputs)
    multiple = translator.size_multiple
    written: list[Path] = []

    def destination(src: Path) -> Path:
        relative = src.relative_to(input_root) if input_root is not None else Path(src.name)
        return output_dir / relative.with_suffix(".png")

    def prepare(src: Path) -> Tensor:
        image = load_rgb(src)
        if fit == "resize":
            size = reference_size(*image.size, multiple=max(4, multiple))
            if size != image.size:
                image = image.resize(size, Image.BICUBIC)
        return pil_to_tensor(image)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(inputs), desc="translate", unit="img", dynamic_ncols=True)
    net = translator.network
    with torch.inference_mode():
        pending: list[tuple[Path, Tensor]] = []

        def flush() -> None:
            if not pending:
                return
            batch = torch.stack([t for _, t in pending]).to(device)
            if tile:
                outputs = torch.cat([run_tiled(net, image[None], multiple, tile, tile_overlap) for image in batch])
            else:
                outputs = run_padded(net, batch, multiple).float().cpu()
            for (src, _), result in zip(pending, outputs):
                dst = destination(src)
                dst.parent.mkdir(parents=True, exist_ok=True)
                tensor_to_pil(result).save(dst)
                written.append(dst)
            if bar is not None:
                bar.update(len(pending))
            pending.clear()

        for src in inputs:
            tensor = prepare(src)
            if pending and (pending[0][1].shape != tensor.shape or len(pending) >= batch_size):
                flush()
            pending.append((src, tensor))
        flush()
    if bar is not None:
        bar.close()
    return written
