"""SinCUT's training data: crops of one image per domain ("zoom and patch" sampling).

SinCUT (Park et al., "Contrastive learning for unpaired image-to-image translation", ECCV 2020,
Sec. 5.3) learns from a single image of each domain (a Monet painting and a photo of the same
cliffs). Every training batch holds ``batch_size`` crops of each image, sampled like the reference
(``--dataset_mode singleimage --preprocess zoom_and_patch``):

1. **zoom**: the whole image is resized (bilinear) by two factors, one for the width and one for the
   height, each uniform in [1 / random_scale_max, 1] (so up to 3x smaller), never below the crop
   size. One zoom per batch: all the crops of a batch come from the same zoomed image, so that
   the crops that serve as each other's PatchNCE negatives are at the same scale.
2. **patch**: the zoomed image is cut into a grid of ``crop_size`` cells (at a random offset per
   crop, inside the room the grid leaves); a batch takes distinct cells (non-repeating positions,
   so no negative is a copy of the positive), wrapping round only when the batch has more crops
   than the grid has cells.
3. a random horizontal flip per crop (unless ``no_flip``).

``load_size`` is not used for sampling: like the reference, zoom-and-patch never resizes the image
to it. It only sizes SinCUT's StyleGAN2 width tables (``SinCUTGeneratorSpec.from_reference_options``).

Randomness: a batch's zoom and cell order come from a ``torch.Generator`` seeded from (seed, epoch,
batch, domain), a crop's offset and flip from (seed, epoch, index), so any item is reproduced
exactly whatever the worker or the resume point. The reference draws the zoom levels once for all
epochs from NumPy's global RNG and then shuffles the items, which in practice mixes zoom levels
within a batch despite its stated intent; here the intent holds.

The trainer must not shuffle the items (``shuffle = False``): the item order defines the batches.
With DDP the trainer gives process r the items r, r + W, r + 2W, ... of each global batch of
``batch_size * W`` items; ``world_size`` makes each process's batch one group. (When ``length``
is not a multiple of ``batch_size * W``, the trainer completes the epoch's last batch with items
from its start, and that one batch mixes two groups.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from gan_style.data.seeds import epoch_and_index, stream_seed
from gan_style.data.sharding import batch_group

from .config import DIRECTIONS
from .demo import ensure_demo_dataset
from .images import DatasetError, find_images, load_rgb, pil_to_tensor


@dataclass
class SingleImageDataConfig:
    """Where the two images live and how crops are sampled (SinCUT's defaults)."""

    root: str = "datasets/single_image_monet_etretat"  # holds <phase>A/ and <phase>B/, one image each ("demo": built in)
    phase: str = "train"
    crop_size: int = 64
    load_size: int = 1024  # sizes SinCUT's StyleGAN2 width tables only (see the module docstring)
    random_scale_max: float = 3.0  # zoom factors are uniform in [1 / random_scale_max, 1]
    no_flip: bool = False
    length: int = 100_000  # crops per epoch (the reference "pretends the image holds 100,000 crops")
    direction: str = "AtoB"
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if self.random_scale_max < 1:
            raise ValueError(f"random_scale_max must be >= 1 (1 = no zoom), got {self.random_scale_max}")
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")



def zoomed_size(width: int, height: int, zoom: tuple[float, float], crop_size: int) -> tuple[int, int]:
    """The image size after zooming by (width factor, height factor), never below the crop size
    (rounded with Python's round, as the reference)."""
    return round(max(crop_size, width * zoom[0])), round(max(crop_size, height * zoom[1]))


def grid_cell_box(size: tuple[int, int], cell: int, offset: tuple[int, int], crop_size: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of grid cell ``cell`` (numbered down the columns, as the
    reference: column = cell // rows, row = cell % rows) with the grid shifted by ``offset``."""
    rows = size[1] // crop_size
    column, row = divmod(cell, rows)
    left, top = offset[0] + column * crop_size, offset[1] + row * crop_size
    return left, top, left + crop_size, top + crop_size


class SingleImageDataset(Dataset):
    """Zoom-and-patch crops of one image per domain (see the module docstring).

    Items are ``{"A": (3, crop, crop), "B": (3, crop, crop), "A_path", "B_path"}`` in [-1, 1].
    ``batch_size`` (and ``world_size`` under DDP) must be the trainer's, so that the crops of a
    batch share their zoom and take distinct grid cells.
    """

    shuffle = False  # the item order defines the batches; positions are random already

    def __init__(self, config: SingleImageDataConfig, seed: int = 0, batch_size: int = 1, world_size: int = 1) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size} and {world_size}")
        self.config = config
        self.seed = seed
        self.batch_size = batch_size
        self.world_size = world_size
        self.epoch = 0
        demo = config.root == "demo"  # the first photo and painting of the built-in demo set
        root = ensure_demo_dataset() if demo else Path(config.root).expanduser()
        folders = [root / f"{config.phase}A", root / f"{config.phase}B"]
        if config.direction == "BtoA":
            folders.reverse()
        self.paths: dict[str, Path] = {}
        self.images: dict[str, Image.Image] = {}
        for domain, folder in zip("AB", folders):
            found = find_images(folder)[:1] if demo else find_images(folder)
            if len(found) != 1:
                raise DatasetError(
                    f"single-image training needs exactly one image in {folder}, found {len(found)}; "
                    f"for folders of many images use an unpaired method (cut, fastcut, cyclegan)"
                )
            self.paths[domain] = found[0]
            self.images[domain] = load_rgb(found[0])
            smallest = min(self.images[domain].size)
            if smallest < config.crop_size:
                raise DatasetError(f"{found[0]} is {self.images[domain].size} px, smaller than crop_size {config.crop_size}")
        # The zoomed image of the current batch, per domain: a memo (all crops of a batch share
        # it), not state that changes any result.
        self._zoomed: dict[str, tuple[tuple[int, int], Image.Image]] = {}

    def __len__(self) -> int:
        return self.config.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        sizes = {d: self.images[d].size for d in "AB"}
        return f"{type(self).__name__}(A: {self.paths['A']} {sizes['A']}, B: {self.paths['B']} {sizes['B']}, {len(self)} crops per epoch)"

    def _zoomed_image(self, domain: str, size: tuple[int, int]) -> Image.Image:
        cached = self._zoomed.get(domain)
        if cached is None or cached[0] != size:
            image = self.images[domain]
            zoomed = image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)
            self._zoomed[domain] = cached = (size, zoomed)
        return cached[1]

    def crop(self, domain: str, epoch: int, index: int, item_rng: torch.Generator) -> torch.Tensor:
        """One crop of ``domain``'s image for item ``index`` (the batch-level draws are made here
        from the batch's own stream; the crop-level ones from ``item_rng``)."""
        c = self.config
        group, slot = batch_group(index, self.batch_size, self.world_size)
        batch_rng = torch.Generator().manual_seed(stream_seed("single_image", self.seed, epoch, group, domain))
        low = 1.0 / c.random_scale_max
        zoom = (low + (1 - low) * torch.rand(2, generator=batch_rng, dtype=torch.float64)).tolist()
        width, height = self.images[domain].size
        size = zoomed_size(width, height, (zoom[0], zoom[1]), c.crop_size)
        columns, rows = size[0] // c.crop_size, size[1] // c.crop_size
        cells = torch.randperm(columns * rows, generator=batch_rng)
        cell = int(cells[slot % len(cells)])
        room_x, room_y = size[0] - columns * c.crop_size, size[1] - rows * c.crop_size
        offset_x = int(torch.randint(0, room_x + 1, (1,), generator=item_rng))
        offset_y = int(torch.randint(0, room_y + 1, (1,), generator=item_rng))
        flip = bool(torch.rand(1, generator=item_rng) < 0.5)
        patch = self._zoomed_image(domain, size).crop(grid_cell_box(size, cell, (offset_x, offset_y), c.crop_size))
        if flip and not c.no_flip:
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return pil_to_tensor(patch)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        epoch, index = epoch_and_index(index, self.epoch)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        item_rng = torch.Generator().manual_seed(stream_seed("single_image", self.seed, epoch, index))
        return {
            "A": self.crop("A", epoch, index, item_rng),
            "B": self.crop("B", epoch, index, item_rng),
            "A_path": str(self.paths["A"]),
            "B_path": str(self.paths["B"]),
        }
