"""The Python API: ``gan_style.load(path)`` and ``Model.translate(images)``.

One resolver turns whatever a user holds into a ready model: a run folder (its newest intact
checkpoint), a gan_style ``.pt`` checkpoint, or an official file of a reference implementation that
the importers of ``gan_style.hub`` recognise (CycleGAN, CUT and SinCUT generators). Every file is
read weights-only: loading never runs pickled code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch
from PIL import Image
from torch import Tensor, nn

from gan_style.engine.contract import Method, Translator
from gan_style.errors import UserError

__all__ = ["Model", "load"]


@dataclass
class Model:
    """A trained model for inference: its networks (eval mode, on ``device``) and how it translates.

    ``method`` is the gan_style method name, or ``"reference"`` for an official file.
    ``directions`` lists what ``translate(direction=...)`` accepts; ``inputs(direction)`` what it
    takes besides the images (AdaIN: ``style``, ``alpha``).
    """

    method: str
    networks: dict[str, nn.Module]
    make_translator: Callable[[Mapping[str, nn.Module], str], Translator]
    directions: tuple[str, ...]
    description: str
    device: torch.device
    step: int | None = None
    averaged: bool = False  # whether the networks hold the EMA weights (train.ema_decay)
    functions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        """The method's own inference functions (``model.encode``, ``model.decode`` ...)."""
        functions = self.__dict__.get("functions", {})
        if name in functions:
            function = functions[name]

            def run(*args: Any, **kwargs: Any) -> Any:
                with torch.inference_mode():
                    return function(*(self._as_tensor(a) if isinstance(a, Image.Image) else a for a in args), **kwargs)

            return run
        raise AttributeError(f"{type(self).__name__} of {self.__dict__.get('method', '?')!r} has no attribute {name!r}")

    def swap(self, structure_images: Any, texture_images: Any, alpha: float = 1.0, seed: int = 0, tile: int | None = None) -> Any:
        """The Swapping Autoencoder's swap: the structure of ``structure_images`` with the texture
        of ``texture_images`` (one image for all, or one per structure image), interpolated by
        ``alpha``; images as for ``translate`` (``tile``: computed in tiles, the same result)."""
        return self.translate(structure_images, tile=tile, texture=texture_images, alpha=alpha, seed=seed)

    def translator(self, direction: str = "AtoB") -> Translator:
        """The method's translator of ``direction`` (it says which directions it has)."""
        return self.make_translator(self.networks, direction)

    def inputs(self, direction: str = "AtoB") -> tuple[str, ...]:
        return tuple(spec.name for spec in self.translator(direction).inputs)

    @overload
    def translate(self, images: Image.Image, direction: str = ..., *, tile: int | None = ..., tile_overlap: int = ...,
                  tile_mode: str = ..., **inputs: Any) -> Image.Image: ...
    @overload
    def translate(self, images: Sequence[Image.Image], direction: str = ..., *, tile: int | None = ..., tile_overlap: int = ...,
                  tile_mode: str = ..., **inputs: Any) -> list[Image.Image]: ...
    @overload
    def translate(self, images: Tensor, direction: str = ..., *, tile: int | None = ..., tile_overlap: int = ...,
                  tile_mode: str = ..., **inputs: Any) -> Tensor: ...

    def translate(self, images, direction="AtoB", *, tile=None, tile_overlap=64, tile_mode="exact", **inputs):
        """Translate a PIL image, a list of them, or a float tensor (B, 3, H, W) in [-1, 1]; the
        result is of the same kind and size. Images of any size are padded to the network's size
        multiple and cropped back. Extra keyword inputs (see ``inputs()``) may be PIL images or
        tensors where an image is expected.

        ``tile``: translate in tiles of about that many pixels, so that memory does not grow with
        the image. ``tile_mode="exact"`` (default) gives the whole-image result: every
        normalisation layer gets the statistics of the whole image, gathered tile by tile (see
        ``gan_style.tiling``); a model the tiler does not know falls back, with a warning, to
        ``"per-tile"``: each tile on its own, blended with linear ramps over ``tile_overlap``
        pixels (instance norm then takes each tile's own statistics)."""
        import logging

        from gan_style import tiling
        from gan_style.translate import check_options, probe_min_side, run_padded, run_tiled, run_tiled_exact

        function, translator = self.bind(direction, **inputs)
        program = None
        if tile is not None:
            check_options(tile, tile_overlap, size_multiple=translator.size_multiple, tile_mode=tile_mode)
            if tile_mode == "exact":
                try:
                    program = tiling.program_of(self, direction, inputs)
                except tiling.Unsupported as error:
                    logging.getLogger(__name__).warning(
                        "tile=%d: %s cannot be tiled exactly (%s); each tile is normalised on its own (tile_mode='per-tile')",
                        tile, self.description, error)

        def whole(x: Tensor, least: int | None) -> Tensor:
            if program is not None:
                return run_tiled_exact(program, x, translator.size_multiple, tile, least).to(self.device)
            if tile is not None:
                return torch.cat([run_tiled(function, one[None], translator.size_multiple, tile, tile_overlap, least) for one in x]).to(self.device)
            return run_padded(function, x, translator.size_multiple, least)

        def run(x: Tensor) -> Tensor:
            x = x.to(self.device, torch.float32)
            try:
                out = whole(x, None)
            except (RuntimeError, ValueError) as error:
                if isinstance(error, UserError) or min(x.shape[-2:]) >= 64 * translator.size_multiple:
                    raise
                # too small for the network: pad to the smallest side it runs on, crop back
                least = probe_min_side(function, x.shape[1], translator.size_multiple, self.device)
                out = whole(x, least)
            return out.clamp(-1, 1)

        with torch.inference_mode():
            if isinstance(images, Tensor):
                if images.ndim != 4 or images.shape[1] not in (1, 3):
                    raise UserError(f"translate takes a (B, 3, H, W) tensor in [-1, 1], got shape {tuple(images.shape)}")
                return run(images).to(images.device, images.dtype)
            if isinstance(images, Image.Image):
                return _to_pil(run(self._as_tensor(images)))
            if isinstance(images, Sequence) and all(isinstance(image, Image.Image) for image in images):
                return [_to_pil(run(self._as_tensor(image))) for image in images]
        raise UserError(f"translate takes a PIL image, a list of PIL images or a (B, 3, H, W) tensor, got {type(images).__name__}")

    __call__ = translate

    def bind(self, direction: str = "AtoB", **inputs: Any) -> tuple[Callable[[Tensor], Tensor], Translator]:
        """The image function of ``direction`` with ``inputs`` fixed (PIL images or tensors where
        an image is expected), and the translator it comes from (its size multiple)."""
        translator = self.translator(direction)
        translator.check_inputs(inputs)
        kinds = {spec.name: spec.kind for spec in translator.inputs}
        bound = {name: self._as_tensor(value) if kinds[name] == "image" else value for name, value in inputs.items() if value is not None}
        return translator.bind(**bound), translator

    def _as_tensor(self, image: Image.Image | Tensor) -> Tensor:
        from gan_style.data.images import pil_to_tensor, to_rgb

        if isinstance(image, Tensor):
            return (image if image.ndim == 4 else image[None]).to(self.device, torch.float32)
        return pil_to_tensor(to_rgb(image))[None].to(self.device)


def _to_pil(batch: Tensor) -> Image.Image:
    from gan_style.data.images import tensor_to_pil

    return tensor_to_pil(batch[0])


def load(path: str | Path, device: str | torch.device | None = None, use_ema: bool = True) -> Model:
    """Load a model for inference.

    ``path`` is a run folder (``runs/NAME``: its newest intact checkpoint), a gan_style checkpoint
    (``.pt``), a folder written by ``gan-style export --format safetensors`` (or its
    ``model.safetensors``), or an official reference file (``latest_net_G.pth`` of CycleGAN or CUT).
    ``device``: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available). ``use_ema``: use the
    weight averages of a run trained with ``train.ema_decay`` (default), else the last weights.

    >>> model = gan_style.load("runs/cyclegan_vangogh2photo-20261201")   # doctest: +SKIP
    >>> painting = model.translate(Image.open("photo.jpg"))              # doctest: +SKIP
    >>> photos = model.translate(batch, direction="BtoA")  # (B, 3, H, W) in [-1, 1]  # doctest: +SKIP
    """
    from gan_style.engine.checkpoint import FORMAT, load_run_checkpoint, read_weights

    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return _from_safetensors_folder(folder, device)
    if path.is_dir():
        path, state = load_run_checkpoint(path)
    else:
        state = read_weights(path)
    if isinstance(state, Mapping) and state.get("format") == FORMAT:
        return _from_training_checkpoint(path, state, device, use_ema)
    whole = _official_model(path, state)
    if whole is not None:
        method_name, overrides, networks = whole
        return _model_of(method_name, overrides, networks, device, f"reference checkpoint {path} ({method_name})")
    from gan_style.hub import import_reference_state_dict

    network, spec = import_reference_state_dict(state, str(path))
    network = network.eval().to(device)
    description = f"reference checkpoint {path}: {spec}"

    def one_generator(nets: Mapping[str, nn.Module], direction: str) -> Translator:
        if direction != "AtoB":
            raise UserError(f"--direction {direction}: {path} holds one generator, which translates AtoB (its own direction); "
                            "for the other direction give the file of the other generator")
        return Translator.of_network(nets["G"], description)

    return Model("reference", {"G": network}, one_generator, ("AtoB",), description, device)


def _from_training_checkpoint(path: Path, state: Mapping[str, Any], device: torch.device, use_ema: bool) -> Model:
    from gan_style.config import apply_overrides
    from gan_style.errors import CheckpointError
    from gan_style.methods import get_method

    method_cls = get_method(state["method"])
    method = method_cls(apply_overrides(method_cls.Config(), state["config"]))
    networks = method.build_networks()
    averages = state.get("ema", {}) if use_ema else {}
    for name, net in networks.items():
        weights = averages.get(name, state["networks"].get(name))
        if weights is None:
            raise CheckpointError(f"{path} has no weights for network {name!r}; it was saved by another configuration")
        net.load_state_dict(weights)
    step = state["progress"]["step"]
    description = f"{state['method']} checkpoint {path} (step {step}{', EMA weights' if averages else ''})"
    return _ready_model(method, networks, device, description, step=step, averaged=bool(averages))


def _from_safetensors_folder(folder: Path, device: torch.device) -> Model:
    """A folder of ``gan-style export --format safetensors``: the inference networks' tensors
    (``model.safetensors``, keys ``NETWORK.PARAM``) and ``config.json`` (method, configuration,
    step); nothing is unpickled."""
    import json
    import warnings

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from gan_style.config import apply_overrides
    from gan_style.errors import CheckpointError
    from gan_style.export import CONFIG_FILE, SAFETENSORS_FORMAT, WEIGHTS_FILE
    from gan_style.methods import get_method

    try:
        described = json.loads((folder / CONFIG_FILE).read_text())
        tensors = load_file(str(folder / WEIGHTS_FILE))
    except (json.JSONDecodeError, SafetensorError, OSError) as error:
        raise CheckpointError(f"{folder} is not a readable safetensors export ({error}); export it again") from None
    if not isinstance(described, dict) or described.get("format") != SAFETENSORS_FORMAT:
        raise CheckpointError(f"{folder / CONFIG_FILE} has no '{SAFETENSORS_FORMAT}' marker: not a gan_style safetensors export")
    method_cls = get_method(described["method"])
    config = apply_overrides(method_cls.Config(), described["config"])
    # The weights come from the folder: AdaIN's encoder must not be read from the files the config names.
    config = apply_overrides(config, {k: v for k, v in {"vgg_weights": "random", "decoder_weights": ""}.items() if hasattr(config, k)})
    method = method_cls(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "randomly initialised encoder": its weights are loaded below
        built = method.build_networks()
    networks = {name: built[name] for name in described["networks"]}
    for name, net in networks.items():
        prefix = f"{name}."
        try:
            net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except RuntimeError as error:
            raise CheckpointError(f"{folder}: the weights of {name!r} do not fit its configuration ({str(error).splitlines()[0]})") from None
    step = described.get("step")
    description = f"{described['method']} safetensors export {folder} (step {step}{', EMA weights' if described.get('averaged') else ''})"
    return _ready_model(method, networks, device, description, step=step, averaged=bool(described.get("averaged")))


def _official_model(path: Path, state: Any) -> tuple[str, dict[str, Any], dict[str, nn.Module]] | None:
    """(method, config overrides, networks) for a reference file that holds a whole model: the
    Swapping Autoencoder's ``latest_checkpoint.pth`` or MUNIT's ``gen_*.pt``; None otherwise."""
    from gan_style.hub import munit as munit_files
    from gan_style.hub import swapae as swapae_files

    if not isinstance(state, Mapping):
        return None
    if swapae_files.is_swapae_state(state):
        from gan_style.methods.swapae import config_overrides_from_options

        networks, options = swapae_files.import_swapae_checkpoint(state)
        return "swapae", config_overrides_from_options(options), networks
    if munit_files.is_munit_generator_state(state):
        from gan_style.methods.munit import config_overrides_from_specs

        imported = munit_files.import_munit_checkpoint(state)
        specs = imported.pop("specs")
        return "munit", config_overrides_from_specs(specs), imported
    return None


def _model_of(method_name: str, overrides: Mapping[str, Any], networks: dict[str, nn.Module], device: torch.device, description: str) -> Model:
    """A Model of a gan_style method around networks imported from a reference file (which may
    hold only the inference networks: MUNIT's generators, the Swapping Autoencoder's E and G)."""
    from gan_style.engine.contract import config_from_overrides
    from gan_style.methods import get_method

    method_cls = get_method(method_name)
    return _ready_model(method_cls(config_from_overrides(method_cls, None, overrides)), networks, device, description)


def _ready_model(method: Method, networks: dict[str, nn.Module], device: torch.device, description: str, **progress: Any) -> Model:
    """``networks`` frozen, in eval mode and on ``device``, with ``method``'s translators and functions."""
    for net in networks.values():
        net.requires_grad_(False).eval().to(device)
    return Model(method.name, networks, method.translator, method.directions, description, device,
                 functions=method.functions(networks), **progress)
