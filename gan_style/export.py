"""``gan-style export``: a trained model's inference networks as ONNX, TorchScript or a
safetensors folder.

Every method's inference path becomes one or more *modules* whose inputs and outputs are plain
tensors (images in [-1, 1], (B, 3, H, W)), so that they run outside Python:

* CycleGAN (``--direction``), CUT, FastCUT, SinCUT, reference files: ``generator``
  (image -> image);
* MUNIT (``--direction``): ``content_encoder`` (source image -> content), ``style_encoder``
  (target-domain image -> style code (B, style_dim, 1, 1)) and ``decoder`` (content, style ->
  image): random translation feeds the decoder N(0, I) codes, example-guided translation the
  style encoder's code;
* the Swapping Autoencoder: ``encoder`` (image -> structure, texture codes) and ``generator``
  (structure, texture -> image); a swap is ``generator(structure_A, lerp(texture_A, texture_B,
  alpha))``;
* AdaIN: ``stylizer`` (content, style, alpha -> image): the VGG encoder, AdaIN and the decoder in
  one graph, alpha a 0-d tensor.

Generators that inject per-pixel noise (SinCUT's decoder, the Swapping Autoencoder's G) take
their noise maps as further inputs (``noise0``, ``noise1`` ...; N(0, 1), shapes in the manifest),
since a random draw inside the graph could not match PyTorch's. Batch, height and width are
dynamic: any size the network accepts (sides that are multiples of the module's ``multiple``;
pad first, as ``Model.translate`` does). Weights are the EMA averages when the run kept them.

One module is written to ``--output`` itself; several go into the folder ``--output`` (one file
per module) with ``export.json`` describing their inputs and outputs. Each export is checked
before it is reported done: the exported graph runs at a second input size and must match the
PyTorch module (``onnxruntime`` is used for ONNX when installed).

ONNX uses ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript): the TorchScript-based
exporter is deprecated in torch 2.x, and ``torch.export``'s symbolic shapes keep H and W dynamic
through reflection padding, instance/layer norm, transposed convolutions and the modulated
(grouped, batch-folded) convolutions, and infer how the noise maps' sides relate to the codes'.

The ``safetensors`` format writes a folder: ``model.safetensors`` (the inference networks'
tensors, ``NETWORK.PARAM``) and ``config.json`` (method, full configuration, step), which
``gan_style.load(folder)`` reads without unpickling anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gan_style.errors import UserError

__all__ = ["ExportModule", "TensorSpec", "add_arguments", "export", "export_model", "export_modules", "run", "run_exported", "save_safetensors_folder", "write_module"]

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
MANIFEST = "export.json"
SAFETENSORS_FORMAT = "gan_style.safetensors/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: the networks each method's inference uses: what a safetensors folder keeps
INFERENCE_NETWORKS: dict[str, tuple[str, ...]] = {
    "cyclegan": ("G_A", "G_B"), "cut": ("G",), "fastcut": ("G",), "sincut": ("G",),
    "munit": ("G_A", "G_B"), "swapae": ("E", "G"), "adain": ("encoder", "decoder"),
}
#: the example batch: not 1, which torch.export would specialise as a constant
EXAMPLE_BATCH = 2
#: the example's smallest side, in size multiples (the ResNet bottlenecks need a few pixels)
EXAMPLE_MULTIPLES = 4


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported module. ``shape`` in words (B, H, W: dynamic)."""

    name: str
    shape: str
    help: str = ""


@dataclass
class ExportModule:
    """A module with tensor inputs, and how to make example inputs for an image of (H, W)
    (sides multiples of ``multiple``)."""

    name: str
    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    make_inputs: Callable[[int, int], tuple[Tensor, ...]]
    multiple: int
    help: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self, file: str) -> dict[str, Any]:
        return {"file": file, "help": self.help, "size_multiple": self.multiple, **self.extra,
                "inputs": [vars(spec) for spec in self.inputs], "outputs": [vars(spec) for spec in self.outputs]}


# -- wrappers: one per exported function, tensors in and out ------------------------------------
class _Call(nn.Module):
    """``function(*inputs)`` over the registered ``networks`` (so that export sees their weights)."""

    def __init__(self, networks: Mapping[str, nn.Module], function: Callable[..., Any]):
        super().__init__()
        self.networks = nn.ModuleDict(dict(networks))
        self.function = function

    def forward(self, *inputs: Tensor) -> Any:
        return self.function(*inputs)


def _adain_stylizer(encoder: nn.Module, decoder: nn.Module) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """T(c, s, alpha) of ``AdaINTraining.translator`` on [-1, 1] images, with alpha a tensor (the
    stylizer's own range check on a float would be a data-dependent branch in the graph)."""
    from gan_style.nn.adain import adaptive_instance_norm

    def stylize(content: Tensor, style: Tensor, alpha: Tensor) -> Tensor:
        features = encoder.encode((content + 1) / 2)
        target = adaptive_instance_norm(features, encoder.encode((style + 1) / 2))
        target = alpha * target + (1 - alpha) * features  # Eq. 14
        return decoder(target)[..., : content.shape[-2], : content.shape[-1]] * 2 - 1

    return stylize


def _noise_slots(generator: nn.Module) -> list[nn.Module]:
    """The StyledConvs of a noise-injecting generator, in the order its ``noise`` list takes them."""
    if hasattr(generator, "noise_layers"):  # the Swapping Autoencoder's G
        return [generator.get_submodule(name.removesuffix(".noise")) for name in generator.noise_layers]
    return list(generator.decoder.styled_convs)  # SinCUT


def _noise_sides(generator: nn.Module, run: Callable[[], Any], reference: Tensor) -> list[tuple[float, int]]:
    """(side factor relative to ``reference``'s sides, slot) of every StyledConv that injects noise,
    found by running ``run`` once with hooks on the noise layers."""
    slots = _noise_slots(generator)
    seen: dict[int, float] = {}
    hooks = [slot.noise.register_forward_hook(lambda module, args, out, k=k: seen.__setitem__(k, args[0].shape[-1] / reference.shape[-1]))
             for k, slot in enumerate(slots) if slot.inject_noise]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return [(seen[k], k) for k in sorted(seen)]


def _scaled(side: int, factor: float) -> int:
    return max(1, round(side * factor))


def _noise_specs(sides: Sequence[tuple[float, int]], of: str) -> tuple[TensorSpec, ...]:
    def size(factor: float, axis: str) -> str:
        return axis if factor == 1 else f"{axis}*{factor:g}" if factor > 1 else f"{axis}/{1 / factor:g}"

    return tuple(TensorSpec(f"noise{i}", f"(B, 1, {size(f, 'H')}, {size(f, 'W')})", f"N(0, 1) noise of layer {slot}; H, W: the {of}'s sides")
                 for i, (f, slot) in enumerate(sides))


def _noise_maps(sides: Sequence[tuple[float, int]], batch: int, height: int, width: int, generator: torch.Generator) -> list[Tensor]:
    return [torch.randn(batch, 1, _scaled(height, f), _scaled(width, f), generator=generator) for f, _ in sides]


def _with_noise(generator: nn.Module, sides: Sequence[tuple[float, int]], call: Callable[[list[Tensor | None]], Tensor]) -> Callable[..., Tensor]:
    """A function of (..., *noise maps) that places each map in its StyledConv's slot."""
    count = len(_noise_slots(generator))

    def place(maps: Sequence[Tensor]) -> list[Tensor | None]:
        slots: list[Tensor | None] = [None] * count
        for (_, slot), noise in zip(sides, maps):
            slots[slot] = noise
        return slots

    return lambda *inputs: call(list(inputs), place)  # type: ignore[misc]


def _image(height: int, width: int, generator: torch.Generator, channels: int = 3) -> Tensor:
    return torch.rand(EXAMPLE_BATCH, channels, height, width, generator=generator) * 2 - 1


IMAGE = "(B, 3, H, W)"


def _image_module(name: str, network: nn.Module, multiple: int, help: str) -> ExportModule:
    """An image -> image generator; noise-injecting ones (SinCUT) also take their noise maps."""
    channels = _in_channels(network)
    if not any(getattr(m, "inject_noise", False) for m in network.modules()):
        return ExportModule(name, _Call({"generator": network}, network), (TensorSpec("image", IMAGE, "in [-1, 1]"),),
                            (TensorSpec("output", IMAGE, "in [-1, 1]"),),
                            lambda h, w, g=None: (_image(h, w, g or torch.Generator().manual_seed(0), channels),), multiple, help)
    probe = _image(EXAMPLE_MULTIPLES * multiple, EXAMPLE_MULTIPLES * multiple + multiple, torch.Generator().manual_seed(0), channels)
    sides = _noise_sides(network, lambda: network(probe), probe)

    def call(inputs: list[Tensor], place: Callable[[Sequence[Tensor]], list[Tensor | None]]) -> Tensor:
        return network(inputs[0], noise=place(inputs[1:]))

    def make(h: int, w: int, g: torch.Generator | None = None) -> tuple[Tensor, ...]:
        g = g or torch.Generator().manual_seed(0)
        return (_image(h, w, g, channels), *_noise_maps(sides, EXAMPLE_BATCH, h, w, g))

    return ExportModule(name, _Call({"generator": network}, _with_noise(network, sides, call)),
                        (TensorSpec("image", IMAGE, "in [-1, 1]"), *_noise_specs(sides, "image")),
                        (TensorSpec("output", IMAGE, "in [-1, 1]"),), make, multiple, help, {"noise_side_factors": [f for f, _ in sides]})


def _in_channels(network: nn.Module) -> int:
    """The image channels a generator takes: those of its first convolution (1 for grey domains)."""
    first = next((p for p in network.parameters() if p.ndim == 4), None)
    return int(first.shape[1]) if first is not None and first.shape[1] in (1, 3) else 3


def export_modules(method: str, networks: Mapping[str, nn.Module], direction: str = "AtoB", config: Any = None) -> list[ExportModule]:
    """The modules that make up ``method``'s inference (see the module docstring), over
    ``networks`` (eval mode). ``config``: the method's configuration (the Swapping Autoencoder's
    size multiple)."""
    if method in ("cyclegan", "reference"):
        if direction not in ("AtoB", "BtoA") or (method == "reference" and direction != "AtoB"):
            raise UserError(f"--direction {direction}: {method} exports AtoB{' or BtoA' if method == 'cyclegan' else ''}")
        G = networks["G"] if method == "reference" else networks["G_A" if direction == "AtoB" else "G_B"]
        return [_image_module("generator", G, getattr(G, "size_multiple", 4), f"{method} {direction}: image -> image")]
    if method in ("cut", "fastcut", "sincut"):
        if direction != "AtoB":
            raise UserError(f"--direction {direction}: {method} translates one way (AtoB)")
        G = networks["G"]
        return [_image_module("generator", G, getattr(G, "size_multiple", 4), f"{method}: image -> image")]
    if method == "munit":
        return _munit_modules(networks, direction)
    if method == "swapae":
        return _swapae_modules(networks, config)
    if method == "adain":
        return _adain_modules(networks)
    raise UserError(f"method {method!r} has no exporter; exportable: cyclegan, cut, fastcut, sincut, munit, swapae, adain")


def _munit_modules(networks: Mapping[str, nn.Module], direction: str) -> list[ExportModule]:
    if direction not in ("AtoB", "BtoA"):
        raise UserError(f"--direction {direction}: MUNIT translates AtoB or BtoA")
    source, target = (networks["G_A"], networks["G_B"]) if direction == "AtoB" else (networks["G_B"], networks["G_A"])
    multiple, style_dim = source.size_multiple, target.spec.style_dim
    with torch.no_grad():
        content_channels = source.enc_content(torch.zeros(1, source.spec.input_dim, 4 * multiple, 4 * multiple)).shape[1]
    src_channels, tgt_channels = source.spec.input_dim, target.spec.input_dim

    def seeded(g: torch.Generator | None) -> torch.Generator:
        return g or torch.Generator().manual_seed(0)

    content = f"(B, {content_channels}, H/{multiple}, W/{multiple})"
    style = f"(B, {style_dim}, 1, 1)"
    return [
        ExportModule("content_encoder", _Call({"encoder": source.enc_content}, source.enc_content),
                     (TensorSpec("image", IMAGE, "a source-domain image in [-1, 1]"),), (TensorSpec("content", content),),
                     lambda h, w, g=None: (_image(h, w, seeded(g), src_channels),), multiple, f"MUNIT {direction}: the source's content code"),
        ExportModule("style_encoder", _Call({"encoder": target.enc_style}, target.enc_style),
                     (TensorSpec("image", IMAGE, "a target-domain example image in [-1, 1] (16 px or more)"),), (TensorSpec("style", style),),
                     lambda h, w, g=None: (_image(h, w, seeded(g), tgt_channels),), 1, f"MUNIT {direction}: an example's style code"),
        ExportModule("decoder", _Call({"G": target}, target.decode),
                     (TensorSpec("content", content), TensorSpec("style", style, "N(0, I) for a random style, or the style encoder's output")),
                     (TensorSpec("output", IMAGE, "in [-1, 1]"),),
                     lambda h, w, g=None: (torch.randn(EXAMPLE_BATCH, content_channels, h // multiple, w // multiple, generator=seeded(g)),
                                           torch.randn(EXAMPLE_BATCH, style_dim, 1, 1, generator=seeded(g))),
                     multiple, f"MUNIT {direction}: content + style -> image", {"style_dim": style_dim}),
    ]


def _swapae_modules(networks: Mapping[str, nn.Module], config: Any) -> list[ExportModule]:
    E, G = networks["E"], networks["G"]
    down = 2**E.spec.num_downsampling_sp
    texture_dim = G.spec.global_code_ch
    least = E.spec.min_texture_side  # what the texture branch's unpadded stride-2 convolutions need
    multiple = down * max(1, math.ceil(least / down / EXAMPLE_MULTIPLES))

    def seeded(g: torch.Generator | None) -> torch.Generator:
        return g or torch.Generator().manual_seed(0)

    probe_structure = torch.randn(EXAMPLE_BATCH, G.spec.spatial_code_ch, 5, 6)
    probe_texture = torch.randn(EXAMPLE_BATCH, texture_dim)
    sides = _noise_sides(G, lambda: G(probe_structure, probe_texture, noise=torch.Generator().manual_seed(0)), probe_structure)

    def call(inputs: list[Tensor], place: Callable[[Sequence[Tensor]], list[Tensor | None]]) -> Tensor:
        return G(inputs[0], inputs[1], fixed_noise=place(inputs[2:]))

    def generator_inputs(h: int, w: int, g: torch.Generator | None = None) -> tuple[Tensor, ...]:
        g = seeded(g)
        hs, ws = h // down, w // down
        return (torch.randn(EXAMPLE_BATCH, G.spec.spatial_code_ch, hs, ws, generator=g), torch.randn(EXAMPLE_BATCH, texture_dim, generator=g),
                *_noise_maps(sides, EXAMPLE_BATCH, hs, ws, g))

    structure = f"(B, {G.spec.spatial_code_ch}, H/{down}, W/{down})"
    return [
        ExportModule("encoder", _Call({"E": E}, E), (TensorSpec("image", IMAGE, f"in [-1, 1], sides >= {least}"),),
                     (TensorSpec("structure", structure), TensorSpec("texture", f"(B, {texture_dim})")),
                     lambda h, w, g=None: (_image(h, w, seeded(g)),), multiple, "Swapping Autoencoder: image -> (structure, texture) codes"),
        ExportModule("generator", _Call({"G": G}, _with_noise(G, sides, call)),
                     (TensorSpec("structure", structure), TensorSpec("texture", f"(B, {texture_dim})", "lerp(own, other's, alpha) for a swap"),
                      *_noise_specs(sides, "structure code")),
                     (TensorSpec("output", IMAGE, "in about [-1, 1] (no tanh: clamp)"),), generator_inputs, down,
                     "Swapping Autoencoder: (structure, texture) codes -> image",
                     {"noise_side_factors": [f for f, _ in sides]}),
    ]


def _adain_modules(networks: Mapping[str, nn.Module]) -> list[ExportModule]:
    def make(h: int, w: int, g: torch.Generator | None = None) -> tuple[Tensor, ...]:
        g = g or torch.Generator().manual_seed(0)
        return _image(h, w, g), _image(w, h + 3, g)[:1], torch.tensor(0.7)

    return [ExportModule("stylizer", _Call(networks, _adain_stylizer(networks["encoder"], networks["decoder"])),
                         (TensorSpec("content", IMAGE, "in [-1, 1]"), TensorSpec("style", "(1, 3, h, w)", "the style image in [-1, 1]"),
                          TensorSpec("alpha", "()", "0-d float: 0 the content ... 1 the style (Eq. 14)")),
                         (TensorSpec("output", IMAGE, "in [-1, 1] (clamp)"),), make, 1, "AdaIN: content, style, alpha -> image")]


# -- writers ------------------------------------------------------------------------------------
def _outputs(result: Any) -> list[Tensor]:
    return list(result) if isinstance(result, (tuple, list)) else [result]


def _example_size(module: ExportModule, second: bool = False) -> tuple[int, int]:
    """Two different, unequal sides (equal ones could be taken for one symbol by the tracer)."""
    m = module.multiple if module.multiple > 1 else 8
    height = (EXAMPLE_MULTIPLES + (3 if second else 0)) * m
    return height, height + (2 if second else 1) * m


def _dynamic_axes(x: Tensor, dim: Any) -> dict[int, Any] | None:
    """Height and width of images and spatial codes, not of (B, C, 1, 1) style codes; the batch
    unless the example has one (AdaIN's one style image); nothing of a 0-d scalar."""
    spatial = (2, 3) if x.ndim == 4 and x.shape[-2:] != (1, 1) else ()
    axes = ((0,) if x.ndim and x.shape[0] > 1 else ()) + spatial
    return {axis: dim for axis in axes} or None


def _export_onnx(module: ExportModule, path: Path) -> None:
    from torch.export import Dim

    examples = module.make_inputs(*_example_size(module))
    # One entry: the wrappers' forward takes *inputs. Dim.AUTO on batch, height and width: torch.export derives how the sides of the inputs relate
    # (the noise maps' to the codes') instead of failing on guards we would have to spell out.
    dynamic = tuple(_dynamic_axes(x, Dim.AUTO) for x in examples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.module, examples, str(path), dynamo=True, verbose=False, report=False, optimize=True,
                          input_names=[spec.name for spec in module.inputs], output_names=[spec.name for spec in module.outputs],
                          dynamic_shapes=(dynamic,), external_data=False)


def _export_torchscript(module: ExportModule, path: Path) -> None:
    examples = module.make_inputs(*_example_size(module))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of shape arithmetic, checked below at another size
        traced = torch.jit.trace(module.module, examples, check_trace=False, strict=False)
        torch.jit.save(traced, str(path))  # (deprecated for torch.export, but what C++/mobile runtimes load)


def _check(module: ExportModule, fmt: str, path: Path) -> float | None:
    """The largest difference between the written file and the PyTorch module at an input size
    other than the one exported; None when ONNX cannot be run here (no onnxruntime)."""
    inputs = module.make_inputs(*_example_size(module, second=True), torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _outputs(module.module(*inputs))
    got = run_exported(path, fmt, dict(zip((spec.name for spec in module.inputs), inputs)))
    if got is None:
        return None
    error = 0.0
    for out, ref, spec in zip(got, expected, module.outputs):
        if tuple(out.shape) != tuple(ref.shape):
            raise RuntimeError(f"the exported {module.name} gives {spec.name} of shape {tuple(out.shape)} at another input size, PyTorch {tuple(ref.shape)}")
        error = max(error, (out - ref).abs().max().item())
        bound = 1e-4 * min(1.0, ref.abs().max().item()) + 1e-6
        if error > bound:
            raise RuntimeError(f"the exported {module.name} differs from PyTorch by {error:.3g} (> {bound:.3g}) at another input size")
    return error


def run_exported(path: str | Path, fmt: str, inputs: Mapping[str, Tensor]) -> list[Tensor] | None:
    """Run an exported file on named ``inputs`` (in the module's order): ONNX with onnxruntime
    (None if it is not installed), TorchScript with torch.jit.load."""
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        wanted = {i.name for i in session.get_inputs()}
        missing = wanted - set(inputs)
        if missing:
            raise ValueError(f"{path} takes {', '.join(sorted(missing))} too")
        # an input the graph does not use (a noise map of zero strength) may have been dropped
        feeds = {name: x.detach().cpu().numpy() for name, x in inputs.items() if name in wanted}
        return [torch.from_numpy(out) for out in session.run(None, feeds)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return _outputs(module(*inputs.values()))


def save_safetensors_folder(model: Any, folder: Path) -> Path:
    """``model``'s inference networks as ``folder/model.safetensors`` + ``folder/config.json``."""
    from safetensors.torch import save_file

    from gan_style.config import to_dict

    method = getattr(model.make_translator, "__self__", None)
    if model.method not in INFERENCE_NETWORKS or method is None:
        raise UserError(f"{model.description}: the safetensors folder is for gan_style training checkpoints; "
                        "export this file to onnx or torchscript, or train/import it as a gan_style method")
    tensors = {f"{name}.{key}": value.detach().cpu().contiguous()
               for name in INFERENCE_NETWORKS[model.method] for key, value in model.networks[name].state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": SAFETENSORS_FORMAT, "method": model.method})
    config = {"format": SAFETENSORS_FORMAT, "method": model.method, "networks": list(INFERENCE_NETWORKS[model.method]),
              "config": to_dict(method.config), "step": model.step, "averaged": model.averaged, "source": model.description}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def export(checkpoint: str | Path, fmt: str, output: str | Path, direction: str = "AtoB", use_ema: bool = True, check: bool = True) -> dict[str, Any]:
    """Export ``checkpoint`` (anything ``gan_style.load`` reads; its EMA weights when it has them
    and ``use_ema``) as ``fmt`` to ``output``; see :func:`export_model`."""
    from gan_style.api import load

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    return export_model(load(checkpoint, device="cpu", use_ema=use_ema), fmt, output, direction, check)


def write_module(module: ExportModule, fmt: str, path: Path) -> None:
    """One module as an ONNX or TorchScript file."""
    module.module.eval()
    with torch.no_grad():
        (_export_onnx if fmt == "onnx" else _export_torchscript)(module, path)


def export_model(model: Any, fmt: str, output: str | Path, direction: str = "AtoB", check: bool = True) -> dict[str, Any]:
    """Write a loaded ``gan_style.api.Model`` (on the CPU) as ``fmt``; returns the manifest
    (module name -> file, inputs, outputs and, with ``check``, the largest difference from
    PyTorch at a second input size)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    output = Path(output).expanduser()
    if fmt == "safetensors":
        save_safetensors_folder(model, output)
        return {"format": fmt, "folder": str(output), "method": model.method}
    method = getattr(model.make_translator, "__self__", None)
    modules = export_modules(model.method, model.networks, direction, getattr(method, "config", None))
    single = len(modules) == 1
    if single and output.is_dir():
        raise UserError(f"--output {output} is a folder; {model.method} exports one file: give its path (e.g. {output / ('generator' + SUFFIXES[fmt])})")
    (output if not single else output.parent).mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": fmt, "method": model.method, "direction": direction, "source": model.description, "modules": {}}
    for module in modules:
        path = output if single else output / f"{module.name}{SUFFIXES[fmt]}"
        logger.info("exporting %s -> %s", module.name, path)
        write_module(module, fmt, path)
        entry = module.describe(path.name)
        if check:
            entry["check_max_abs_error"] = _check(module, fmt, path)
        manifest["modules"][module.name] = entry
    if not single:
        (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# -- the command --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="a run folder, a gan_style .pt checkpoint or a reference file")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="export_format")
    parser.add_argument("--output", required=True, help="the file (one module) or folder (several modules, or safetensors) to write")
    parser.add_argument("--direction", default="AtoB", help="AtoB or BtoA (CycleGAN, MUNIT)")
    parser.add_argument("--no-ema", action="store_true", help="export the last weights, not the EMA averages")
    parser.add_argument("--no-check", action="store_true", help="skip running the exported graph at a second size against PyTorch")


def run(args: argparse.Namespace) -> int:
    manifest = export(args.checkpoint, args.export_format, args.output, args.direction, use_ema=not args.no_ema, check=not args.no_check)
    if args.export_format == "safetensors":
        print(f"wrote {manifest['folder']} ({WEIGHTS_FILE} + {CONFIG_FILE}); load it with gan_style.load({manifest['folder']!r})")
        return 0
    for name, entry in manifest["modules"].items():
        inputs = ", ".join(spec["name"] for spec in entry["inputs"])
        checked = entry.get("check_max_abs_error")
        note = "" if checked is None else f"; matches PyTorch to {checked:.1e}"
        print(f"{name}: {entry['file']} ({inputs} -> {', '.join(spec['name'] for spec in entry['outputs'])}{note})")
    return 0
