"""Memory format, normalisation and convolution kernels, chosen per device and step dtype by measuring them.

Which layout and which norm kernel are fastest depends on the dtype and the hardware, and the
differences are large: on an AVX-512/AMX Xeon, PyTorch's bf16 group norm (our instance norm) on a
channels-last tensor runs its backward about 15x slower than on a contiguous one, while in fp32
channels-last is as fast or faster. A fixed default is therefore wrong somewhere. Before training,
:func:`choose_kernels` times a training pass (forward and backward; ``PROBE_SHAPES``: 128 px at
batch 2, or 32 px at batch 16) through a small network of the method's family
(``Method.kernel_probe``, ``PROBES``: a one-block ResNet generator, or StyleGAN2 blocks) in every
candidate configuration and keeps the fastest:

* memory format: contiguous (NCHW) or channels-last (NHWC);
* the norm kernel. NCHW: PyTorch's as is ("native"), or for a lower-precision step (bf16, fp16)
  its input cast to fp32 and the result cast back ("float32", numerically the safest, so it wins
  ties). Channels-last: PyTorch's batch-norm kernel on each sample ("batchnorm",
  ``gan_style.nn.layers._per_sample_batch_norm``); on GPUs also per-channel sums in channels-last
  layout ("reductions", ``gan_style.nn.layers._ChannelsLastInstanceNorm``), a detour through NCHW
  ("contiguous") and PyTorch's own group-norm kernel ("native"). On the CPU PyTorch's channels-last
  group norm takes the variance as E[x²] - E[x]² (0.24 max error at mean 100, std 1, in fp32) and
  its backward is 4-15x slower than on NCHW (bf16, AVX-512 Xeon: 55 ms for 2x128x128x128 forward
  and backward, 36.6 ms by the NCHW detour, 8-11 ms by the sums); the batch-norm kernel is 2-4x
  faster than the sums at batch 1 and 1.3-2x at batch 2. Where the C kernels are built, also every
  sample in one C call ("fused", ``gan_style.nn.layers._FusedInstanceNorm``: 1.3-2.2x faster than
  the batch-norm kernel per map, fp32 and bf16, 2 threads of an AMX Xeon). The statistics are
  fp32 in every kernel.

Then, for fp32 steps on the CPU, the convolution kernel, timed on one 256-channel residual block
in the chosen layout: PyTorch's direct convolution ("direct"), or Winograd's F(4x4, 3x3) for the
wide stride-1 3x3 layers (the ResNet family's and, with one weight for the batch, StyleGAN2's:
the Swapping Autoencoder's, SinCUT's), F(3x3, 4x4) for the PatchGAN discriminators' stride-1 4x4
ones and, on the fused path, F(4x4, 5x5) for MUNIT's decoder ("winograd",
``gan_style.nn.layers.WinogradCapable``, ``gan_style.nn.winograd``): 4x fewer multiplications, about the direct convolution's error. Where
the direct convolutions already run at the fp32 matmul peak it is the only way to a faster fp32
step. GPUs keep "direct": cuDNN picks its own Winograd kernels.

Where the fused C transforms of ``gan_style.nn.winograd_kernels.c`` are built (a C compiler on
the machine), an fp32 CPU step is channels-last without measuring NCHW: those kernels take
channels-last tensors and are worth more than any layout difference of the rest.

``train.channels_last`` true/false fixes the layout (the norm kernel is still measured), and
``train.winograd`` true/false the convolution kernel; ``"auto"`` (the default of both) measures.
The choice is logged and ``gan-style bench`` reports it with the timings.

Lower precision itself is measured too (:func:`choose_precision`): a bf16 step is only faster
where the hardware has bf16 units (AMX or AVX512-BF16 CPUs, Ampere-or-later GPUs). Elsewhere
PyTorch emulates bf16 arithmetic, slower than fp32, so a run asking for ``bf16`` trains in fp32
with a warning when the probe's bf16 pass is slower than its fp32 one
(``train.precision_fallback``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from gan_style.nn.layers import FusedActivation, MeasuredNorm, WinogradCapable, activation_slope, fused_norm_available
from gan_style.nn.narrow import narrow_kernels_available
from gan_style.nn.tiles import tile_kernels_available
from gan_style.nn.winograd import fused_winograd_available

logger = logging.getLogger(__name__)

#: the dtype of a step's arithmetic per ``train.mixed_precision`` ("no": fp32)
STEP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

#: norm kernels in order of preference, for candidates within 3 % of the fastest (after the layout).
#: "fused" before "batchnorm": as accurate or more (fp32 statistics, the centred variance), and
#: faster in every whole step measured where the probe could not tell them apart (paired steps,
#: AMX Xeon: CycleGAN 0.95 bf16 and 0.96 fp32, CUT 0.955, FastCUT 0.97 bf16; docs/speed.md, session n)
KERNEL_PREFERENCE = ("float32", "native", "fused", "batchnorm", "reductions", "contiguous")


@dataclass(frozen=True)
class KernelChoice:
    """What :func:`choose_kernels` picked, and the milliseconds each candidate took."""

    channels_last: bool
    norm_kernel: str  # see gan_style.nn.layers.InstanceNorm2d.kernel
    timings_ms: dict[str, float] = field(default_factory=dict)
    conv_kernel: str = "direct"  # see gan_style.nn.layers.Conv2d.kernel
    weight_gradient: str = "direct"  # strided convolutions' weight gradient: "direct" or "measured" (per shape)
    narrow: str = "direct"  # the image-facing convolutions (a side of <= 4 channels): "direct" or "measured" (per pass)
    # bf16 steps on a CPU with AMX (weight_gradient "measured"): the stride-1 3x3 and 4x4
    # convolutions (zero padding 0 or 1) by tiles, forward and backward (fp32 weight gradients),
    # where timed faster per shape (gan_style.nn.tiles)
    tile_gradients: bool = False

    @property
    def probe_ms(self) -> float:
        """The family probe's training pass in the chosen layout and norm kernel."""
        return self.timings_ms[_candidate_name(self.channels_last, self.norm_kernel)]

    def describe(self) -> str:
        layout = "channels-last" if self.channels_last else "contiguous (NCHW)"
        convs = f"{self.conv_kernel} 3x3 and 4x4 convolutions"
        if self.conv_kernel == "winograd" and self.channels_last and fused_winograd_available():
            convs = "winograd (fused C transforms) 3x3, 4x4 and 5x5 convolutions"
        if self.tile_gradients:
            convs += ", stride-1 3x3 and 4x4 convolutions by AMX tiles (fp32 weight gradients) where timed faster"
        elif self.weight_gradient == "measured":
            convs += ", strided weight gradients by im2col where timed faster"
        if self.narrow == "measured":
            convs += ", image-side convolutions by tap products where timed faster"
        return f"{layout}, {self.norm_kernel} instance norm, {convs}"


def _candidate_name(channels_last: bool, norm_kernel: str) -> str:
    return f"{'channels_last' if channels_last else 'nchw'}/{norm_kernel}"


class _StyleGAN2Probe(nn.Module):
    """A StyleGAN2 discriminator block (3x3 convs, 1x1 skip, blurred stride-2 down-sampling) and
    a modulated synthesis layer with noise: the layers of the Swapping Autoencoder's networks."""

    def __init__(self, channels: int):
        from gan_style.nn.stylegan2 import ResBlock, StyledConv

        super().__init__()
        self.stem = nn.Conv2d(channels, 128, 1)
        self.down = ResBlock(128, 256)
        self.synthesis = StyledConv(256, 256, 3, style_dim=256, modulate_input=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.down(self.stem(x))
        return self.synthesis(features, features.mean((2, 3)))


def _resnet_probe(channels: int) -> nn.Module:
    from gan_style.nn.generators import ResnetGenerator

    return ResnetGenerator(channels, channels, ngf=64, n_blocks=1)


#: the network families a method can have its layout measured on (``Method.kernel_probe``): the
#: CycleGAN / CUT ResNet generator (7x7 stem, stride-2 convs, one residual block, transposed-conv
#: up-sampling, instance norms), and StyleGAN2's blocks
PROBES: dict[str, Callable[[int], nn.Module]] = {"resnet": _resnet_probe, "stylegan2": _StyleGAN2Probe}
#: the probe's input on a CPU, per family: the ResNet generators at 128 px, batch 2 (at batch 1 the
#: layouts differed by less than the noise); StyleGAN2 blocks at 32 px, batch 16, because the
#: Swapping Autoencoder's discriminators judge 6 images (D) or 16-48 patches (Dpatch) at once and
#: the layouts part with the batch: at 128 px, batch 2, the verdict flipped between runs
#: (channels-last 0.92x and 1.11x NCHW's time, 2-core AMD EPYC, fp32) and picked NCHW for a step
#: that ran 25 % slower than channels-last (25.6 s against 20.4 s); at 32 px, batch 16 it was
#: 0.87-0.91x in three runs (bf16: 0.91x), at half the cost
PROBE_SHAPES = {"resnet": (2, 3, 128, 128), "stylegan2": (16, 3, 32, 32)}


def _training_pass(build: Callable[[], nn.Module], shape: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype,
                   channels_last: bool, norm_kernel: str, conv_kernel: str) -> Callable[[], None]:
    """One training pass (forward and backward, autocast for a lower-precision dtype, fp32
    weights) through ``build()`` on a ``shape`` input in the candidate configuration."""
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the probe's weights; the caller's random state is restored below
    network = build().to(device)
    torch.random.set_rng_state(torch_state)
    if channels_last:
        to_channels_last(network)
    set_norm_kernel(network, norm_kernel)
    set_conv_kernel(network, conv_kernel)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device).contiguous(memory_format=memory_format)
    low_precision = dtype in (torch.bfloat16, torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=low_precision):
            out = network(x)
        out.float().square().mean().backward()

    return step


def _probe(device: torch.device, dtype: torch.dtype, channels_last: bool, norm_kernel: str, family: str,
           conv_kernel: str = "direct") -> Callable[[], None]:
    """A training pass through a small network of the method's family (``PROBES``), whose mix of
    widths and resolutions decides the layout (a single bottleneck layer did not: it picked NCHW
    for bf16 steps that ran 8-10 % faster channels-last)."""
    shape = _probe_shape(device, family)
    return _training_pass(lambda: PROBES[family](shape[1]), shape, device, dtype, channels_last, norm_kernel, conv_kernel)


def _conv_probe(device: torch.device, channels_last: bool, norm_kernel: str, conv_kernel: str) -> Callable[[], None]:
    """An fp32 training pass through a 256-channel residual block at 32x32, batch 2 (CycleGAN's
    and CUT's at 128 px, MUNIT's content encoder's), where Winograd acts: inside a whole one-block
    generator the 3x3 kernel's share was too small for the probe to tell the two apart."""
    from gan_style.nn.generators import ResnetBlock

    return _training_pass(lambda: ResnetBlock(256, "instance", dropout=False), (2, 256, 32, 32), device, torch.float32,
                          channels_last, norm_kernel, conv_kernel)


def _median_ms(probes: dict[str, Callable[[], None]], device: torch.device, rounds: int = 7, best: bool = False) -> dict[str, float]:
    """Each probe's median time (``best``: its fastest), warmed up, timed round robin (so that a
    slow spell of the machine does not fall on one candidate)."""
    for probe in probes.values():
        probe()  # warm-up: first-call allocations and kernel selection
    seconds: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(rounds):
        for name, probe in probes.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            probe()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: (min(t) if best else sorted(t)[len(t) // 2]) * 1000 for name, t in seconds.items()}


def _probe_shape(device: torch.device, family: str) -> tuple[int, int, int, int]:
    # PROBE_SHAPES on a CPU; larger on GPUs, where a small pass would time the launch overhead
    return PROBE_SHAPES[family] if device.type == "cpu" else (8, 3, 256, 256)


@functools.cache
def _choose(device_type: str, device_index: int | None, dtype: torch.dtype, threads: int, layout: bool | None, family: str,
            winograd: bool | None) -> KernelChoice:
    device = torch.device(device_type, device_index) if device_index is not None else torch.device(device_type)
    low_precision = dtype in (torch.bfloat16, torch.float16)
    with torch.random.fork_rng(devices=[]):  # building it draws weights: leave the caller's random state alone
        has_winograd_layers = any(isinstance(m, WinogradCapable) for m in PROBES[family](3).modules())
    winograd_possible = dtype == torch.float32 and device.type == "cpu" and has_winograd_layers and winograd is not False
    layouts = (False, True) if layout is None else (layout,)
    if layout is None and winograd_possible and fused_winograd_available():
        # the fused Winograd transforms take channels-last tensors, and took a whole FastCUT fp32
        # step to 0.67-0.77 of the PyTorch path's (docs/speed.md, session h): more than any layout
        # difference of the rest of the step, which the family probe (no wide 3x3 layer) measures
        layouts = (True,)
    nchw_kernels = ("float32", "native") if low_precision else ("native",)
    # On the CPU only the batch-norm kernel: timed alone it beat the sums on every map of these
    # networks (fp32 and bf16, batch 1 and 2), and the sums beat the NCHW detour (2x128x128x128
    # bf16: 8-11 vs 36.6 ms), which the probe had not told apart (whole CUT bf16 steps: 0.55 vs 0.61 s).
    channels_last_kernels = (("native", "batchnorm", "reductions", "contiguous") if device.type == "cuda"
                             else ("batchnorm", "fused") if fused_norm_available() else ("batchnorm",))
    candidates = [(cl, kernel) for cl in layouts for kernel in (channels_last_kernels if cl else nchw_kernels)]
    timings = _median_ms({_candidate_name(*c): _probe(device, dtype, *c, family) for c in candidates}, device)
    best_time = min(timings.values())
    # ties: in bf16/fp16 channels-last first (whole bf16 steps of every method ran 10-40 % faster
    # channels-last on the AVX-512 Xeon, more than the probe shows), in fp32 NCHW; then the
    # safest norm kernel
    order = sorted(candidates, key=lambda c: (c[0] != low_precision, KERNEL_PREFERENCE.index(c[1])))
    channels_last, norm_kernel = next(c for c in order if timings[_candidate_name(*c)] <= best_time * 1.03)
    # Winograd: fp32 steps on the CPU (autocast steps run their convolutions directly anyway), for
    # families with WinogradCapable layers (the ResNet and StyleGAN2 ones); direct unless 3 % faster
    conv_kernel = "direct"
    if winograd_possible:
        if winograd:
            conv_kernel = "winograd"
        else:
            conv_timings = _median_ms({f"{kernel} 3x3 convolutions": _conv_probe(device, channels_last, norm_kernel, kernel)
                                       for kernel in ("direct", "winograd")}, device)
            timings.update(conv_timings)
            if conv_timings["winograd 3x3 convolutions"] < conv_timings["direct 3x3 convolutions"] / 1.03:
                conv_kernel = "winograd"
    # The strided convolutions' weight gradients, in the same fp32 CPU steps, are timed per shape at
    # their first use (gan_style.nn.strided): oneDNN's or im2col's, whichever is faster
    weight_gradient = "measured" if winograd_possible else "direct"
    # In bf16 steps on a CPU with AMX, the stride-1 3x3 and 4x4 layers' forward and backward likewise:
    # oneDNN's, or the tile kernels' with the weight gradient in fp32 (gan_style.nn.tiles)
    tile_gradients = (dtype == torch.bfloat16 and device.type == "cpu" and has_winograd_layers and winograd is not False
                      and tile_kernels_available())
    if tile_gradients:
        weight_gradient = "measured"
    # So are the image-facing layers' passes (gan_style.nn.narrow), where the C gathers are built:
    # oneDNN's or a GEMM over the wide side with a tap gather on the narrow one
    narrow = "measured" if winograd_possible and narrow_kernels_available() else "direct"
    return KernelChoice(channels_last, norm_kernel, {k: round(v, 2) for k, v in timings.items()}, conv_kernel, weight_gradient,
                        narrow, tile_gradients)


def choose_kernels(device: torch.device | str, dtype: torch.dtype, channels_last: bool | None = None, family: str = "resnet",
                   winograd: bool | None = None) -> KernelChoice:
    """The fastest memory format (``channels_last=None``; or the one given), norm kernel and (fp32
    on a CPU, ``winograd=None``; or as given) convolution kernel for ``dtype`` steps on
    ``device``, measured on a network of ``family`` (``PROBES``) once per process (and thread
    count): 2.5-5 s on a CPU (ResNet probe, 2 threads; about as long for the StyleGAN2 one)."""
    if family not in PROBES:
        raise ValueError(f"kernel probe must be one of {', '.join(PROBES)}, got {family!r}")
    device = torch.device(device)
    choice = _choose(device.type, device.index, dtype, torch.get_num_threads(), channels_last, family, winograd)
    logger.debug("kernels for %s on %s: %s (%s)", dtype, device, choice.describe(), choice.timings_ms)
    return choice


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run trains in (``train.mixed_precision``'s values: "no" is fp32): the one
    asked for, or fp32 where the lower one was measured slower, with the probe's milliseconds."""

    mixed_precision: str
    requested: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def fell_back(self) -> bool:
        return self.mixed_precision != self.requested


def cpu_has_bf16_units(device: torch.device) -> bool:
    """Whether ``device`` is a CPU with bf16 arithmetic units (AMX tiles or AVX512-BF16, as PyTorch
    detects them), where bf16 is not emulated."""
    if device.type != "cpu":
        return False
    return any(getattr(torch.cpu, check, lambda: False)() for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def choose_precision(device: torch.device | str, requested: str, channels_last: bool | None = None, family: str = "resnet",
                     winograd: bool | None = None) -> PrecisionChoice:
    """``requested`` ("bf16", "fp16"), or "no" (fp32) when the kernel probe's training pass of
    ``family`` in the fastest kernels for that dtype (:func:`choose_kernels`, with the layout and
    Winograd settings the run will use, so the run's own choice reuses these measurements) is
    slower than in the fastest fp32 ones, Winograd convolutions included where fp32 would run them. Without bf16 units (an AVX2-only CPU) PyTorch emulates
    bf16 arithmetic: its convolutions are several times slower than fp32 ones (9-11x on a 2-core
    AMD EPYC with oneDNN held to AVX2), so a first round of one layout settles that case before
    the other candidates take a minute to time. A CPU with bf16 units (:func:`cpu_has_bf16_units`)
    skips that round: there a bf16 pass measured 1.5x slower means a busy machine, not emulation
    (an AMX Xeon timed 2192 against 959 ms while a test suite ran beside it, and fell back; docs/speed.md,
    session n), so the full timings, seven rounds round robin, decide."""
    if requested not in STEP_DTYPES:
        return PrecisionChoice(requested, requested)
    device, dtype = torch.device(device), STEP_DTYPES[requested]
    layout = True if channels_last is None else channels_last
    norm_kernel = "batchnorm" if layout and device.type == "cpu" else "native"
    if not (dtype == torch.bfloat16 and cpu_has_bf16_units(device)):
        # the fastest of three rounds each: a slow spell of the machine does not make a fall-back
        screen = _median_ms({name: _probe(device, probe_dtype, layout, norm_kernel, family)
                             for name, probe_dtype in ((requested, dtype), ("fp32", torch.float32))}, device, rounds=3, best=True)
        if screen[requested] > 1.5 * screen["fp32"]:
            return PrecisionChoice("no", requested, {k: round(v, 2) for k, v in screen.items()})
    low = choose_kernels(device, dtype, channels_last, family, winograd)
    full = choose_kernels(device, torch.float32, channels_last, family, winograd)
    timings = {requested: low.probe_ms, "fp32": full.probe_ms}
    if full.conv_kernel != "direct":
        # the fp32 step would run its convolutions by Winograd, which the layout probe does not:
        # time both dtypes again with the kernels each would use (on the 2-core Zen 4 EPYC, no
        # AMX, Winograd's fused transforms brought whole fp32 steps within 0.92-1.07 of bf16 ones)
        timings = _median_ms({requested: _probe(device, dtype, low.channels_last, low.norm_kernel, family),
                              "fp32": _probe(device, torch.float32, full.channels_last, full.norm_kernel, family, full.conv_kernel)},
                             device)
    chosen = requested if timings[requested] <= timings["fp32"] else "no"
    return PrecisionChoice(chosen, requested, {k: round(v, 2) for k, v in timings.items()})


def to_channels_last(net: nn.Module) -> None:
    """Store the 4-D parameters and buffers (convolution kernels) of ``net`` channels-last.
    ``Module.to(memory_format=...)`` refuses a module with 5-D ones (the Swapping Autoencoder's
    modulated convolutions keep a (1, out, in, k, k) weight)."""
    with torch.no_grad():
        for tensor in (*net.parameters(), *net.buffers()):
            if tensor.dim() == 4:
                tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)


def set_norm_kernel(network: nn.Module, kernel: str) -> None:
    """Make every instance norm of ``network`` (AdaIN's too) run as ``kernel`` (see :class:`KernelChoice`)."""
    for module in network.modules():
        if isinstance(module, MeasuredNorm):
            module.kernel = kernel


def fuse_norm_activations(network: nn.Module, fused: bool = True) -> int:
    """Let each instance norm of ``network`` (AdaIN's too) that a ReLU or LeakyReLU directly
    follows apply that activation itself (:attr:`~gan_style.nn.layers.MeasuredNorm.activation_slope`;
    the fused C kernel then saves a pass over the map forward and one backward, and the activation's
    saved output), the activation's place kept by a :class:`~gan_style.nn.layers.FusedActivation`;
    ``fused=False`` puts the activations back. The same function either way: the reference's
    activations are in place, so even the norm's own output ends activated. Pairs are consecutive
    children of a Sequential and those a module names in ``NORM_THEN_ACTIVATION`` (MUNIT's
    Conv2dBlock). Returns how many pairs changed."""
    changed = 0
    for module in list(network.modules()):
        names = list(module._modules) if isinstance(module, nn.Sequential) else []
        for norm_name, activation_name in [*zip(names, names[1:]), *getattr(module, "NORM_THEN_ACTIVATION", ())]:
            norm, activation = getattr(module, norm_name), getattr(module, activation_name)
            if not isinstance(norm, MeasuredNorm):
                continue
            slope = activation_slope(activation)
            if fused and slope is not None and norm.activation_slope is None:
                norm.activation_slope = slope
                setattr(module, activation_name, FusedActivation(slope))
                changed += 1
            elif not fused and isinstance(activation, FusedActivation) and norm.activation_slope == activation.slope:
                norm.activation_slope = None
                setattr(module, activation_name, activation.activation())
                changed += 1
    return changed


def set_conv_kernel(network: nn.Module, kernel: str, weight_gradient: str | None = None, narrow: str | None = None) -> None:
    """Make every convolution layer of ``network`` that can run by Winograd
    (:class:`~gan_style.nn.layers.WinogradCapable`) run as ``kernel``
    ("direct" or "winograd", see :class:`KernelChoice`), its strided forms' weight gradients
    as ``weight_gradient`` and its narrow-sided forms as ``narrow`` ("direct" or "measured"; None: unchanged)."""
    for module in network.modules():
        if isinstance(module, WinogradCapable):
            module.kernel = kernel
            if weight_gradient is not None:
                module.weight_gradient = weight_gradient
            if narrow is not None:
                module.narrow = narrow
