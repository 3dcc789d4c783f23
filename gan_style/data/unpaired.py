"""The unpaired two-domain dataset (the reference's ``UnalignedDataset``), made reproducible."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from .config import DataConfig
from .demo import ensure_demo_dataset
from .images import find_images, load_first_readable
from .seeds import epoch_and_index, stream_seed
from .transforms import ImageTransform


def item_seed(seed: int, epoch: int, index: int, stream: str = "unpaired") -> int:
    """The seed of item ``index`` in ``epoch`` of a dataset kind (``stream``)."""
    return stream_seed(stream, seed, epoch, index)


class UnpairedImageDataset(Dataset):
    """Images of two domains, A and B, with no correspondence between them.

    Reads ``<root>/<phase>A`` and ``<root>/<phase>B`` (swapped when ``direction == "BtoA"``,
    so ``"A"`` is always the translation's source). ``root == "demo"`` uses the built-in demo
    set. Item ``i`` pairs A image ``i % len_A`` with a random B image (``i % len_B`` with
    ``serial_batches``); the length is ``max(len_A, len_B)``, as in the reference.

    Reproducibility: all the randomness of item ``index`` (which B image, crops, flips) comes
    from a ``torch.Generator`` seeded with :func:`item_seed` (seed, epoch, index). The same
    (seed, epoch, index) therefore always gives the same tensors, whichever DataLoader worker
    loads it and however many workers there are; call :meth:`set_epoch` before each epoch.

    Unreadable files are skipped with one warning each; the next file of the same domain is used
    instead (deterministically), so a bad file never stops training.
    """

    def __init__(self, config: DataConfig, seed: int = 0) -> None:
        config.validate()
        self.config = config
        self.seed = seed
        self.epoch = 0
        self.root = ensure_demo_dataset() if config.root == "demo" else Path(config.root).expanduser()
        folder_a = self.root / f"{config.phase}A"
        folder_b = self.root / f"{config.phase}B"
        if config.direction == "BtoA":
            folder_a, folder_b = folder_b, folder_a
        self.dir_A = folder_a
        self.dir_B = folder_b
        self.paths_A = find_images(folder_a, max_count=config.max_dataset_size)
        self.paths_B = find_images(folder_b, max_count=config.max_dataset_size)
        self.transform_A = ImageTransform.from_config(config, grayscale=config.grayscale_A)
        self.transform_B = ImageTransform.from_config(config, grayscale=config.grayscale_B)

    @property
    def len_A(self) -> int:
        return len(self.paths_A)

    @property
    def len_B(self) -> int:
        return len(self.paths_B)

    def __len__(self) -> int:
        return max(self.len_A, self.len_B)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` reproduces.

        DataLoader workers receive a copy of the dataset when an iterator is created, so call
        this before iterating. With ``persistent_workers=True`` the workers keep their old copy;
        pass ``(epoch, index)`` pairs as indices instead (e.g. from a sampler), which override
        the stored epoch.
        """
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(A: {self.len_A} images in {self.dir_A}, "
            f"B: {self.len_B} images in {self.dir_B}, length {len(self)}, seed {self.seed})"
        )

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        epoch, index = epoch_and_index(index, self.epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of length {len(self)}")
        rng = torch.Generator().manual_seed(item_seed(self.seed, epoch, index))
        if self.config.serial_batches:
            index_b = index % self.len_B
        else:
            index_b = int(torch.randint(0, self.len_B, (1,), generator=rng).item())
        # A, then B, from the same generator: loading (and skipping bad files) draws nothing,
        # so the sequence of draws depends only on (seed, epoch, index).
        image_a, path_a = load_first_readable(self.paths_A, index % self.len_A, self.dir_A, self.transform_A.decode_min_size)
        image_b, path_b = load_first_readable(self.paths_B, index_b, self.dir_B, self.transform_B.decode_min_size)
        return {
            "A": self.transform_A(image_a, rng, name=str(path_a)),
            "B": self.transform_B(image_b, rng, name=str(path_b)),
            "A_path": str(path_a),
            "B_path": str(path_b),
        }

