"""One collection of images (the Swapping Autoencoder's training data): every image under a folder,
recursively, or the union of ``trainA``/``trainB`` when the folder is laid out for translation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .config import check_preprocess
from .demo import ensure_demo_dataset
from .images import DatasetError, find_images, load_first_readable
from .seeds import epoch_and_index, stream_seed
from .transforms import ImageTransform


@dataclass
class FolderDataConfig:
    root: str = "demo"  # a folder of images (searched recursively), or "demo": the built-in set
    phase: str = "train"  # with <root>/<phase>A and <phase>B, those two are merged
    preprocess: str = "resize_and_crop"
    load_size: int = 256
    crop_size: int = 256
    no_flip: bool = False
    max_dataset_size: int | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        check_preprocess(self.preprocess, self.load_size, self.crop_size)
        if self.max_dataset_size is not None and self.max_dataset_size < 1:
            raise ValueError(f"max_dataset_size must be None (all images) or at least 1, got {self.max_dataset_size}")


class ImageFolderDataset(Dataset):
    """Items ``{"image": (3, crop, crop) in [-1, 1], "path": str}``; the augmentation of item i in
    epoch e comes from a generator seeded by (seed, e, i), so any item is reproduced exactly."""

    def __init__(self, config: FolderDataConfig, seed: int = 0):
        self.config, self.seed, self.epoch = config, seed, 0
        root = ensure_demo_dataset() if config.root == "demo" else Path(config.root).expanduser()
        domains = [root / f"{config.phase}{d}" for d in "AB"]
        folders = [d for d in domains if d.is_dir()] or [root]
        self.root = root
        self.paths = sorted(p for folder in folders for p in find_images(folder))[: config.max_dataset_size]
        if not self.paths:
            raise DatasetError(f"{root} holds no images")
        self.transform = ImageTransform.from_config(config)

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        epoch, index = epoch_and_index(index, self.epoch)
        rng = torch.Generator().manual_seed(stream_seed("folder", self.seed, epoch, index))
        image, path = load_first_readable(self.paths, index, self.root, self.transform.decode_min_size)
        return {"image": self.transform(image, rng, name=str(path)), "path": str(path)}
