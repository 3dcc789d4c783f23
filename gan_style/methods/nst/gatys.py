"""Gatys, Ecker and Bethge, "Image Style Transfer Using Convolutional Neural Networks", CVPR 2016.

The output image is found by optimising its pixels (Sec. 2.3) so that

    L_total(p, a, x) = alpha * L_content(p, x) + beta * L_style(a, x)          (Eq. 7)

is small, where ``p`` is the content photo, ``a`` the artwork and ``x`` the image being generated:

* ``L_content`` (Eq. 1) compares VGG-19 activations at relu4_2 (``conv4_2`` in the paper's
  naming, taken after its ReLU as in neural-style);
* ``L_style`` (Eqs. 3-5) compares Gram matrices of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1,
  each layer weighted equally;
* a total-variation term (neural-style's ``-tv_weight``; Mahendran and Vedaldi 2015) keeps the
  image smooth.

Defaults follow J. Johnson's neural-style (the reference most users compare against): content
weight 5, style weight 100, TV weight 1e-3, L-BFGS for 1000 iterations, 512 px on the longest
side, initialisation from (almost) flat noise. The weights apply per layer, and the losses are
normalised as in neural-style (see :mod:`gan_style.losses.perceptual`), with the TV term on
0-255 pixel values. The paper's alpha / beta ratios (1e-3, 1e-4) assume its own normalisation;
neural-style's weights assume the Caffe VGG-19, whose activations are larger than those of
torchvision's weights, so with the torchvision file the style may need a larger weight.

Extensions (all in neural-style):

* several style images blended with weights: the target Gram matrix of each layer is the
  weighted mean of the styles' Gram matrices;
* style scale: style images are resized to ``style_scale`` times the output size, which sets the
  size of the brush strokes;
* original colours, as luminance-only transfer (Gatys, Bethge, Hertzmann and Shechtman,
  "Preserving Color in Neural Artistic Style Transfer", arXiv:1606.05897, Sec. 3): the
  optimisation runs on the luminance channel Y of YIQ, the style's luminance matched to the
  content's mean and std first; the result's Y is combined with the content's I and Q;
* coarse-to-fine (Gatys et al., "Controlling Perceptual Factors in Neural Style Transfer",
  CVPR 2017, Sec. 5): solve at ``size / 2^(K-1)``, upsample, use it as the initialisation at
  twice the size, ..., up to ``size``. High resolutions then start from a result that already
  has the large-scale structure of the style.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from gan_style.losses.perceptual import content_loss, gram_matrix, style_loss, total_variation_loss
from gan_style.nn.vgg import IMAGENET_MEAN, VGG19Features

__all__ = [
    "GatysConfig",
    "GatysObjective",
    "GatysResult",
    "luminance_transfer_inputs",
    "resize_longest_side",
    "rgb_to_yiq",
    "stylize_gatys",
    "yiq_to_rgb",
]


@dataclass
class GatysConfig:
    """Options of :func:`stylize_gatys` (the ``gan-style stylize --method gatys`` flags)."""

    #: longest side of the output in pixels (neural-style's ``-image_size``)
    size: int = 512
    #: optimiser iterations, at each scale of the coarse-to-fine mode
    iterations: int = 1000
    content_layers: tuple[str, ...] = ("relu4_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    content_weight: float = 5.0
    style_weight: float = 100.0
    tv_weight: float = 1e-3
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    #: None: 1 for L-BFGS, 10/255 for Adam (neural-style's 1e1 on 0-255 pixels)
    learning_rate: float | None = None
    #: L-BFGS memory (neural-style's default of 100 corrections)
    lbfgs_history: int = 100
    #: "strong_wolfe" (default) or "none" (neural-style, which takes the step the L-BFGS update
    #: proposes as it is). Without a line search the first step, of L1 norm 1, is too small to
    #: measure curvature when the loss is large and L-BFGS then jumps with step 1 along the raw
    #: gradient; the line search makes it independent of the loss scale, at the cost of extra
    #: evaluations, mostly in the first iterations (the 128 px test: 37 for 20 iterations).
    lbfgs_line_search: Literal["strong_wolfe", "none"] = "strong_wolfe"
    #: "noise": ImageNet's mean colour plus Gaussian noise of std ``noise_std`` (neural-style's
    #: ``-init random``: 0.001 on the 0-255 scale); "content": the content image
    init: Literal["noise", "content"] = "noise"
    noise_std: float = 0.001 / 255.0
    #: style images are resized to a longest side of ``style_scale * size``
    style_scale: float = 1.0
    #: one weight per style image (normalised to sum 1); None: equal weights
    style_blend_weights: tuple[float, ...] | None = None
    #: luminance-only transfer (keeps the content's colours)
    original_colors: bool = False
    #: coarse-to-fine levels: 1 solves at ``size`` only; K solves at size/2^(K-1), ..., size
    num_scales: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in ("lbfgs", "adam"):
            raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {self.optimizer!r}")
        if self.lbfgs_line_search not in ("strong_wolfe", "none"):
            raise ValueError(f"lbfgs_line_search must be 'strong_wolfe' or 'none', got {self.lbfgs_line_search!r}")
        if self.init not in ("noise", "content"):
            raise ValueError(f"init must be 'noise' or 'content', got {self.init!r}")
        if self.size < 16 or self.iterations < 0 or self.num_scales < 1 or self.style_scale <= 0:
            raise ValueError(
                f"need size >= 16, iterations >= 0, num_scales >= 1 and style_scale > 0; got size "
                f"{self.size}, iterations {self.iterations}, num_scales {self.num_scales}, style_scale {self.style_scale}"
            )
        if not self.content_layers and not self.style_layers:
            raise ValueError("need at least one content or style layer")

    @property
    def scale_sizes(self) -> list[int]:
        """The longest side at each level of the coarse-to-fine mode, coarsest first."""
        return [max(16, round(self.size / 2 ** (self.num_scales - 1 - k))) for k in range(self.num_scales)]


@dataclass
class GatysResult:
    #: (1, 3, H, W), RGB in [0, 1]
    image: Tensor
    #: one entry per loss evaluation: scale, size, iteration (0: the initial image; L-BFGS may
    #: evaluate an iteration more than once in its line search) and the weighted loss terms; the
    #: last entry of each scale (``final`` = 1) is the image that scale returns
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def resize_longest_side(image: Tensor, size: int) -> Tensor:
    """Resize (B, C, H, W) so that max(H, W) == size, keeping the aspect ratio (bilinear,
    antialiased when shrinking)."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    if target == (height, width):
        return image
    return F.interpolate(image, size=target, mode="bilinear", align_corners=False, antialias=scale < 1)


# YIQ (NTSC) as in Gatys et al. 2016b, Sec. 3.
_RGB_TO_YIQ = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)


def rgb_to_yiq(image: Tensor) -> Tensor:
    matrix = _RGB_TO_YIQ.to(image)
    return torch.einsum("ij,bjhw->bihw", matrix, image)


def yiq_to_rgb(image: Tensor) -> Tensor:
    matrix = torch.linalg.inv(_RGB_TO_YIQ.double()).to(image)
    return torch.einsum("ij,bjhw->bihw", matrix, image)


def luminance_transfer_inputs(content: Tensor, styles: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Gatys et al. 2016b, Sec. 3: the luminance Y of the content, and each style's luminance
    with its mean and std matched to the content's, ``L_s' = sigma_c / sigma_s (L_s - mu_s) + mu_c``.
    All (B, 1, H, W)."""
    content_y = rgb_to_yiq(content)[:, :1]
    mu_c, sigma_c = content_y.mean(), content_y.std()
    matched = []
    for style in styles:
        style_y = rgb_to_yiq(style)[:, :1]
        mu_s, sigma_s = style_y.mean(), style_y.std().clamp_min(1e-8)
        matched.append((style_y - mu_s) * (sigma_c / sigma_s) + mu_c)
    return content_y, matched


# ---------------------------------------------------------------------------------------------
# The objective (Eq. 7)
# ---------------------------------------------------------------------------------------------


class GatysObjective:
    """The loss of Eq. 7 at one image size, with the content features and blended Gram matrices of
    the targets computed once. Calling it on an image gives its weighted terms and their sum."""

    def __init__(
        self,
        vgg: VGG19Features,
        content: Tensor,
        styles: Sequence[Tensor],
        blend_weights: Sequence[float],
        config: GatysConfig,
    ) -> None:
        self.vgg = vgg
        self.config = config
        self.layers = tuple(dict.fromkeys((*config.content_layers, *config.style_layers)))
        with torch.no_grad():
            content_features = vgg(_three_channels(content), config.content_layers) if config.content_layers else {}
            self.content_targets = {name: content_features[name] for name in config.content_layers}
            # Eq. 5 over several styles: the target of each layer is the weighted mean of their Grams.
            self.style_targets: dict[str, Tensor] = {}
            for style, weight in zip(styles, blend_weights):
                features = vgg(_three_channels(style), config.style_layers) if config.style_layers else {}
                for name in config.style_layers:
                    gram = gram_matrix(features[name]) * weight
                    self.style_targets[name] = self.style_targets[name] + gram if name in self.style_targets else gram

    def __call__(self, image: Tensor) -> dict[str, Tensor]:
        config = self.config
        features = self.vgg(_three_channels(image), self.layers)
        zero = image.new_zeros(())
        content = sum((content_loss(features[n], self.content_targets[n]) for n in config.content_layers), zero)
        style = sum((style_loss(features[n], self.style_targets[n]) for n in config.style_layers), zero)
        # neural-style's TVLoss is the gradient of tv_weight / 2 * sum of squared differences of
        # the 0-255 image.
        tv = total_variation_loss(image * 255.0) * 0.5 if config.tv_weight > 0 else zero
        terms = {
            "content": config.content_weight * content,
            "style": config.style_weight * style,
            "tv": config.tv_weight * tv,
        }
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms


def _three_channels(image: Tensor) -> Tensor:
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image


# ---------------------------------------------------------------------------------------------
# The optimisation (Sec. 2.3)
# ---------------------------------------------------------------------------------------------


def _initial_image(content: Tensor, config: GatysConfig, generator: torch.Generator) -> Tensor:
    if config.init == "content":
        return content.clone()
    channels = content.shape[1]
    mean = torch.tensor(IMAGENET_MEAN, dtype=content.dtype)
    if channels == 1:
        mean = rgb_to_yiq(mean.view(1, 3, 1, 1))[:, :1].flatten()
    noise = torch.randn(content.shape, generator=generator, dtype=content.dtype) * config.noise_std
    return (mean.view(1, channels, 1, 1) + noise).to(content.device)


def normalised_blend(weights: Sequence[float] | None, count: int) -> list[float]:
    """Blend weights of ``count`` style images, summing to one (equal when ``weights`` is None);
    shared by Gatys' Gram-matrix blend and AdaIN's feature interpolation."""
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} style blend weights for {count} style images")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"style blend weights must be >= 0 with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def stylize_gatys(
    vgg: VGG19Features,
    content: Tensor,
    styles: Sequence[Tensor],
    config: GatysConfig | None = None,
    progress: bool = True,
    on_iteration: Callable[[dict[str, float], Tensor], None] | None = None,
) -> GatysResult:
    """Render ``content`` (1, 3, H, W) in the style of ``styles`` (each (1, 3, h, w)), RGB in
    [0, 1] at any resolution; they are resized here. ``vgg`` must take inputs in [0, 1].

    Returns the image (longest side ``config.size``) and the loss history. ``progress`` shows a
    progress bar with the current loss; ``on_iteration(record, image)`` is called after each
    iteration.
    """
    config = config or GatysConfig()
    if vgg.input_range != (0.0, 1.0):
        raise ValueError(f"stylize_gatys needs a VGG taking inputs in [0, 1], got input_range {vgg.input_range}")
    if content.dim() != 4 or content.shape[:2] != (1, 3):
        raise ValueError(f"content must be (1, 3, H, W), got {tuple(content.shape)}")
    if not styles:
        raise ValueError("need at least one style image")
    blend = normalised_blend(config.style_blend_weights, len(styles))
    device = next(vgg.parameters()).device
    content = content.to(device)
    styles = [s.to(device) for s in styles]
    if config.original_colors:
        work_content, work_styles = luminance_transfer_inputs(content, styles)
    else:
        work_content, work_styles = content, list(styles)

    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    image: Tensor | None = None
    start = time.perf_counter()
    sizes = config.scale_sizes
    bar = tqdm(total=config.iterations * len(sizes), desc="gatys", disable=not progress, dynamic_ncols=True)
    with bar:
        for scale_index, size in enumerate(sizes):
            scaled_content = resize_longest_side(work_content, size)
            style_size = max(16, math.ceil(size * config.style_scale))
            scaled_styles = [resize_longest_side(s, style_size) for s in work_styles]
            objective = GatysObjective(vgg, scaled_content, scaled_styles, blend, config)
            if image is None:
                init = _initial_image(scaled_content, config, generator)
            else:  # coarse-to-fine: the upsampled result of the previous level
                init = F.interpolate(image, size=scaled_content.shape[-2:], mode="bilinear", align_corners=False)
            image = _optimise(objective, init, config, scale_index, size, history, bar, on_iteration)
    assert image is not None
    if config.original_colors:
        # Combine the stylised luminance with the content's chrominance (I, Q) at the output size.
        chroma = rgb_to_yiq(resize_longest_side(content, sizes[-1]))[:, 1:]
        image = yiq_to_rgb(torch.cat([image, chroma], dim=1))
    return GatysResult(image=image.clamp(0, 1), history=history, seconds=time.perf_counter() - start)


def _optimise(
    objective: GatysObjective,
    init: Tensor,
    config: GatysConfig,
    scale_index: int,
    size: int,
    history: list[dict[str, float]],
    bar: tqdm,
    on_iteration: Callable[[dict[str, float], Tensor], None] | None,
) -> Tensor:
    image = init.detach().clone().requires_grad_(True)
    base = {"scale": float(scale_index), "size": float(size)}
    done = 0  # iterations shown on the progress bar
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam([image], lr=config.learning_rate if config.learning_rate is not None else 10.0 / 255.0)
        for iteration in range(config.iterations):
            optimizer.zero_grad(set_to_none=False)
            terms = objective(image)
            terms["total"].backward()
            # The losses of the image after ``iteration`` updates.
            _report(history, bar, on_iteration, image, terms, {**base, "iteration": float(iteration)}, int(iteration > 0))
            optimizer.step()
        done = max(0, config.iterations - 1)
    elif config.iterations > 0:
        # L-BFGS runs all its iterations inside one step() call (as neural-style's optim.lbfgs);
        # the closure reports progress. Tolerances -1: never stop before ``iterations``.
        lbfgs = torch.optim.LBFGS(
            [image],
            lr=config.learning_rate if config.learning_rate is not None else 1.0,
            max_iter=config.iterations,
            max_eval=4 * config.iterations + 1,
            history_size=config.lbfgs_history,
            tolerance_grad=-1,
            tolerance_change=-1,
            line_search_fn=None if config.lbfgs_line_search == "none" else config.lbfgs_line_search,
        )

        def closure() -> Tensor:
            nonlocal done
            lbfgs.zero_grad(set_to_none=False)
            terms = objective(image)
            terms["total"].backward()
            # The iteration this evaluation belongs to (0: the initial image); a line search
            # evaluates the next iterate, so it is counted when its step is being searched.
            iteration = int(lbfgs.state[image].get("n_iter", 0))
            advance = max(0, min(iteration, config.iterations) - done)
            done += advance
            _report(history, bar, on_iteration, image, terms, {**base, "iteration": float(iteration)}, advance)
            return terms["total"]

        lbfgs.step(closure)
    # The losses of the image returned (L-BFGS does not evaluate its last step).
    with torch.no_grad():
        terms = objective(image)
    final = {**base, "iteration": float(config.iterations), "final": 1.0}
    _report(history, bar, on_iteration, image, terms, final, max(0, config.iterations - done))
    return image.detach()


def _report(
    history: list[dict[str, float]],
    bar: tqdm,
    on_iteration: Callable[[dict[str, float], Tensor], None] | None,
    image: Tensor,
    terms: dict[str, Tensor],
    record: dict[str, float],
    advance: int,
) -> None:
    record.update({name: float(value.detach()) for name, value in terms.items()})
    history.append(record)
    bar.update(advance)
    bar.set_postfix_str(f"{int(record['size'])}px loss {record['total']:.4g}", refresh=False)
    if on_iteration is not None:
        on_iteration(record, image.detach())
