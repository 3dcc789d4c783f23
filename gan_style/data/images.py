"""Finding, decoding and converting images.

Every decoded image becomes 8-bit RGB, whatever its file stores (grey, alpha, palette, CMYK,
16 bits per channel), so the rest of the pipeline sees one format. Tensors use the reference
CycleGAN convention: float32 (C, H, W) in [-1, 1].
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from gan_style.errors import UserError

#: File name suffixes treated as images (compared case-insensitively).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".ppm",
)

# Background used when an image has transparency. PIL's plain convert("RGB") drops the alpha
# channel and reveals whatever colour the transparent pixels happen to store (often black);
# white matches how image viewers and browsers show such files.
ALPHA_BACKGROUND = (255, 255, 255)

_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"LA", "La", "RGBA", "RGBa", "PA"})
# Modes Image.reduce handles and whose box average means the same after to_rgb.
_REDUCIBLE_MODES = frozenset({"L", "RGB", "CMYK", "YCbCr", "I", "F"})


class DatasetError(UserError):
    """A problem with the data on disk; the message names the path and how to fix it."""


class ImageTooLargeError(DatasetError):
    """An image above the decoder's pixel limit (PIL's guard against decompression bombs)."""

    def __init__(self, message: str, path: Path, size: tuple[int, int], limit: int) -> None:
        super().__init__(message)
        self.path, self.size, self.limit = path, size, limit


# The limits of the active pixel_limit() blocks, innermost last.
_pixel_limits: list[int | None] = []


@contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Within the block, :func:`load_rgb` decodes images of up to ``max_pixels`` pixels (``None``:
    any size) and refuses larger ones, instead of PIL's guard (a warning above
    ``Image.MAX_IMAGE_PIXELS``, a refusal above twice that). PIL's setting is restored
    afterwards, so other callers keep it."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # load_rgb applies the limit itself, exactly
    _pixel_limits.append(max_pixels)
    try:
        yield
    finally:
        _pixel_limits.pop()
        Image.MAX_IMAGE_PIXELS = saved


def is_image_file(path: str | os.PathLike[str]) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    # Dot files include macOS "._name.jpg" resource forks, which carry an image suffix but are
    # not images; "__MACOSX" folders hold the same in zip archives made on a Mac.
    return name.startswith(".") or name == "__MACOSX"


def find_images(
    folder: str | os.PathLike[str],
    recursive: bool = True,
    max_count: int | None = None,
) -> list[Path]:
    """Return the image files in ``folder``, sorted by path, at most ``max_count`` of them.

    Hidden files and folders (name starting with ".", and "__MACOSX") are ignored. Raises
    :class:`DatasetError` if the folder does not exist or holds no image.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise DatasetError(
            f"Image folder {folder} {what}. An unpaired dataset is a folder <root> with one "
            f"sub-folder of images per domain and phase: <root>/trainA and <root>/trainB "
            f"(and <root>/testA, <root>/testB for testing). Check the dataset root, or fetch a "
            f"public dataset with `python datasets/download.py NAME`."
        )
    images: list[Path] = []
    if recursive:
        # Symlinked folders are followed, so a link to an ancestor (or two links to one folder)
        # would list the same files again and again: each real folder is walked once. Sorting
        # makes the walk order, hence which of the paths is kept, deterministic.
        visited: dict[tuple[int, int], Path] = {}
        for directory, subdirs, files in os.walk(folder, followlinks=True):
            base = Path(directory)
            identity = _identity(base)
            if identity is not None and identity in visited:
                warnings.warn(
                    f"{base} is a symbolic link to {visited[identity]}, which is already searched "
                    f"(a loop or a second link); its images are listed once.",
                    stacklevel=2,
                )
                subdirs[:] = []
                continue
            if identity is not None:
                visited[identity] = base
            subdirs[:] = sorted(d for d in subdirs if not _is_hidden(d))
            images.extend(base / f for f in sorted(files) if is_image_file(f) and not _is_hidden(f))
    else:
        images = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p) and not _is_hidden(p.name))
    images = _unique_files(images)
    images.sort()
    if not images:
        raise DatasetError(
            f"Image folder {folder} contains no images"
            f"{'' if recursive else ' (sub-folders not searched)'}. Accepted file extensions "
            f"(any case): {', '.join(IMAGE_EXTENSIONS)}."
        )
    if max_count is not None:
        images = images[:max_count]
    return images


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()  # follows links: the identity of what the path leads to
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _unique_files(paths: list[Path]) -> list[Path]:
    """``paths`` without later paths to an already listed file (file symlinks, hard links).
    Broken links are kept: loading reports them."""
    seen: set[tuple[int, int]] = set()
    unique = []
    for path in paths:
        identity = _identity(path)
        if identity is not None and identity in seen:
            continue
        if identity is not None:
            seen.add(identity)
        unique.append(path)
    return unique


def load_rgb(path: str | os.PathLike[str], min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``path`` into an 8-bit RGB image, upright according to its EXIF orientation.

    Conversions:

    * grey ("1", "L") is replicated to three channels;
    * transparency (LA, RGBA, palette with transparency) is composited onto white;
    * 16-bit images ("I;16*", and "I" which is how 16-bit data may be decoded) are mapped to
      8 bits by keeping the high byte (value >> 8, clipped to 0..65535 first). That is an
      exact inverse of the usual 8-to-16-bit expansion (v * 257), uses bins of equal width, and
      matches what Pillow itself does when it decodes 48-bit RGB PNG and TIFF files, so grey and
      colour 16-bit files are treated alike. (PIL's convert("RGB") would instead clip every value
      above 255 to white.)
    * 32-bit float images ("F") are taken to hold values in [0, 1];
    * CMYK and the other colour spaces use Pillow's conversion (embedded ICC profiles are not
      applied).

    ``min_size`` (width, height), for callers that resize the image down anyway: the image may
    come back smaller, but at least twice ``min_size`` on each side (the margin
    ``Image.thumbnail`` uses by default, so the final resize still low-pass filters properly). A
    JPEG is then decoded at a reduced DCT scale (1/2, 1/4 or 1/8: a 144-megapixel photo is never
    decoded whole), other formats are box-reduced after decoding. An image less than four times
    ``min_size`` on either side comes back exactly as without it.

    Raises :class:`DatasetError` naming the file if it is missing, empty, truncated or not an
    image, :class:`ImageTooLargeError` above the decoder's pixel limit (see :func:`pixel_limit`).
    """
    path = Path(path)
    try:
        with Image.open(path) as opened:
            limit = _pixel_limits[-1] if _pixel_limits else None
            if limit is not None and opened.width * opened.height > limit:
                raise ImageTooLargeError(_too_large_message(path, opened.size, limit), path, opened.size, limit)
            if min_size is not None and opened.format == "JPEG":
                stored = _stored_orientation(opened, min_size)
                opened.draft(opened.mode, (2 * stored[0], 2 * stored[1]))
            opened.load()  # decode now, so truncated data fails here rather than later
            image = _upright(opened)
            factor = 1
            if min_size is not None:
                factor = min(image.width // (2 * max(1, min_size[0])), image.height // (2 * max(1, min_size[1])))
            if factor >= 2 and image.mode in _REDUCIBLE_MODES:
                image, factor = image.reduce(factor), 1  # before the conversion, which copies
            image = to_rgb(image)
            return image.reduce(factor) if factor >= 2 else image
    except Image.DecompressionBombError as error:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        with pixel_limit(None), Image.open(path) as opened:  # reads the header only
            size = opened.size
        raise ImageTooLargeError(_too_large_message(path, size, limit), path, size, limit) from error
    except (DatasetError, MemoryError):
        raise  # running out of memory says nothing about the file
    except Exception as error:  # Pillow raises many types: OSError, SyntaxError, ValueError...
        raise DatasetError(
            f"Cannot read image {path}: {type(error).__name__}: {error}. The file is missing, "
            f"empty, truncated or not an image; replace or delete it."
        ) from error


def _stored_orientation(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """An upright (width, height), at least 1 each, in the file's stored orientation: EXIF
    orientations 5 to 8 swap the sides."""
    try:
        swapped = img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except Exception:
        swapped = False
    width, height = max(1, size[0]), max(1, size[1])
    return (height, width) if swapped else (width, height)


def _too_large_message(path: Path, size: tuple[int, int], limit: int) -> str:
    return (
        f"Image {path} is {size[0]}x{size[1]} = {size[0] * size[1]} pixels, more than the decoder "
        f"accepts ({limit} pixels, a guard against decompression bombs); shrink the file, or raise "
        f"the limit for trusted files (gan_style.data.images.pixel_limit)."
    )


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag, if any (cameras store portrait shots sideways)."""
    try:
        if img.getexif().get(_EXIF_ORIENTATION, 1) == 1:
            return img  # the common case: no copy
        return ImageOps.exif_transpose(img)
    except Exception:
        # Malformed EXIF metadata should not cost a readable image; keep it as stored.
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to a new 8-bit RGB image (never returns ``img`` itself)."""
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
        grey = np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "P":
        # A palette may hold transparency in its entries or as a "transparency" key; going
        # through RGBA covers both, and fully opaque pixels keep their exact colour.
        return _composite_on_background(img.convert("RGBA"))
    if mode in _ALPHA_MODES:
        return _composite_on_background(img.convert("RGBA"))
    return img.convert("RGB")


def _composite_on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit RGB or grey image -> float32 tensor (C, H, W) in [-1, 1].

    Numerically identical to ``Normalize(0.5, 0.5)(ToTensor()(img))`` as used by the reference.
    """
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"pil_to_tensor expects an RGB or L image, got mode {img.mode!r}.")
    array = np.array(img, dtype=np.uint8)  # a writable copy: torch warns on read-only buffers
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array).permute(2, 0, 1).float().div(255)
    return (tensor - 0.5) / 0.5


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor in [-1, 1] -> 8-bit RGB image, exactly as the reference's ``tensor2im``.

    Accepts (C, H, W) or a batch of one (1, C, H, W); one channel is repeated to three.
    The value is ``(y + 1) / 2 * 255`` computed in float32 and *truncated* to uint8 (no
    rounding), so saved images match the reference byte for byte. Values outside [-1, 1] (and
    NaN) are clipped first; that does not change values inside the range.
    """
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"tensor_to_pil takes one image, got a batch of {tensor.shape[0]}.")
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"tensor_to_pil expects a (C, H, W) tensor with C in (1, 3), got {tuple(tensor.shape)}.")
    array = tensor.detach().cpu().float().numpy()
    if array.shape[0] == 1:
        array = np.tile(array, (3, 1, 1))
    array = (np.transpose(array, (1, 2, 0)) + 1) / 2.0 * 255.0
    array = np.clip(np.nan_to_num(array, nan=0.0), 0, 255)
    return Image.fromarray(array.astype(np.uint8))


# Files that failed to decode in this process, shared by every dataset so that each bad file is
# warned about once per process (each DataLoader worker is a process and warns on its own).
_unreadable_files: set[Path] = set()


def load_first_readable(
    paths: list[Path], start: int, folder: Path, min_size: tuple[int, int] | None = None
) -> tuple[Image.Image, Path]:
    """Load ``paths[start]``, or the first readable file after it (wrapping around), warning once
    per unreadable file that it was skipped. Loading draws no random numbers, so skipping a file
    does not change the randomness of anything else. ``min_size``: as for :func:`load_rgb`
    (e.g. :attr:`ImageTransform.decode_min_size`)."""
    for offset in range(len(paths)):
        path = paths[(start + offset) % len(paths)]
        if path in _unreadable_files:
            continue
        try:
            return load_rgb(path, min_size), path
        except DatasetError as error:
            _unreadable_files.add(path)
            reason = error.__cause__ if error.__cause__ is not None else error
            warnings.warn(
                f"Skipping unreadable image {path} and using the next image of {folder} "
                f"instead ({type(reason).__name__}: {reason}).",
                stacklevel=3,
            )
    raise DatasetError(f"None of the {len(paths)} images in {folder} can be read (see the warnings above).")
