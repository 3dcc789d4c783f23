"""Data loading for unpaired image-to-image translation.

The public entry points:

* :class:`DataConfig` - where the data lives and how images are preprocessed;
* :class:`UnpairedImageDataset` - two unpaired domains, reproducible per (seed, epoch, index);
* :class:`ImageTransform` - resize / crop / flip with an explicit ``torch.Generator``;
* :func:`load_rgb`, :func:`pil_to_tensor`, :func:`tensor_to_pil` - image <-> tensor;
* :func:`ensure_demo_dataset` - the built-in procedural demo set;
* :func:`download_dataset` - the public CycleGAN datasets.
"""

from .config import DIRECTIONS, PREPROCESS_MODES, DataConfig
from .demo import ensure_demo_dataset
from .download import CYCLEGAN_DATASETS, download_dataset
from .images import IMAGE_EXTENSIONS, DatasetError, find_images, load_rgb, pil_to_tensor, tensor_to_pil
from .transforms import ImageTransform
from .unpaired import UnpairedImageDataset, item_seed

__all__ = [
    "CYCLEGAN_DATASETS",
    "DIRECTIONS",
    "IMAGE_EXTENSIONS",
    "PREPROCESS_MODES",
    "DataConfig",
    "DatasetError",
    "ImageTransform",
    "UnpairedImageDataset",
    "download_dataset",
    "ensure_demo_dataset",
    "find_images",
    "item_seed",
    "load_rgb",
    "pil_to_tensor",
    "tensor_to_pil",
]
