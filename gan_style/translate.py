"""Test-time translation of images of any size: ``gan-style translate``.

A generator needs input sides that are multiples of its total down-sampling factor (4 for the
ResNet generators, 128 / 256 for the U-Nets). Two ways to fit an arbitrary image:

* ``pad`` (default): reflect-pad to the next multiple, translate, crop back. The output has the
  input's exact size and no resampling blur.
* ``resize``: the reference's test-time behaviour (``--preprocess none``): each side is rounded
  to the nearest multiple of 4 with Python's ``round`` (half to even) and the image is resized
  with PIL bicubic if that changed its size; the output keeps the rounded size.

``tile`` translates a large image in tiles of about that many pixels, so memory stays bounded
whatever the image size. Two modes (``tile_mode``):

* ``exact`` (default): :mod:`gan_style.tiling` runs the network layer by layer over the image,
  each region from the exact region of its input it needs, and gives every instance norm / layer
  norm / AdaIN the statistics of the whole image, gathered tile by tile. The result is the
  whole-image result (up to float32 rounding). For the CycleGAN / CUT / FastCUT generators
  (any network of the layers it knows), MUNIT and AdaIN; other models fall back to ``per-tile``
  with a warning. See docs/tiling.md for its cost.
* ``per-tile``: each tile is translated on its own and the outputs are blended with linear ramps
  over the overlap. For networks of local operations that equals the whole-image result wherever
  the discarded quarter of the overlap covers the receptive field; instance norm normalises each
  tile with its own statistics, so tiles take different tones.

Data is never lost: an output folder that is (or is inside) the input folder is refused, and
inputs that would share an output name are all kept (see :func:`plan_outputs`). A bad input (an
unreadable file, one above the decoder's pixel limit, one that runs out of memory) is skipped
with one message and the others are still translated, unless ``strict``. Images smaller than the
network can take (1x1, 2000x2) are replicate-padded up to its minimum side and cropped back.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from gan_style.data.images import (
    ImageTooLargeError,
    find_images,
    is_image_file,
    load_rgb,
    pil_to_tensor,
    pixel_limit,
    tensor_to_pil,
)
from gan_style.errors import UserError

FIT_MODES = ("pad", "resize")
TILE_MODES = ("exact", "per-tile")

logger = logging.getLogger(__name__)

#: The tile size error messages suggest: bounded memory (about 2 GB) for the ResNet generators.
SUGGESTED_TILE = 512


@dataclass
class ImageTranslator:
    """An image -> image function (a method's translator with its inputs bound) and what it needs
    of its input.

    ``min_side``: the smallest (padded) side the network runs on; ``None`` until
    :func:`translate_images` first meets an image small enough to need it, and probes.
    ``program``: builds the translation as :mod:`gan_style.tiling` operations, for exact tiles
    (default: the network itself when it is an ``nn.Module`` the tiler knows); ``exact_error``:
    why there is none (then tiles are normalised on their own).
    """

    network: Callable[[Tensor], Tensor]
    size_multiple: int
    description: str
    min_side: int | None = None
    program: Callable[[Tensor], list[Any]] | None = None
    exact_error: str | None = None
    program_factory: Callable[[], Callable[[Tensor], list[Any]]] | None = None  # makes ``program`` on first use

    def exact_program(self) -> Callable[[Tensor], list[Any]] | None:
        """The builder of the exact tiled program, or None (and ``exact_error`` says why)."""
        from gan_style import tiling

        if self.program is None and self.exact_error is None:
            if self.program_factory is not None:
                try:
                    self.program = self.program_factory()
                except tiling.Unsupported as error:
                    self.exact_error = str(error)
            elif isinstance(self.network, torch.nn.Module):
                try:
                    tiling.lower(self.network)
                    network = self.network
                    self.program = lambda image: tiling.lower(network)
                except tiling.Unsupported as error:
                    self.exact_error = str(error)
            else:
                self.exact_error = "its translation is not one network"
        return self.program


def load_translator(
    checkpoint: str | Path, direction: str = "AtoB", device: str | torch.device = "cpu", inputs: Mapping[str, Any] | None = None
) -> ImageTranslator:
    """A run folder, a gan_style checkpoint or an official reference file (``gan_style.load``),
    as the image function of ``direction`` with the method's extra ``inputs`` bound (image inputs
    may be file paths)."""
    return load_translators(checkpoint, direction, device, [inputs or {}])[0]


def load_translators(
    checkpoint: str | Path,
    direction: str,
    device: str | torch.device,
    variants: Sequence[Mapping[str, Any]],
    flags: Mapping[str, str] | None = None,
) -> list[ImageTranslator]:
    """One model loaded once, bound once per set of inputs in ``variants`` (MUNIT's
    ``--num-styles N``: one translator per style). ``flags`` names the command-line flag of each
    input, so that a model without that input is refused with the flag's name."""
    from gan_style.api import load

    model = load(checkpoint, device=device)
    if flags:
        accepted = model.inputs(direction)
        for name, flag in flags.items():
            if name not in accepted:
                takes = f"takes only {', '.join(accepted)}" if accepted else "takes no inputs besides the image"
                raise UserError(f"{flag}: {model.description} has no {name!r} input ({takes}); {flag} is for models with styles, such as MUNIT")
    from gan_style import tiling

    translators = []
    for inputs in variants:
        bound = {name: load_rgb(value) if isinstance(value, (str, Path)) else value for name, value in inputs.items()}
        function, translator = model.bind(direction, **bound)
        translators.append(ImageTranslator(function, translator.size_multiple, f"{model.description}, {direction}",
                                           program_factory=partial(tiling.program_of, model, direction, bound)))
    return translators


def parse_inference_inputs(items: Sequence[str] | None) -> dict[str, Any]:
    """``--with style=starry.jpg --with alpha=0.8`` -> {"style": Path("starry.jpg"), "alpha": 0.8}:
    a value naming an existing file is a path (an image input), anything else a YAML scalar."""
    import yaml

    inputs: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--with expects NAME=VALUE (e.g. --with style=painting.jpg), got {item!r}")
        path = Path(value).expanduser()
        inputs[name.strip()] = path if path.exists() else yaml.safe_load(value)
    return inputs


def reference_size(width: int, height: int, multiple: int = 4) -> tuple[int, int]:
    """Each side rounded to the nearest multiple with Python's round (half to even), as the
    reference's ``__make_power_2`` does; never below one multiple."""
    return max(multiple, round(width / multiple) * multiple), max(multiple, round(height / multiple) * multiple)


def _pad_to_multiple(x: Tensor, multiple: int, min_side: int | None = None) -> tuple[Tensor, tuple[int, int]]:
    height, width = x.shape[-2:]
    least = min_side or multiple
    pad_h = max(least, math.ceil(height / multiple) * multiple) - height
    pad_w = max(least, math.ceil(width / multiple) * multiple) - width
    if pad_h == 0 and pad_w == 0:
        return x, (height, width)
    # Reflection needs the pad to be smaller than the side; replicate covers tiny images.
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), (height, width)


def run_padded(network: Callable[[Tensor], Tensor], x: Tensor, multiple: int, min_side: int | None = None) -> Tensor:
    """``network`` on ``x`` padded to a multiple (and to at least ``min_side``), cropped back."""
    padded, (height, width) = _pad_to_multiple(x, multiple, min_side)
    return network(padded)[..., :height, :width]


def probe_min_side(network: Callable[[Tensor], Tensor], channels: int, multiple: int, device: str | torch.device = "cpu") -> int:
    """The smallest padded side ``network`` runs on: one ``multiple`` (U-Nets), two for the ResNet
    generators (their bottleneck must be 2 pixels or more for instance norm and reflection
    padding), more for networks with unpadded convolutions (the Swapping Autoencoder's texture
    branch). Tries 1, 2, 4 ... 64 multiples."""
    for factor in (1, 2, 4, 8, 16, 32, 64):
        try:
            with torch.inference_mode():
                network(torch.zeros(1, channels, factor * multiple, factor * multiple, device=device))
            return factor * multiple
        except (RuntimeError, ValueError):
            continue
    raise UserError(f"the network runs on no input side up to {64 * multiple} pixels")


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


def run_tiled(
    network: Callable[[Tensor], Tensor], x: Tensor, multiple: int, tile: int, overlap: int, min_side: int | None = None
) -> Tensor:
    """Translate ``x`` (1, C, H, W) tile by tile; tiles and overlap are rounded to ``multiple``."""
    tile = max(min_side or multiple, tile // multiple * multiple)
    overlap = min(overlap // multiple * multiple, tile // 2)
    padded, (height, width) = _pad_to_multiple(x, multiple, min_side)
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


def run_tiled_exact(
    build: Callable[[Tensor], list[Any]] | torch.nn.Module, x: Tensor, multiple: int, tile: int, min_side: int | None = None, memory_budget: int | None = None
) -> Tensor:
    """The whole-image result of the program ``build`` makes, on ``x`` (B, C, H, W) padded as
    :func:`run_padded` pads it, computed in tiles of about ``tile`` pixels (:mod:`gan_style.tiling`)."""
    from gan_style import tiling

    padded, (height, width) = _pad_to_multiple(x, multiple, min_side)
    budget = tiling.DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    return tiling.run_exact(build, padded, tile, budget)[..., :height, :width].float().cpu()


def collect_inputs(source: str | Path) -> list[Path]:
    path = Path(source)
    if not path.exists():
        raise UserError(f"--input {path} does not exist; give an image file or a folder of images")
    if path.is_file():
        if not is_image_file(path):
            raise UserError(f"--input {path} is not an image file this tool reads (jpg, png, webp, bmp, tiff, ppm)")
        return [path]
    return find_images(path)


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` (CUDA when there is one), or a device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name} is not a device name torch knows; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {name}: there are only {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: no MPS device is available here; use --device cpu")
    return device


def check_options(
    tile: int | None = None,
    tile_overlap: int = 64,
    batch_size: int = 1,
    max_pixels: int | None = None,
    fit: str = "pad",
    size_multiple: int | None = None,
    tile_mode: str = "exact",
) -> None:
    """Raise :class:`UserError` naming the first bad option. ``size_multiple``, once the network
    is known, also checks that a tile holds at least one multiple."""
    if fit not in FIT_MODES:
        raise UserError(f"--fit must be one of {', '.join(FIT_MODES)}, got {fit!r}")
    if tile_mode not in TILE_MODES:
        raise UserError(f"--tile-mode must be one of {', '.join(TILE_MODES)}, got {tile_mode!r}")
    if tile is not None and tile < 1:
        raise UserError(f"--tile must be a positive number of pixels, e.g. --tile {SUGGESTED_TILE}; got {tile}")
    if tile is not None and size_multiple is not None and tile < size_multiple:
        raise UserError(
            f"--tile {tile} is smaller than this network's size multiple {size_multiple}; "
            f"use --tile {max(SUGGESTED_TILE, size_multiple)} (or any multiple of {size_multiple})"
        )
    if tile_overlap < 0:
        raise UserError(f"--tile-overlap must be 0 or more pixels, got {tile_overlap}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be 1 or more, got {batch_size}")
    if max_pixels is not None and max_pixels < 0:
        raise UserError(f"--max-pixels must be 0 (no limit) or a number of pixels, got {max_pixels}")


def check_output_folder(source: str | Path, output_dir: str | Path) -> None:
    """Refuse an output folder that would mix the translations with the inputs: the input folder
    itself (or an input image's folder), or one inside the input folder, whose outputs the next
    run would translate again."""
    src, out = Path(source).resolve(), Path(output_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {output_dir} is a file; give a folder (it is created if missing)")
    if src.is_dir():
        if out == src:
            raise UserError(f"--output {output_dir} is the --input folder; choose an --output outside {source}")
        if src in out.parents:
            raise UserError(
                f"--output {output_dir} is inside the --input folder, so a later run would translate "
                f"the outputs too; choose an --output outside {source}"
            )
    elif out == src.parent:
        raise UserError(f"--output {output_dir} is the folder of the --input image {source}; choose another --output folder")


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def plan_outputs(
    inputs: Iterable[Path], output_dir: str | Path, input_root: Path | None = None, suffix: str = ""
) -> tuple[dict[Path, Path], list[str]]:
    """The PNG file each input is written to, and one note per set of renamed outputs.

    An input's output is its path relative to ``input_root`` (its name without one) with the
    suffix ``.png`` (``suffix`` before it: ``a_style0.png`` for ``a.jpg``). When several inputs
    would share an output (``a.jpg`` and ``a.png``, compared
    ignoring case as macOS and Windows do), the ``.png`` input, or else the first in order, keeps
    it and each other one is named after its full file name: ``a.jpg`` -> ``a.jpg.png`` (then
    ``a.jpg-2.png``... should that be taken too). Raises :class:`UserError` when an output would
    be one of the inputs.
    """
    output_dir = Path(output_dir)
    relative = {src: src.relative_to(input_root) if input_root is not None else Path(src.name) for src in inputs}
    groups: dict[str, list[Path]] = {}
    for src, rel in relative.items():
        groups.setdefault(str(rel.with_name(f"{rel.stem}{suffix}.png")).casefold(), []).append(src)
    taken = set(groups)
    plan: dict[Path, Path] = {}
    notes: list[str] = []
    for members in groups.values():
        keeper = next((src for src in members if src.suffix.lower() == ".png"), members[0])
        plan[keeper] = output_dir / relative[keeper].with_name(f"{relative[keeper].stem}{suffix}.png")
        for src in members:
            if src == keeper:
                continue
            rel, number = relative[src], 2
            name = rel.with_name(f"{rel.name}{suffix}.png")
            while str(name).casefold() in taken:
                name, number = rel.with_name(f"{rel.name}-{number}{suffix}.png"), number + 1
            taken.add(str(name).casefold())
            plan[src] = output_dir / name
        if len(members) > 1:
            renamed = ", ".join(f"{src.name} -> {plan[src].name}" for src in members if src != keeper)
            notes.append(f"{', '.join(src.name for src in members)} would all be written as {plan[keeper]}; keeping each: {renamed}")
    # Only outputs that exist already can be an input; stat the inputs only then.
    existing = [(src, dst) for src, dst in plan.items() if dst.exists()]
    if existing:
        identities = {_file_identity(src): src for src in relative}
        for src, dst in existing:
            if _file_identity(dst) in identities:
                raise UserError(
                    f"the output {dst} of {src} would overwrite the input image {identities[_file_identity(dst)]}; "
                    f"choose an --output outside {input_root if input_root is not None else src.parent}"
                )
    return plan, notes


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA, MPS or CPU), not a bug."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        words in text for words in ("out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate")
    )


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def translate_images(
    translator: ImageTranslator,
    inputs: Iterable[Path],
    output_dir: str | Path,
    fit: str = "pad",
    tile: int | None = None,
    tile_overlap: int = 64,
    batch_size: int = 1,
    input_root: Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    strict: bool = False,
    max_pixels: int | None = None,
    report: Callable[[str], None] | None = None,
    suffix: str = "",
    tile_mode: str = "exact",
) -> list[Path]:
    """Translate every input image and write a PNG per input into ``output_dir`` (sub-folders of
    ``input_root`` are kept; names as :func:`plan_outputs`). Returns the written paths.

    A bad input (unreadable, above the pixel limit, out of memory) is skipped: ``report`` gets a
    one-line message naming it and why (default: a logged warning), and the others are still written;
    with ``strict`` the first bad input raises :class:`UserError` instead. Renamed outputs are
    reported too. ``max_pixels``: the decoder's pixel limit for this call (0: none; default:
    PIL's, lifted when tiling, whose memory does not grow with the image). ``suffix`` goes into
    every output name before ``.png`` (MUNIT's ``--num-styles``: ``a_style0.png``, ``a_style1.png`` ...).
    ``tile_mode``: ``exact`` (whole-image statistics; falls back to ``per-tile`` with a warning for
    networks the tiler does not know) or ``per-tile`` (see the module docstring).
    """
    check_options(tile, tile_overlap, batch_size, max_pixels, fit, translator.size_multiple, tile_mode)
    say = report if report is not None else logger.warning
    output_dir = Path(output_dir)
    inputs = list(inputs)
    # Loose files (no input_root): only their own folders are refused, one file per folder.
    for source in [input_root] if input_root is not None else {src.parent: src for src in inputs}.values():
        check_output_folder(source, output_dir)
    plan, notes = plan_outputs(inputs, output_dir, input_root, suffix)
    for note in notes:
        say(note)
    multiple = translator.size_multiple
    net = translator.network
    written: list[Path] = []
    program = translator.exact_program() if tile and tile_mode == "exact" else None
    if tile and tile_mode == "exact" and program is None:
        say(f"--tile: {translator.description} cannot be tiled exactly ({translator.exact_error}); "
            "each tile is normalised on its own (--tile-mode per-tile), so tiles may differ in tone")

    def fail(src: Path, error: UserError) -> None:
        if strict:
            raise error
        say(_one_line(f"skipped {src}: {error}"))

    def out_of_memory(src: Path, size: tuple[int, int] | None, error: BaseException) -> UserError:
        what = f"{src} ({size[0]}x{size[1]} pixels)" if size else str(src)
        fix = f"use a smaller --tile than {tile}" if tile else f"translate it in tiles with --tile {SUGGESTED_TILE}"
        detail = _one_line(str(error))  # CUDA's message runs to several sentences: keep the start
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        return UserError(f"out of memory translating {what}: {fix} ({type(error).__name__}: {detail})")

    def prepare(src: Path) -> Tensor:
        try:
            image = load_rgb(src)
        except ImageTooLargeError as error:
            width, height = error.size
            raise UserError(
                f"{src} is {width}x{height} = {width * height} pixels, above the decoder's limit of {error.limit} "
                f"(a guard against decompression bombs); translate it with --tile {SUGGESTED_TILE}, which lifts "
                f"the limit, or raise it with --max-pixels {width * height} (0 = no limit)"
            ) from error
        if fit == "resize":
            size = reference_size(*image.size, multiple=max(4, multiple))
            if size != image.size:
                image = image.resize(size, Image.BICUBIC)
        return pil_to_tensor(image)

    def min_side_for(tensor: Tensor) -> int | None:
        # Probe only once an image (or tile) is small enough for it to matter: ResNets need two
        # multiples.
        if translator.min_side is None and min(*tensor.shape[-2:], tile or tensor.shape[-1]) < 2 * multiple:
            translator.min_side = probe_min_side(net, tensor.shape[0], multiple, device)
        return translator.min_side

    def run_group(group: list[tuple[Path, Tensor]]) -> None:
        least = min_side_for(group[0][1])
        try:
            batch = torch.stack([t for _, t in group]).to(device)
            if tile and program is not None:
                outputs = run_tiled_exact(program, batch, multiple, tile, least)
            elif tile:
                outputs = torch.cat([run_tiled(net, image[None], multiple, tile, tile_overlap, least) for image in batch])
            else:
                outputs = run_padded(net, batch, multiple, least).float().cpu()
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            if len(group) > 1:  # one image at a time may fit
                for item in group:
                    run_group([item])
                return
            src, tensor = group[0]
            fail(src, out_of_memory(src, (tensor.shape[-1], tensor.shape[-2]), error))
            return
        for (src, _), result in zip(group, outputs):
            dst = plan[src]
            dst.parent.mkdir(parents=True, exist_ok=True)
            tensor_to_pil(result).save(dst)
            written.append(dst)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(inputs), desc="translate", unit="img", dynamic_ncols=True)
    if max_pixels is not None:
        limit = pixel_limit(max_pixels or None)
    else:
        limit = pixel_limit(None) if tile else nullcontext()
    pending: list[tuple[Path, Tensor]] = []

    def flush() -> None:
        if pending:
            run_group(list(pending))
            if bar is not None:
                bar.update(len(pending))
            pending.clear()

    def translate_all() -> None:
        for src in inputs:
            try:
                tensor = prepare(src)
            except Exception as error:  # UserError: unreadable, empty, too large; or no memory
                if not isinstance(error, UserError) and not is_out_of_memory(error):
                    raise
                fail(src, error if isinstance(error, UserError) else out_of_memory(src, None, error))
                if bar is not None:
                    bar.update(1)
                continue
            if pending and (pending[0][1].shape != tensor.shape or len(pending) >= batch_size):
                flush()
            pending.append((src, tensor))
        flush()

    try:
        with limit, torch.inference_mode():
            translate_all()
    finally:
        if bar is not None:
            bar.close()  # before an error message, not under it
    return written
