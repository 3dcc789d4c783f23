"""VGG feature extractors for perceptual losses, neural style transfer and metrics.

Three networks live here, each loading its published weight file as it is:

* :class:`VGG19Features` - the convolutional part of VGG-19 (Simonyan and Zisserman, 2015) in
  torchvision's layout (``features.0.weight`` ... ``features.34.bias``). Gatys et al. (CVPR 2016)
  and the content/style distances of the metrics use it. Layers are named
  as in the papers: ``conv1_1``, ``relu1_1``, ``conv1_2``, ... ``pool5``. The ImageNet
  normalisation is applied inside the module (see ``input_range`` and ``preprocessing``).
* :class:`NormalisedVGGEncoder` - the "normalised VGG-19" of AdaIN (Huang and Belongie, ICCV
  2017) up to relu4_1, in the layout of ``vgg_normalised.pth`` from naoto0804/pytorch-AdaIN
  (``net.py``'s ``vgg`` Sequential: keys ``0.weight``, ``2.weight``, ``5.weight``, ...). Its first
  layer is a 1x1 convolution that folds the Caffe preprocessing into the weights, so it takes RGB
  images in [0, 1] and pads with reflection.
* :class:`VGG16Features` - VGG-16's convolutional part in torchvision's layout, the same module as
  :class:`VGG19Features` with VGG-16's blocks: MUNIT's domain-invariant perceptual loss (relu5_3).

Weight files are never downloaded. :func:`load_vgg19` looks in the path the user gives, then in
torchvision's cache (``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``, which follows
``$TORCH_HOME``), :func:`load_vgg16` likewise for ``vgg16-397923af.pth``;
:func:`load_adain_encoder` in the given path, then ``models/vgg_normalised.pth`` (the reference's
default, in the working directory) and the torch hub checkpoint folder. A missing file raises
:class:`WeightsNotFoundError`, naming the file, every place searched, and where to get it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from gan_style.nn.layers import ReflectionPad2d

__all__ = [
    "ADAIN_ENCODER_LAYERS",
    "ADAIN_RELEASE_URL",
    "ADAIN_VGG_FILE",
    "CAFFE_VGG19_URL",
    "TORCHVISION_VGG16_FILE",
    "TORCHVISION_VGG16_URL",
    "TORCHVISION_VGG19_FILE",
    "TORCHVISION_VGG19_URL",
    "VGG16_LAYER_NAMES",
    "VGG19_LAYER_NAMES",
    "NormalisedVGGEncoder",
    "VGG16Features",
    "VGG19Features",
    "WeightsNotFoundError",
    "adain_vgg_sequential",
    "find_weights",
    "load_adain_encoder",
    "load_state_dict_file",
    "load_vgg16",
    "load_vgg19",
    "torch_hub_checkpoint_dir",
]

#: torchvision's file name for ``VGG19_Weights.IMAGENET1K_V1`` and where it is published.
TORCHVISION_VGG19_FILE = "vgg19-dcbb9e9d.pth"
TORCHVISION_VGG19_URL = f"https://download.pytorch.org/models/{TORCHVISION_VGG19_FILE}"
#: The original Caffe VGG-19 (the one neural-style used) converted to torchvision's layout by
#: jcjohnson/pytorch-vgg; it expects Caffe preprocessing (``preprocessing="caffe"``).
CAFFE_VGG19_URL = "https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth"
#: AdaIN's normalised VGG-19, as released by naoto0804/pytorch-AdaIN (MIT licence).
ADAIN_VGG_FILE = "vgg_normalised.pth"
ADAIN_RELEASE_URL = "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0"

# VGG-19 ("configuration E"): convolutions per block; every block ends with a 2x2 max pool.
_VGG19_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))

#: ImageNet statistics of torchvision's models (inputs in [0, 1], RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Mean pixel of the Caffe VGG models, BGR order, 0-255 scale.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _vgg_layer_names(blocks: tuple[tuple[int, int], ...] = _VGG19_BLOCKS) -> tuple[str, ...]:
    names: list[str] = []
    for block, (_, convs) in enumerate(blocks, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return tuple(names)


#: The names of ``VGG19Features.features[i]``: index i of torchvision's ``vgg19().features``.
VGG19_LAYER_NAMES: tuple[str, ...] = _vgg_layer_names()


class WeightsNotFoundError(FileNotFoundError):
    """A weight file is missing. The message says which file, where it was looked for, and where
    it comes from."""


def torch_hub_checkpoint_dir() -> Path:
    """torchvision's download cache: ``torch.hub.get_dir()/checkpoints``. ``torch.hub`` resolves
    it from ``$TORCH_HOME`` (default ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``) + ``/hub``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(
    user_path: str | os.PathLike[str] | None,
    candidates: Iterable[Path],
    what: str,
    source: str,
) -> Path:
    """Return the weight file to load: ``user_path`` if given (it must exist), otherwise the first
    existing path of ``candidates``. Otherwise raise :class:`WeightsNotFoundError` whose message
    names ``what``, the places searched and ``source`` (where the file comes from)."""
    if user_path is not None and str(user_path) != "":
        path = Path(user_path).expanduser()
        if path.is_file():
            return path
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise WeightsNotFoundError(f"{what}: the file given, {path}, {state}. {source}")
    searched = [Path(c).expanduser() for c in candidates]
    for path in searched:
        if path.is_file():
            return path
    places = "\n".join(f"  - {p}" for p in searched)
    raise WeightsNotFoundError(
        f"{what}: no weight file given and none found. Looked for:\n{places}\n{source} "
        f"Nothing is downloaded automatically."
    )


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """``torch.load`` a state dict safely (``weights_only=True``) on the CPU.

    Files in the zip format are memory-mapped, so the parts we do not use (VGG-19's 470 MB
    classifier) are never read; older files (torchvision's VGG-19 file predates the zip format)
    are read whole. A ``{"state_dict": ...}`` wrapper is unwrapped.
    """
    from gan_style.engine.checkpoint import read_weights

    path = Path(path)
    state = read_weights(path, mmap=True)  # legacy (pre-zip) files are read whole
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(state).__name__}")
    return dict(state)


# ---------------------------------------------------------------------------------------------
# VGG-19, torchvision layout
# ---------------------------------------------------------------------------------------------


def _input_to_unit(image: Tensor, input_range: tuple[float, float]) -> Tensor:
    low, high = input_range
    if (low, high) == (0.0, 1.0):
        return image
    return (image - low) / (high - low)


class VGG19Features(nn.Module):
    """The 37 layers of VGG-19's ``features`` (16 convolutions, ReLUs, 5 pools), torchvision layout.

    ``forward(image, layers)`` returns ``{name: activation}`` for the requested layer names (see
    :data:`VGG19_LAYER_NAMES`) and stops after the deepest one, so asking for relu4_2 never runs
    block 5.

    Inputs are RGB images with values in ``input_range``: ``(0, 1)`` (the default, torchvision's
    convention) or ``(-1, 1)`` (the GANs' convention). The module maps them to what the weights
    expect:

    * ``preprocessing="imagenet"`` (torchvision's weights): ``(x01 - mean) / std`` with ImageNet's
      mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
    * ``preprocessing="caffe"`` (the original Caffe VGG-19 as used by neural-style, converted to
      this layout, e.g. ``vgg19-d01eb7cb.pth``): BGR order, 0-255 scale, minus the mean pixel
      (103.939, 116.779, 123.68).

    ``pooling="avg"`` replaces max pooling by average pooling (Gatys et al. 2016, Sec. 2, found it
    gives slightly better results; neural-style's ``-pooling avg``). Pools have no weights, so
    the weight layout is the same.

    The ReLUs are not in-place, so a returned activation is never overwritten by a later layer.
    """

    #: the architecture: convolutions per block, the layer names, the name in messages
    blocks: ClassVar[tuple[tuple[int, int], ...]] = _VGG19_BLOCKS
    layer_names: ClassVar[tuple[str, ...]] = VGG19_LAYER_NAMES
    arch: ClassVar[str] = "VGG-19"

    def __init__(
        self,
        input_range: tuple[float, float] = (0.0, 1.0),
        preprocessing: Literal["imagenet", "caffe"] = "imagenet",
        pooling: Literal["max", "avg"] = "max",
    ) -> None:
        super().__init__()
        if preprocessing not in ("imagenet", "caffe"):
            raise ValueError(f"preprocessing must be 'imagenet' or 'caffe', got {preprocessing!r}")
        if pooling not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.preprocessing = preprocessing
        self.pooling = pooling
        layers: list[nn.Module] = []
        in_channels = 3
        for out_channels, convs in self.blocks:
            for _ in range(convs):
                layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        if preprocessing == "imagenet":
            mean, scale = IMAGENET_MEAN, tuple(1.0 / s for s in IMAGENET_STD)
        else:
            mean, scale = tuple(m / 255.0 for m in CAFFE_MEAN_BGR[::-1]), (255.0, 255.0, 255.0)
        # Not persistent: the state dict holds only torchvision's keys.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, image: Tensor) -> Tensor:
        """Map an RGB image in ``input_range`` to the network's input space."""
        x = (_input_to_unit(image, self.input_range) - self.mean) * self.scale
        if self.preprocessing == "caffe":
            x = x.flip(1)  # RGB -> BGR
        return x

    def forward(self, image: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(layers, str):
            layers = (layers,)
        index = {name: i for i, name in enumerate(self.layer_names)}
        unknown = [name for name in layers if name not in index]
        if unknown:
            raise KeyError(f"unknown {self.arch} layer(s) {unknown}; known: {', '.join(self.layer_names)}")
        wanted = {index[name]: name for name in layers}
        deepest = max(wanted)
        outputs: dict[str, Tensor] = {}
        x = self.preprocess(image)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                outputs[wanted[index]] = x
            if index == deepest:
                break
        return outputs

    def load_vgg_state_dict(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load torchvision's VGG-19 (VGG-16 for :class:`VGG16Features`) state dict
        (``features.N.*``; the ``classifier.*`` keys are ignored) or a bare ``features``
        Sequential's (``N.*``). Shapes are checked strictly."""
        features = {k: v for k, v in state.items() if k.startswith("features.")}
        if not features and all(re.fullmatch(r"\d+\.(weight|bias)", k) for k in state):
            features = {f"features.{k}": v for k, v in state.items()}
        first = features.get("features.0.weight")
        if first is None or tuple(first.shape) != (64, 3, 3, 3):
            hint = ""
            if "0.weight" in state and tuple(state["0.weight"].shape) == (3, 3, 1, 1):
                hint = (
                    " It looks like AdaIN's normalised VGG (vgg_normalised.pth), which only "
                    "`--method adain` uses; Gatys and the perceptual losses need torchvision's VGG-19."
                )
            got = "missing" if first is None else f"has shape {tuple(first.shape)}"
            raise ValueError(
                f"{source}: not a {self.arch} in torchvision's layout (its first convolution weight, "
                f"features.0.weight, is expected of shape (64, 3, 3, 3) and {got}).{hint}"
            )
        try:
            self.load_state_dict(features, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{source}: does not fit {self.arch}'s layout: {error}") from None


def load_vgg19(
    weights: str | os.PathLike[str] | None = None,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    preprocessing: Literal["imagenet", "caffe"] = "imagenet",
    pooling: Literal["max", "avg"] = "max",
    device: torch.device | str | None = None,
) -> VGG19Features:
    """VGG-19 features with ImageNet weights, frozen (no gradients) and in eval mode.

    Looks for ``weights`` if given, else for torchvision's cached ``vgg19-dcbb9e9d.pth`` in
    :func:`torch_hub_checkpoint_dir`. Raises :class:`WeightsNotFoundError` otherwise.
    """
    path = find_weights(
        weights,
        [torch_hub_checkpoint_dir() / TORCHVISION_VGG19_FILE],
        "VGG-19 ImageNet weights (torchvision layout)",
        f"The file is torchvision's VGG19_Weights.IMAGENET1K_V1, published at {TORCHVISION_VGG19_URL}; "
        f"download it yourself and pass its path (--vgg-weights FILE), or put it in "
        f"{torch_hub_checkpoint_dir()} (torchvision's cache; set $TORCH_HOME to move it).",
    )
    model = VGG19Features(input_range=input_range, preprocessing=preprocessing, pooling=pooling)
    model.load_vgg_state_dict(load_state_dict_file(path), source=str(path))
    model.requires_grad_(False).eval()
    return model.to(device) if device is not None else model


# ---------------------------------------------------------------------------------------------
# VGG-16, torchvision layout (MUNIT's domain-invariant perceptual loss)
# ---------------------------------------------------------------------------------------------

#: torchvision's file name for ``VGG16_Weights.IMAGENET1K_V1`` and where it is published.
TORCHVISION_VGG16_FILE = "vgg16-397923af.pth"
TORCHVISION_VGG16_URL = f"https://download.pytorch.org/models/{TORCHVISION_VGG16_FILE}"

# VGG-16 ("configuration D"): three convolutions in each of the last three blocks.
_VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))

#: The names of ``VGG16Features.features[i]``: index i of torchvision's ``vgg16().features``
#: (relu5_3, MUNIT's perceptual layer, is index 29).
VGG16_LAYER_NAMES: tuple[str, ...] = _vgg_layer_names(_VGG16_BLOCKS)


class VGG16Features(VGG19Features):
    """The 31 layers of VGG-16's ``features`` (13 convolutions, ReLUs, 5 pools), torchvision layout
    (``features.0.weight`` ... ``features.28.bias``); otherwise exactly :class:`VGG19Features`
    (layer names, ``input_range``, ``preprocessing``, ``pooling``, stopping at the deepest layer)."""

    blocks = _VGG16_BLOCKS
    layer_names = VGG16_LAYER_NAMES
    arch = "VGG-16"


def load_vgg16(
    weights: str | os.PathLike[str] | None = None,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    preprocessing: Literal["imagenet", "caffe"] = "imagenet",
    device: torch.device | str | None = None,
) -> VGG16Features:
    """VGG-16 features with ImageNet weights, frozen (no gradients) and in eval mode: ``weights``
    if given, else torchvision's cached ``vgg16-397923af.pth`` in :func:`torch_hub_checkpoint_dir`
    (the same lookup as :func:`load_vgg19`). Raises :class:`WeightsNotFoundError` otherwise."""
    path = find_weights(
        weights,
        [torch_hub_checkpoint_dir() / TORCHVISION_VGG16_FILE],
        "VGG-16 ImageNet weights (torchvision layout)",
        f"The file is torchvision's VGG16_Weights.IMAGENET1K_V1, published at {TORCHVISION_VGG16_URL}; "
        f"download it yourself and pass its path (--set vgg_weights=FILE), or put it in "
        f"{torch_hub_checkpoint_dir()} (torchvision's cache; set $TORCH_HOME to move it).",
    )
    model = VGG16Features(input_range=input_range, preprocessing=preprocessing)
    model.load_vgg_state_dict(load_state_dict_file(path), source=str(path))
    model.requires_grad_(False).eval()
    return model.to(device) if device is not None else model


# ---------------------------------------------------------------------------------------------
# AdaIN's normalised VGG-19
# ---------------------------------------------------------------------------------------------

#: The layers AdaIN's encoder returns: relu1_1, relu2_1, relu3_1, relu4_1 (Huang and Belongie,
#: Sec. 6: the style loss uses all four, the content loss and AdaIN the last).
ADAIN_ENCODER_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
# End (exclusive) of each slice in the Sequential: [0:4] -> relu1_1, [4:11] -> relu2_1,
# [11:18] -> relu3_1, [18:31] -> relu4_1.
_ADAIN_SLICE_ENDS: tuple[int, ...] = (4, 11, 18, 31)


def adain_vgg_sequential() -> nn.Sequential:
    """The whole normalised VGG-19 with the layer indices of ``vgg_normalised.pth`` (53 layers).

    Index 0 is the 1x1 "preprocessing" convolution; then each 3x3 convolution is preceded by a
    1-pixel reflection pad and followed by a ReLU, and each block ends with a 2x2 max pool with
    ``ceil_mode=True`` (as Torch7's SpatialMaxPooling:ceil() of the original).
    """
    layers: list[nn.Module] = [nn.Conv2d(3, 3, kernel_size=1)]
    in_channels = 3
    for block, (out_channels, convs) in enumerate(_VGG19_BLOCKS):
        for _ in range(convs):
            layers += [ReflectionPad2d(1), nn.Conv2d(in_channels, out_channels, kernel_size=3), nn.ReLU()]
            in_channels = out_channels
        if block < len(_VGG19_BLOCKS) - 1:  # the released network has no pool after relu5_4
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    return nn.Sequential(*layers)


class NormalisedVGGEncoder(nn.Sequential):
    """AdaIN's encoder: the normalised VGG-19 up to relu4_1 (layers 0..30 of ``vgg_normalised.pth``,
    with the same indices, so the state dict keys are the reference's).

    Calling it returns ``[relu1_1, relu2_1, relu3_1, relu4_1]``; :meth:`encode` only relu4_1.
    Inputs are RGB images in ``input_range`` ((0, 1) by default, the reference's convention; use
    (-1, 1) for the GANs' convention): the weights expect [0, 1].
    """

    def __init__(self, input_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(*list(adain_vgg_sequential().children())[: _ADAIN_SLICE_ENDS[-1]])
        self.input_range = (float(input_range[0]), float(input_range[1]))

    def forward(self, image: Tensor) -> list[Tensor]:  # type: ignore[override]
        x = _input_to_unit(image, self.input_range)
        layers = list(self)
        outputs: list[Tensor] = []
        start = 0
        for end in _ADAIN_SLICE_ENDS:
            for layer in layers[start:end]:
                x = layer(x)
            outputs.append(x)
            start = end
        return outputs

    def encode(self, image: Tensor) -> Tensor:
        """relu4_1 only: the features AdaIN re-normalises (Huang and Belongie, Eq. 8)."""
        x = _input_to_unit(image, self.input_range)
        for layer in self:
            x = layer(x)
        return x

    def load_reference_state_dict(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load ``vgg_normalised.pth`` (all 53 layers; those past relu4_1 are ignored) or a state
        dict of this module. Shapes are checked strictly."""
        first = state.get("0.weight")
        if first is None or tuple(first.shape) != (3, 3, 1, 1):
            hint = ""
            if "features.0.weight" in state:
                hint = " It looks like torchvision's VGG-19, which `--method gatys` uses; AdaIN needs vgg_normalised.pth."
            got = "missing" if first is None else f"of shape {tuple(first.shape)}"
            raise ValueError(
                f"{source}: not AdaIN's normalised VGG (key 0.weight is {got}, expected a 1x1 "
                f"convolution of shape (3, 3, 1, 1)).{hint}"
            )
        kept = {}
        for key, value in state.items():
            match = re.fullmatch(r"(\d+)\.(weight|bias)", key)
            if match is None:
                raise ValueError(f"{source}: unexpected key {key!r} for AdaIN's normalised VGG")
            if int(match.group(1)) < _ADAIN_SLICE_ENDS[-1]:
                kept[key] = value
        try:
            self.load_state_dict(kept, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{source}: does not fit AdaIN's normalised VGG layout: {error}") from None


def load_adain_encoder(
    weights: str | os.PathLike[str] | None = None,
    *,
    input_range: tuple[float, float] = (0.0, 1.0),
    device: torch.device | str | None = None,
) -> NormalisedVGGEncoder:
    """AdaIN's frozen encoder from ``vgg_normalised.pth`` (or from a gan_style training checkpoint
    of ``adain``, which stores it).

    Looks for ``weights`` if given, else ``models/vgg_normalised.pth`` (the reference's default,
    relative to the working directory) and the torch hub checkpoint folder.
    """
    path = find_weights(
        weights,
        [Path.cwd() / "models" / ADAIN_VGG_FILE, torch_hub_checkpoint_dir() / ADAIN_VGG_FILE],
        "AdaIN normalised VGG-19 (vgg_normalised.pth)",
        f"The file is released by naoto0804/pytorch-AdaIN (MIT licence) at "
        f"{ADAIN_RELEASE_URL}/{ADAIN_VGG_FILE}; download it yourself and pass its path "
        f"(--vgg-weights FILE).",
    )
    state = load_state_dict_file(path)
    if "networks" in state:  # a gan_style training checkpoint of AdaIN holds its frozen encoder
        if "encoder" not in state["networks"]:
            raise ValueError(f"{path}: a training checkpoint of {state.get('method')!r} without an AdaIN encoder")
        state = state["networks"]["encoder"]
    model = NormalisedVGGEncoder(input_range=input_range)
    model.load_reference_state_dict(state, source=str(path))
    model.requires_grad_(False).eval()
    return model.to(device) if device is not None else model
