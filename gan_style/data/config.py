"""Configuration of the unpaired image data pipeline."""

from __future__ import annotations

from dataclasses import dataclass

#: Preprocessing modes, with the same names and meaning as the reference CycleGAN code.
PREPROCESS_MODES: tuple[str, ...] = (
    "resize_and_crop",
    "crop",
    "scale_width",
    "scale_width_and_crop",
    "none",
)

#: Modes that first resize to ``load_size`` and then take a ``crop_size`` crop of the result.
#: ("crop" crops the raw image, so there ``load_size`` plays no part.)
RESIZE_THEN_CROP_MODES: tuple[str, ...] = ("resize_and_crop", "scale_width_and_crop")

DIRECTIONS: tuple[str, ...] = ("AtoB", "BtoA")


def check_preprocess(preprocess: str, load_size: int, crop_size: int) -> None:
    """Raise ``ValueError`` with a readable message for an unusable preprocessing setup.

    Shared by :class:`DataConfig` and :class:`gan_style.data.transforms.ImageTransform`, so both
    fail early with the same message rather than deep inside a worker ("empty range for
    randrange" in the reference code).
    """
    if preprocess not in PREPROCESS_MODES:
        raise ValueError(
            f"Unknown preprocess mode {preprocess!r}; valid values are: {', '.join(PREPROCESS_MODES)}."
        )
    if load_size < 1 or crop_size < 1:
        raise ValueError(
            f"load_size and crop_size must be positive, got load_size={load_size}, crop_size={crop_size}."
        )
    if preprocess in RESIZE_THEN_CROP_MODES and crop_size > load_size:
        raise ValueError(
            f"crop_size ({crop_size}) is larger than load_size ({load_size}) with preprocess "
            f"{preprocess!r}: images are resized to load_size and then a crop_size crop is taken, "
            f"which cannot be larger than the image. Set crop_size <= load_size, e.g. "
            f"--set data.load_size={crop_size} (or a larger value such as {_suggested_load_size(crop_size)})."
        )


def _suggested_load_size(crop_size: int) -> int:
    # The reference ratio 286/256: a little margin around the crop for random jitter.
    return round(crop_size * 286 / 256)


@dataclass
class DataConfig:
    """Where the two image domains live and how each image is turned into a tensor.

    ``grayscale_A`` / ``grayscale_B`` refer to the ``"A"`` / ``"B"`` entries the dataset returns,
    i.e. *after* ``direction`` has been applied: they play the role of ``input_nc == 1`` /
    ``output_nc == 1`` in the reference code. A grey domain gives 1-channel tensors.
    """

    root: str = "demo"  # folder holding trainA/trainB (testA/testB), or "demo" = the built-in demo set
    phase: str = "train"  # sub-folders <phase>A and <phase>B
    preprocess: str = "resize_and_crop"  # one of PREPROCESS_MODES
    load_size: int = 286
    crop_size: int = 256
    no_flip: bool = False
    serial_batches: bool = False  # B index = index % len(B) instead of a random B image
    max_dataset_size: int | None = None  # None = all images of each domain
    direction: str = "AtoB"  # BtoA swaps the two domains
    num_workers: int = 0
    grayscale_A: bool = False
    grayscale_B: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field, its value and the valid choices.

        Called on construction; call it again after changing fields in place.
        """
        check_preprocess(self.preprocess, self.load_size, self.crop_size)
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f"Unknown direction {self.direction!r}; valid values are: {', '.join(DIRECTIONS)}."
            )
        if not self.root:
            raise ValueError('root must name a dataset folder (holding trainA/trainB) or be "demo".')
        if not self.phase:
            raise ValueError('phase must be non-empty, e.g. "train" or "test".')
        if self.max_dataset_size is not None and self.max_dataset_size < 1:
            raise ValueError(
                f"max_dataset_size must be None (all images) or at least 1, got {self.max_dataset_size}."
            )
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}.")
