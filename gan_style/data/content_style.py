"""Random (content, style) pairs for training an arbitrary-style decoder (AdaIN).

Huang and Belongie (ICCV 2017), Sec. 7.1: content images from MS-COCO and style images from
WikiArt, "we resize the smallest dimension of both images to 512 while preserving the aspect
ratio, then randomly crop regions of size 256 x 256". Any two folders of images work; the demo
and tests use ``shared/data/nst/{content,style}``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from gan_style.data.images import DatasetError, find_images, load_first_readable, pil_to_tensor
from gan_style.data.unpaired import item_seed

__all__ = ["ContentStyleDataset"]

# The reference resizes with torchvision's default (bilinear); PIL's filters antialias when
# shrinking.
_RESAMPLE = Image.Resampling.BILINEAR



def _image_folder(folder: str | os.PathLike[str], role: str) -> list[Path]:
    path = Path(folder).expanduser()
    if str(folder) == "" or not path.is_dir():
        what = "is not set" if str(folder) == "" else ("is not a folder" if path.exists() else "does not exist")
        raise DatasetError(
            f"The {role} image folder {str(folder)!r} {what}. AdaIN training needs a folder of "
            f"content photos (the paper uses MS-COCO) and a folder of style images (WikiArt); "
            f"set content_dir and style_dir in the recipe."
        )
    return find_images(path)


class ContentStyleDataset(Dataset):
    """Item ``i``: content image ``i`` paired with a random style image, both resized so that the
    shorter side is ``load_size`` (aspect ratio kept) and randomly cropped to ``crop_size``.

    Returns ``{"content": (3, crop, crop), "style": (3, crop, crop), "content_path", "style_path"}``
    with float32 values in [-1, 1] (the project's convention). The length is the number of
    content images, so one epoch sees every content image once.

    Randomness: which style image and both crop positions come from a ``torch.Generator`` seeded
    with :func:`gan_style.data.unpaired.item_seed` (seed, epoch, index); the same triple always gives the same tensors,
    whichever DataLoader worker loads it. Call :meth:`set_epoch` before each epoch.

    Unreadable files are skipped with one warning each, and the next file of the same folder is
    used instead (deterministically).
    """

    def __init__(
        self,
        content_dir: str | os.PathLike[str],
        style_dir: str | os.PathLike[str],
        load_size: int = 512,
        crop_size: int = 256,
        seed: int = 0,
    ) -> None:
        if crop_size < 1 or load_size < crop_size:
            raise ValueError(f"need 1 <= crop_size <= load_size, got crop_size {crop_size}, load_size {load_size}")
        self.content_dir = Path(content_dir)
        self.style_dir = Path(style_dir)
        self.content_paths = _image_folder(content_dir, "content")
        self.style_paths = _image_folder(style_dir, "style")
        self.load_size = load_size
        self.crop_size = crop_size
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.content_paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.content_paths)} content images in {self.content_dir}, "
            f"{len(self.style_paths)} style images in {self.style_dir}, load {self.load_size}, "
            f"crop {self.crop_size}, seed {self.seed})"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        rng = torch.Generator().manual_seed(item_seed(self.seed, self.epoch, index, stream="content_style"))
        style_index = int(torch.randint(0, len(self.style_paths), (1,), generator=rng).item())
        content, content_path = load_first_readable(self.content_paths, index, self.content_dir, (self.load_size, self.load_size))
        style, style_path = load_first_readable(self.style_paths, style_index, self.style_dir, (self.load_size, self.load_size))
        return {
            "content": self._resize_and_crop(content, rng),
            "style": self._resize_and_crop(style, rng),
            "content_path": str(content_path),
            "style_path": str(style_path),
        }

    def _resize_and_crop(self, image: Image.Image, rng: torch.Generator) -> torch.Tensor:
        width, height = image.size
        scale = self.load_size / min(width, height)
        # Never below load_size on the shorter side (rounding could give 511).
        size = (max(self.load_size, round(width * scale)), max(self.load_size, round(height * scale)))
        if size != image.size:
            image = image.resize(size, _RESAMPLE)
        left = int(torch.randint(0, size[0] - self.crop_size + 1, (1,), generator=rng).item())
        top = int(torch.randint(0, size[1] - self.crop_size + 1, (1,), generator=rng).item())
        image = image.crop((left, top, left + self.crop_size, top + self.crop_size))
        return pil_to_tensor(image)

