"""Metrics of translated images: FID, KID, SWD, SSIM, content/style losses, LPIPS diversity, speed.

:func:`evaluate_images` is the one entry point; each metric is also a function of its own:

* ``fid``  - Fréchet Inception Distance (Heusel et al., NeurIPS 2017), through torchmetrics;
* ``kid``  - Kernel Inception Distance (Bińkowski et al., ICLR 2018), through torchmetrics, with
  the standard deviation over its random subsets (``kid_std``);
* ``swd``  - multi-scale sliced Wasserstein distance of Laplacian-pyramid patches (Karras et al.,
  ICLR 2018, Sec. 5 and appendix D); needs no pretrained network;
* ``ssim`` - luminance SSIM (Wang et al., IEEE TIP 2004) of each output to its source photo: how
  much of the photo's structure the translation keeps; needs no pretrained network;
* ``content`` / ``style`` - Gatys et al. (CVPR 2016) content loss to the source and Gram style
  loss to the style target, on VGG-19 (``--vgg-weights``);
* ``lpips_diversity`` - mean pairwise LPIPS (Zhang et al., CVPR 2018) between outputs of the same
  input under random styles (multimodal methods);
* ``speed`` - images per second of the model (:func:`measure_speed`; it needs the model).

Every image set is brought to ``image_size`` x ``image_size`` (shorter side resized, centre crop)
and held as uint8, the form the Inception network takes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from gan_style.errors import UserError

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "METRIC_KEYS",
    "as_uint8_batch",
    "evaluate_images",
    "frechet_distance",
    "image_features",
    "kernel_distance",
    "laplacian_pyramid",
    "luminance_ssim",
    "measure_speed",
    "sliced_wasserstein",
    "sliced_wasserstein_pyramid",
]

log = logging.getLogger(__name__)

#: The metrics ``--metrics`` accepts, and the keys each one puts in the result.
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "fid": ("fid",),
    "kid": ("kid", "kid_std"),
    "swd": ("swd",),
    "ssim": ("ssim",),
    "content": ("content_loss",),
    "style": ("style_loss",),
    "lpips_diversity": ("lpips_diversity",),
    "speed": ("images_per_second",),
}
METRICS: tuple[str, ...] = tuple(METRIC_KEYS)
#: Result keys where a larger value is better (for every other key, smaller is better).
HIGHER_IS_BETTER = frozenset({"ssim", "lpips_diversity", "images_per_second"})
#: Below this many images per set the 2048 x 2048 covariance of FID is rank-deficient and the
#: estimate strongly biased (Bińkowski et al. 2018, Sec. 4; Chong and Forsyth, CVPR 2020).
FID_MIN_IMAGES = 2048

ImageItem = Image.Image | str | os.PathLike[str] | Tensor


# ---------------------------------------------------------------------------------------------
# Image sets
# ---------------------------------------------------------------------------------------------


def _items(images: Any, what: str) -> list[Any]:
    """A folder, a (N, 3, H, W) tensor in [-1, 1], or a list of PIL images / paths / tensors."""
    from gan_style.data.images import find_images

    if isinstance(images, (str, os.PathLike)):
        folder = Path(images).expanduser()
        if not folder.is_dir():
            raise UserError(f"{what} {folder}: {'not a folder' if folder.exists() else 'does not exist'}; give a folder of images")
        return list(find_images(folder))
    if isinstance(images, Tensor):
        if images.ndim != 4:
            raise UserError(f"{what}: a tensor of images must be (N, C, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        return list(images)
    return list(images)


def _fit(image: Tensor, size: int) -> Tensor:
    """(3, H, W) float in [0, 1] -> (3, size, size): shorter side resized to ``size``, centre crop."""
    height, width = image.shape[-2:]
    if (height, width) != (size, size):
        scale = size / min(height, width)
        new = (max(size, round(height * scale)), max(size, round(width * scale)))
        image = F.interpolate(image[None], size=new, mode="bicubic", antialias=True, align_corners=False)[0]
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        image = image[:, top : top + size, left : left + size]
    return image


def as_uint8_batch(images: Any, size: int = 256, what: str = "images") -> Tensor:
    """An image set as a uint8 tensor (N, 3, size, size). ``images``: a folder, a list of PIL
    images, paths or (C, H, W) tensors in [-1, 1], or a (N, C, H, W) tensor in [-1, 1]."""
    from gan_style.data.images import load_rgb, to_rgb

    out = []
    for item in _items(images, what):
        if isinstance(item, Tensor):
            image = ((item.detach().float().cpu() + 1) / 2).clamp(0, 1)
            image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        else:
            pil = to_rgb(item) if isinstance(item, Image.Image) else load_rgb(item)
            image = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).float() / 255
        out.append((_fit(image, size).clamp(0, 1) * 255).round().to(torch.uint8))
    if not out:
        raise UserError(f"{what}: no images")
    return torch.stack(out)


def _unit(batch: Tensor) -> Tensor:
    return batch.float() / 255


# ---------------------------------------------------------------------------------------------
# FID and KID on a feature network
# ---------------------------------------------------------------------------------------------


class _GivenFeatures(nn.Module):
    """The identity, as torchmetrics' "feature network" when the features are computed already
    (the real set's come from the cache)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, features: Tensor) -> Tensor:
        return features


@torch.no_grad()
def image_features(network: nn.Module, images: Tensor, batch_size: int = 32, device: torch.device | str = "cpu") -> Tensor:
    """``network``'s features (N, D) of uint8 images (N, 3, H, W), in float64 on the CPU."""
    chunks = [network(images[i : i + batch_size].to(device)).reshape(min(batch_size, len(images) - i), -1).double().cpu()
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def _cached_features(network: nn.Module, images: Tensor, identity: str, cache_dir: Path | None, device: torch.device | str) -> Tensor:
    """The features of a (real) set, cached under a hash of the set's pixels and the network."""
    from gan_style.engine.checkpoint import atomic_torch_save, read_weights
    from gan_style.errors import CheckpointError

    if cache_dir is None:
        return image_features(network, images, device=device)
    digest = hashlib.sha256(f"{identity}|{tuple(images.shape)}|".encode())
    digest.update(images.contiguous().numpy().tobytes())
    path = Path(cache_dir) / f"features-{digest.hexdigest()[:32]}.pt"
    if path.is_file():
        try:
            cached = read_weights(path)
            if isinstance(cached, Tensor) and cached.shape[0] == images.shape[0]:
                log.debug("real-set features from the cache %s", path)
                return cached
        except CheckpointError as error:
            log.warning("ignoring a damaged feature cache file (%s)", error)
    features = image_features(network, images, device=device)
    try:
        atomic_torch_save(features, path)
    except OSError as error:  # a read-only cache only costs time
        log.warning("could not cache the real-set features in %s (%s)", path.parent, error.strerror or error)
    return features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID (Heusel et al. 2017, Eq. 6): ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))`` of
    Gaussians fitted to two feature sets (N, D), computed by torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise UserError(f"FID needs at least 2 images in each set, got {fake.shape[0]} fake and {real.shape[0]} real")
    metric = FrechetInceptionDistance(feature=_GivenFeatures(real.shape[1])).double()
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return max(0.0, float(metric.compute()))  # the estimate can fall a hair below 0 for equal sets


def kernel_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018, Eq. 4 with the cubic kernel ``k(x, y) = (x.y / D + 1)^3``): the
    unbiased squared MMD, averaged over ``subsets`` random subsets of ``min(subset_size, N)``
    images of each set; returns (mean, standard deviation over the subsets), by torchmetrics."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, real.shape[0], fake.shape[0])
    if size < 2:
        raise UserError(f"KID needs at least 2 images in each set, got {fake.shape[0]} fake and {real.shape[0]} real")
    with warnings.catch_warnings():  # "will save all extracted features": that is the point here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_GivenFeatures(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the subsets: the same figures for the same sets
        mean, std = metric.compute()
    return float(mean), float(std)


# ---------------------------------------------------------------------------------------------
# Sliced Wasserstein distance (Karras et al., ICLR 2018, Sec. 5 and appendix D)
# ---------------------------------------------------------------------------------------------

# The 5-tap binomial filter of the Gaussian pyramid (Burt and Adelson, 1983).
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _pad_of(dim: int, width: int) -> list[int]:
    """F.pad's argument that pads dimension ``dim`` (2 or 3) of a 4-D tensor by ``width`` each side."""
    pad = [0, 0, 0, 0]
    pad[2 * (3 - dim)] = pad[2 * (3 - dim) + 1] = width
    return pad


def _filter_axis(images: Tensor, dim: int, taps: Sequence[float]) -> Tensor:
    """``sum_k taps[k] x[i + k - r]`` along ``dim`` (r = len(taps) // 2), reflecting at the borders."""
    radius = len(taps) // 2
    size = images.shape[dim]
    padded = F.pad(images, _pad_of(dim, radius), mode="reflect")
    return sum(tap * padded.narrow(dim, k, size) for k, tap in enumerate(taps))


def _blur(images: Tensor) -> Tensor:
    """The separable 5 x 5 binomial filter, reflecting at the borders."""
    taps = _BINOMIAL.tolist()
    return _filter_axis(_filter_axis(images, 3, taps), 2, taps)


def _down(images: Tensor) -> Tensor:
    """Burt-Adelson reduction: the filter, then every second sample."""
    return _blur(images)[:, :, ::2, ::2]


def _up_axis(images: Tensor, dim: int, size: int) -> Tensor:
    """Burt-Adelson expansion along ``dim`` (zeros between the samples, the filter times 2), by its
    two phases: even outputs ``(x[i-1] + 6 x[i] + x[i+1]) / 8``, odd ``(x[i] + x[i+1]) / 2``."""
    padded = F.pad(images, _pad_of(dim, 1), mode="replicate")
    n = images.shape[dim]
    previous, current, following = (padded.narrow(dim, k, n) for k in range(3))
    even = (previous + 6 * current + following) / 8
    odd = (current + following) / 2
    both = torch.stack((even, odd), dim=dim + 1).flatten(dim, dim + 1)
    return both.narrow(dim, 0, size)


def _up(images: Tensor, size: tuple[int, int]) -> Tensor:
    return _up_axis(_up_axis(images, 2, size[0]), 3, size[1])


def laplacian_pyramid(images: Tensor, min_size: int = 16) -> list[Tensor]:
    """Laplacian pyramid (Burt and Adelson 1983), finest level first: ``L_k = G_k - expand(G_{k+1})``
    down to ``min_size`` px, the last level being the Gaussian level itself (Karras et al.,
    appendix D: from the full resolution down to 16 x 16)."""
    levels, current = [], images
    while min(current.shape[-2:]) // 2 >= min_size:
        smaller = _down(current)
        levels.append(current - _up(smaller, current.shape[-2:]))
        current = smaller
    levels.append(current)
    return levels


def _descriptors(level: Tensor, per_image: int, generator: torch.Generator, patch: int = 7) -> Tensor:
    """``per_image`` random ``patch`` x ``patch`` neighbourhoods of each image: (N * per_image, C, patch^2)."""
    count, channels, height, width = level.shape
    rows = torch.randint(0, height - patch + 1, (count, per_image), generator=generator)
    cols = torch.randint(0, width - patch + 1, (count, per_image), generator=generator)
    offset = torch.arange(patch)
    index = torch.arange(count)[:, None, None, None]
    r = (rows[:, :, None] + offset)[:, :, :, None]
    c = (cols[:, :, None] + offset)[:, :, None, :]
    patches = level[index, :, r, c]  # (N, P, patch, patch, C)
    return patches.permute(0, 1, 4, 2, 3).reshape(count * per_image, channels, patch * patch)


def _normalise(descriptors: Tensor) -> Tensor:
    """Appendix D: each colour channel of a set's descriptors to zero mean and unit std; flattened."""
    mean = descriptors.mean(dim=(0, 2), keepdim=True)
    std = descriptors.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return ((descriptors - mean) / std).flatten(1)


def sliced_wasserstein(a: Tensor, b: Tensor, directions: int = 512, generator: torch.Generator | None = None, chunk: int = 128) -> float:
    """Sliced Wasserstein-1 distance of two point sets (n, d) and (m, d) (Rabin et al. 2011; Karras
    et al., appendix D): the mean over random unit directions of the 1-D Wasserstein distance of
    the projections, ``int_0^1 |F_a^-1(q) - F_b^-1(q)| dq``, by the midpoint rule on max(n, m)
    quantiles (exact when n = m, where it is the mean |difference| of the sorted projections)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n, m = a.shape[0], b.shape[0]
    k = max(n, m)
    q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    ia, ib = (q * n).long().clamp_max(n - 1), (q * m).long().clamp_max(m - 1)
    total, done = 0.0, 0
    while done < directions:
        step = min(chunk, directions - done)
        dirs = torch.randn(a.shape[1], step, generator=generator, dtype=torch.float64)
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.dtype)
        # (directions, points), sorted along the contiguous last dimension
        pa = (dirs.T @ a.T).sort(dim=1).values[:, ia]
        pb = (dirs.T @ b.T).sort(dim=1).values[:, ib]
        total += float((pa - pb).abs().mean(dim=1).sum())
        done += step
    return total / directions


def sliced_wasserstein_pyramid(fake: Tensor, real: Tensor, patches_per_image: int = 128, directions: int = 512,
                               min_size: int = 16, seed: int = 0) -> list[float]:
    """Karras et al. 2018, appendix D: the sliced Wasserstein distance between the two sets' 7 x 7
    neighbourhoods (``patches_per_image`` per image and level, each set's channels normalised) at
    each level of the Laplacian pyramid, finest first. Images: uint8 or float, (N, 3, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    pyramids = [laplacian_pyramid(_unit(x) if x.dtype == torch.uint8 else x.float(), min_size) for x in (fake, real)]
    distances = []
    for fake_level, real_level in zip(*pyramids):
        a = _normalise(_descriptors(fake_level, patches_per_image, generator))
        b = _normalise(_descriptors(real_level, patches_per_image, generator))
        distances.append(sliced_wasserstein(a, b, directions, generator))
    return distances


# ---------------------------------------------------------------------------------------------
# SSIM, content and style
# ---------------------------------------------------------------------------------------------


def _luma(images: Tensor) -> Tensor:
    """ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of (N, 3, H, W) in [0, 1]."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights[:, None, None]).sum(dim=1, keepdim=True)


def luminance_ssim(outputs: Tensor, sources: Tensor) -> Tensor:
    """SSIM (Wang et al. 2004, Eq. 13; 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03)
    of the luma of each output to that of its source, one value per pair, by torchmetrics.
    Colour is left out on purpose: a painting of a photo should keep its structure, not its colours."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a = _luma(_unit(outputs) if outputs.dtype == torch.uint8 else outputs.float())
    b = _luma(_unit(sources) if sources.dtype == torch.uint8 else sources.float())
    # In small chunks: torchmetrics filters the five SSIM maps of the whole batch at once.
    return torch.cat([structural_similarity_index_measure(a[i : i + 4], b[i : i + 4], data_range=1.0, reduction="none")
                      for i in range(0, len(a), 4)]).float()


CONTENT_LAYER = "relu4_2"  # Gatys et al., Sec. 2: the content representation
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")  # Gatys et al., Sec. 3, w_l = 1/5


@torch.no_grad()
def content_style_losses(vgg: nn.Module, outputs: Tensor, sources: Tensor | None, style: Tensor | None,
                         batch_size: int = 8, device: torch.device | str = "cpu") -> dict[str, float]:
    """Gatys et al. (CVPR 2016): the content loss (Eq. 1, as a mean square, at relu4_2) of each
    output to its source, and the style loss (Eq. 5 with w_l = 1/5: the mean over relu1_1 ...
    relu5_1 of the Gram-matrix losses of Eq. 4) of each output to the style target, whose Gram
    matrices are the mean over the images of ``style``; uint8 images; means over the outputs."""
    from gan_style.losses.perceptual import content_loss, gram_matrix, style_loss

    def features(batch: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        return vgg(_unit(batch).to(device) * 2 - 1, layers)

    result: dict[str, float] = {}
    target_grams: dict[str, Tensor] = {}
    if style is not None:
        sums: dict[str, Tensor] = {}
        for i in range(0, len(style), batch_size):
            for layer, value in features(style[i : i + batch_size], STYLE_LAYERS).items():
                sums[layer] = sums.get(layer, 0) + gram_matrix(value).sum(dim=0, keepdim=True)
        target_grams = {layer: total / len(style) for layer, total in sums.items()}
    content_total = style_total = 0.0
    for i in range(0, len(outputs), batch_size):
        batch = outputs[i : i + batch_size]
        layers = ([CONTENT_LAYER] if sources is not None else []) + (list(STYLE_LAYERS) if style is not None else [])
        out = features(batch, layers)
        if sources is not None:
            target = features(sources[i : i + batch_size], [CONTENT_LAYER])[CONTENT_LAYER]
            content_total += float(content_loss(out[CONTENT_LAYER], target)) * len(batch)
        if style is not None:
            per_layer = [style_loss(out[layer], target_grams[layer]) for layer in STYLE_LAYERS]
            style_total += float(torch.stack(per_layer).mean()) * len(batch)
    if sources is not None:
        result["content_loss"] = content_total / len(outputs)
    if style is not None:
        result["style_loss"] = style_total / len(outputs)
    return result


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------


def measure_speed(model: Any, images: Sequence[Image.Image], direction: str = "AtoB", warmup: int = 2, **inputs: Any) -> float:
    """Images per second that ``model`` (``gan_style.load``) translates ``images`` at their size,
    one at a time, excluding PIL conversion and ``warmup`` untimed first calls (kernel selection,
    caches); CUDA work is waited for before the clock stops."""
    from gan_style.data.images import pil_to_tensor, to_rgb

    if not images:
        raise UserError("speed needs at least one image (--input)")
    tensors = [pil_to_tensor(to_rgb(image))[None].to(model.device) for image in images]

    def sync() -> None:
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)

    for tensor in (tensors * warmup)[:warmup]:
        model.translate(tensor, direction, **inputs)
    sync()
    start = time.perf_counter()
    for tensor in tensors:
        model.translate(tensor, direction, **inputs)
    sync()
    return len(tensors) / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# All of them
# ---------------------------------------------------------------------------------------------


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The metric names, checked; unknown ones raise UserError listing the known ones."""
    names = [m.strip() for m in metrics if m.strip()]
    unknown = [m for m in names if m not in METRIC_KEYS]
    if unknown:
        raise UserError(f"--metrics: unknown metric(s) {', '.join(unknown)}; choose from {','.join(METRICS)}")
    if not names:
        raise UserError(f"--metrics: no metric given; choose from {','.join(METRICS)}")
    return list(dict.fromkeys(names))


def evaluate_images(
    fakes: Any,
    real: Any,
    sources: Any | None = None,
    metrics: Sequence[str] = ("swd", "ssim"),
    *,
    inception_weights: str | os.PathLike[str] | None = None,
    vgg_weights: str | os.PathLike[str] | None = None,
    lpips_weights: str | os.PathLike[str] | None = None,
    lpips_vgg16_weights: str | os.PathLike[str] | None = None,
    style_image: Any | None = None,
    diverse_outputs: Sequence[Sequence[Any]] | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike[str] | None = None,
    image_size: int = 256,
    feature_network: nn.Module | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """The metrics of translated images ``fakes`` against the target-domain set ``real``.

    ``fakes``, ``real`` and ``sources`` (the source photos, in the order of ``fakes``: SSIM and the
    content loss need them) are folders, lists of PIL images or paths, or (N, 3, H, W) tensors in
    [-1, 1]. ``metrics``: names of :data:`METRICS` except ``speed`` (see :func:`measure_speed`).
    The style loss compares with ``style_image`` (one image or a set) if given, else the real set.
    ``diverse_outputs``: for ``lpips_diversity``, the outputs of each input under random styles.
    ``feature_network`` replaces Inception-v3 for FID/KID (uint8 images -> (N, D) features; its
    ``identity`` attribute, if any, keys the real-set cache). Real-set features are cached in
    ``cache_dir`` (default: ``<gan_style cache>/eval_features``). Returns flat keys (see
    :data:`METRIC_KEYS`); a metric whose weights are missing raises UserError naming the option.
    """
    names = check_metrics(metrics)
    if "speed" in names:
        raise UserError("speed is measured on a model, not on images: gan_style.evaluation.measure_speed(model, images), or gan-style eval --checkpoint")
    device = torch.device(device)
    fake_u8 = as_uint8_batch(fakes, image_size, "fake images")
    needs_real = {"fid", "kid", "swd"} & set(names) or ("style" in names and style_image is None)
    real_u8 = as_uint8_batch(real, image_size, "real images (--real)") if needs_real else None
    source_u8 = None
    if {"ssim", "content"} & set(names):
        if sources is None:
            raise UserError("ssim and content compare each output with its source photo: give the photos (--input)")
        source_u8 = as_uint8_batch(sources, image_size, "source images (--input)")
        if len(source_u8) != len(fake_u8):
            raise UserError(f"--input: {len(source_u8)} source images for {len(fake_u8)} outputs; ssim and content need one source per output")
    result: dict[str, float] = {}
    if {"fid", "kid"} & set(names):
        result.update(_inception_metrics(names, fake_u8, real_u8, inception_weights, feature_network, device, cache_dir, seed))
    if "swd" in names:
        # Reported x 1e3, as Karras et al. do; the mean over the pyramid's levels.
        levels = sliced_wasserstein_pyramid(fake_u8, real_u8, seed=seed)
        result["swd"] = 1e3 * sum(levels) / len(levels)
    if "ssim" in names:
        result["ssim"] = float(luminance_ssim(fake_u8, source_u8).mean())
    if {"content", "style"} & set(names):
        from gan_style.nn.vgg import WeightsNotFoundError, load_vgg19

        try:
            vgg = load_vgg19(vgg_weights, input_range=(-1.0, 1.0), device=device)
        except WeightsNotFoundError as error:
            raise UserError("content and style need VGG-19 weights (give --vgg-weights FILE): " + " ".join(str(error).split())) from None
        style = None
        if "style" in names:
            one = isinstance(style_image, Image.Image) or _is_file(style_image)
            style = real_u8 if style_image is None else as_uint8_batch([style_image] if one else style_image, image_size, "style image (--style)")
        result.update(content_style_losses(vgg, fake_u8, source_u8 if "content" in names else None, style, device=device))
    if "lpips_diversity" in names:
        if not diverse_outputs:
            raise UserError("lpips_diversity needs several outputs per input under random styles: a multimodal model (MUNIT) and --num-styles K >= 2")
        from gan_style.evaluation.lpips import load_lpips, mean_pairwise_distance

        lpips = load_lpips(lpips_weights, lpips_vgg16_weights, device)
        groups = [_unit(as_uint8_batch(list(group), image_size, "diverse outputs")).to(device) * 2 - 1 for group in diverse_outputs]
        result["lpips_diversity"] = mean_pairwise_distance(lpips, groups)
    return result


def _is_file(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and Path(value).expanduser().is_file()


def _inception_metrics(names: Sequence[str], fake: Tensor, real: Tensor, weights: Any, network: nn.Module | None,
                       device: torch.device, cache_dir: Any, seed: int) -> dict[str, float]:
    if network is None:
        from gan_style.evaluation.inception import load_inception

        network = load_inception(weights, device)
    else:
        network = network.to(device).eval()
    identity = getattr(network, "identity", None)
    if cache_dir is None and identity is not None:
        from gan_style.data.demo import default_cache_dir

        cache_dir = default_cache_dir() / "eval_features"
    real_features = _cached_features(network, real, identity, Path(cache_dir) if identity is not None else None, device)
    fake_features = image_features(network, fake, device=device)
    result: dict[str, float] = {}
    smallest = min(len(fake), len(real))
    if "fid" in names:
        if smallest < FID_MIN_IMAGES:
            log.warning("FID of %d fake and %d real images: with fewer than %d images per set FID is strongly biased "
                        "upwards and noisy (the reference test sets of ~50 images mislead); compare only figures of equal "
                        "set sizes, and prefer KID, which is unbiased", len(fake), len(real), FID_MIN_IMAGES)
        result["fid"] = frechet_distance(real_features, fake_features)
    if "kid" in names:
        if smallest < 1000:
            log.info("KID on subsets of %d images (fewer than the standard 1000): expect a large kid_std", smallest)
        result["kid"], result["kid_std"] = kernel_distance(real_features, fake_features, seed=seed)
    return result


def format_table(result: Mapping[str, float]) -> str:
    """The human output: one metric a line, with its direction."""
    width = max((len(key) for key in result), default=0)
    lines = []
    for key, value in result.items():
        better = "higher is better" if key in HIGHER_IS_BETTER else ("" if key == "kid_std" else "lower is better")
        lines.append(f"{key:<{width}}  {value:>12.6g}  {better}".rstrip())
    return "\n".join(lines)
