"""Image preprocessing and augmentation with explicit randomness.

The semantics follow ``get_transform`` of the reference CycleGAN code (resize / scale width /
crop / make a multiple of 4, random horizontal flip, normalise to [-1, 1]), but every random
number comes from a ``torch.Generator`` passed by the caller instead of the global RNGs. The
dataset seeds that generator from (seed, epoch, index), which makes a sample independent of
which DataLoader worker loads it and lets training resume with exactly the same data.
"""

from __future__ import annotations

import torch
from PIL import Image

from .config import DataConfig, check_preprocess
from .images import DatasetError, pil_to_tensor

# The reference resizes with PIL's bicubic filter in every mode.
_RESAMPLE = Image.Resampling.BICUBIC

# "none" rounds each side to a multiple of this, as the reference's __make_power_2(base=4):
# generators down- and up-sample twice, so odd sizes would not come back to the input size.
_SIZE_MULTIPLE = 4


class ImageTransform:
    """Turn one PIL image into a float32 (C, H, W) tensor in [-1, 1].

    ``preprocess`` is one of ``gan_style.data.config.PREPROCESS_MODES``:

    * ``resize_and_crop``: resize to (load_size, load_size), then a random crop_size crop;
    * ``crop``: a random crop_size crop of the image as stored;
    * ``scale_width``: resize to width load_size keeping the aspect ratio, with height at least
      crop_size;
    * ``scale_width_and_crop``: ``scale_width``, then a random crop_size crop;
    * ``none``: round each side to a multiple of 4 (Python ``round``, so halves go to the even
      multiple: 202x150 -> 200x152) and resize only if that changed the size.

    Then, if ``flip``, a horizontal flip with probability 0.5. ``grayscale`` converts to one
    channel (ITU-R 601-2 luma) before anything else, as the reference does.
    """

    def __init__(
        self,
        preprocess: str,
        load_size: int,
        crop_size: int,
        flip: bool,
        grayscale: bool = False,
    ) -> None:
        check_preprocess(preprocess, load_size, crop_size)
        self.preprocess = preprocess
        self.load_size = load_size
        self.crop_size = crop_size
        self.flip = flip
        self.grayscale = grayscale

    @classmethod
    def from_config(cls, config: DataConfig, grayscale: bool = False, train: bool = True) -> ImageTransform:
        """The transform ``config`` asks for; ``train=False`` disables flipping.

        At test time the reference keeps the preprocessing mode (its test options default
        load_size to crop_size, so the "random" crop covers the whole resized image).
        """
        return cls(
            preprocess=config.preprocess,
            load_size=config.load_size,
            crop_size=config.crop_size,
            flip=train and not config.no_flip,
            grayscale=grayscale,
        )

    @property
    def decode_min_size(self) -> tuple[int, int] | None:
        """The (width, height) this transform resizes to, at least: the ``min_size`` for
        :func:`~gan_style.data.images.load_rgb`, so huge files need not be decoded whole.
        ``None`` for the modes that crop or keep the stored resolution."""
        if self.preprocess == "resize_and_crop":
            return self.load_size, self.load_size
        if self.preprocess in ("scale_width", "scale_width_and_crop"):
            return self.load_size, self.crop_size
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(preprocess={self.preprocess!r}, load_size={self.load_size}, "
            f"crop_size={self.crop_size}, flip={self.flip}, grayscale={self.grayscale})"
        )

    def __call__(self, img: Image.Image, rng: torch.Generator, name: str | None = None) -> torch.Tensor:
        """Transform ``img`` drawing random numbers only from ``rng``.

        ``name`` (usually the file path) is only used in error messages.
        """
        wanted_mode = "L" if self.grayscale else "RGB"
        if img.mode != wanted_mode:
            img = img.convert(wanted_mode)
        if self.preprocess == "resize_and_crop":
            img = _resize_if_needed(img, (self.load_size, self.load_size))
        elif self.preprocess in ("scale_width", "scale_width_and_crop"):
            img = _scale_width(img, self.load_size, self.crop_size)
        elif self.preprocess == "none":
            img = _round_size_to_multiple(img, _SIZE_MULTIPLE)

        if self.preprocess.endswith("crop"):
            img = _random_crop(img, self.crop_size, rng, name)

        # Draw the flip only when flipping is on, as RandomHorizontalFlip is absent otherwise.
        if self.flip and torch.rand(1, generator=rng).item() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_tensor(img)


def _resize_if_needed(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    return img if img.size == size else img.resize(size, _RESAMPLE)


def _scale_width(img: Image.Image, target_width: int, min_height: int) -> Image.Image:
    # Same arithmetic as the reference's __scale_width, including int() truncation of the
    # float height, so sizes agree pixel for pixel.
    width, height = img.size
    if width == target_width and height >= min_height:
        return img
    new_height = int(max(target_width * height / width, min_height))
    return img.resize((target_width, new_height), _RESAMPLE)


def _round_size_to_multiple(img: Image.Image, base: int) -> Image.Image:
    width, height = img.size
    # max(base, ...) only matters for images smaller than base / 2, where the reference would
    # ask PIL for a zero-sized image.
    new_width = max(base, int(round(width / base) * base))
    new_height = max(base, int(round(height / base) * base))
    return _resize_if_needed(img, (new_width, new_height))


def _random_crop(img: Image.Image, size: int, rng: torch.Generator, name: str | None) -> Image.Image:
    width, height = img.size
    if width < size or height < size:
        source = name if name is not None else "an image"
        raise DatasetError(
            f"Cannot take a {size}x{size} crop of {source}: it is only {width}x{height} pixels "
            f"after preprocessing. Use a smaller crop_size, remove the image, or use preprocess "
            f"'resize_and_crop' / 'scale_width_and_crop', which resize before cropping."
        )
    if width == size and height == size:
        return img
    # Top before left, the order of torchvision's RandomCrop.get_params.
    top = int(torch.randint(0, height - size + 1, (1,), generator=rng).item())
    left = int(torch.randint(0, width - size + 1, (1,), generator=rng).item())
    return img.crop((left, top, left + size, top + size))
