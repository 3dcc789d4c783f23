"""CUT's patch sampler and projection heads ``F`` (Park et al. 2020, section 3.2, "Multilayer,
patchwise contrastive learning"; reference ``--netF mlp_sample`` / ``sample``).

For each selected generator layer l, the feature map (B, C_l, H, W) is read as H*W patch features
(one per position, patch id = y * W + x). ``F`` picks ``num_patches`` of them (the same ids for
every image of the batch, and for the real and the translated image), passes each through a
two-layer MLP H_l: Linear(C_l, 256) -> ReLU -> Linear(256, 256), and L2-normalises the result.

The heads are built up front from the feature channel list (the reference creates them lazily on
the first batch, which breaks resuming, DDP wrapping and optimiser construction); use
``feature_channels`` to read that list off a generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from gan_style.nn.layers import init_weights

NORM_EPS = 1e-7


def l2_normalize(v: Tensor, dim: int = -1) -> Tensor:
    """v / (||v||_2 + 1e-7), as the reference (the epsilon is added to the norm, not inside it)."""
    return v / (v.norm(p=2, dim=dim, keepdim=True) + NORM_EPS)


def sample_patch_ids(
    num_positions: int, num_patches: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``num_patches`` distinct positions out of ``num_positions``, drawn without replacement from
    ``generator`` (all positions in order when ``num_patches`` is 0; all in random order when it
    is larger than ``num_positions``)."""
    if num_patches == 0:
        ids = torch.arange(num_positions)
    else:
        draw_device = generator.device if generator is not None else "cpu"
        ids = torch.randperm(num_positions, generator=generator, device=draw_device)[: min(num_patches, num_positions)]
    return ids.to(device) if device is not None else ids


class PatchSampleMLP(nn.Module):
    """Samples patch features from several layers and projects them with one MLP per layer.

    ``in_channels[k]`` is the channel count of the k-th feature map given to ``forward``. The
    heads are named ``mlp_0``, ``mlp_1``, ... as in the reference checkpoints (``latest_net_F.pth``)
    and initialised with ``init_type`` / ``init_gain`` (CUT: xavier, 0.02). With ``use_mlp=False``
    there are no parameters: patches are only sampled and normalised (the reference's ``sample``).
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (),
        out_channels: int = 256,
        use_mlp: bool = True,
        init_type: str | None = "xavier",
        init_gain: float = 0.02,
    ):
        super().__init__()
        if use_mlp and not in_channels:
            raise ValueError("the MLP heads need the channel count of every feature map (in_channels)")
        self.in_channels = tuple(in_channels)
        self.out_channels = out_channels
        self.use_mlp = use_mlp
        if use_mlp:
            for k, channels in enumerate(self.in_channels):
                head = nn.Sequential(nn.Linear(channels, out_channels), nn.ReLU(), nn.Linear(out_channels, out_channels))
                self.add_module(f"mlp_{k}", head)
            if init_type is not None:
                init_weights(self, init_type, init_gain)

    def heads(self) -> list[nn.Module]:
        return [getattr(self, f"mlp_{k}") for k in range(len(self.in_channels))] if self.use_mlp else []

    def forward(
        self,
        features: Sequence[Tensor],
        num_patches: int = 256,
        patch_ids: Sequence[Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Returns (samples, patch_ids): per feature map, the normalised projections (B, N, D) and
        the ids used (N,). Pass ``patch_ids`` back in to sample the same positions of another
        image (the translated one); otherwise they are drawn from ``generator``.
        ``num_patches=0`` takes every position, in order."""
        if self.use_mlp and len(features) != len(self.in_channels):
            raise ValueError(f"F has {len(self.in_channels)} heads, got {len(features)} feature maps")
        if patch_ids is not None and len(patch_ids) != len(features):
            raise ValueError(f"got {len(patch_ids)} patch id tensors for {len(features)} feature maps")
        heads = self.heads()
        samples: list[Tensor] = []
        used_ids: list[Tensor] = []
        for k, feature in enumerate(features):
            if self.use_mlp and feature.shape[1] != self.in_channels[k]:
                raise ValueError(f"feature map {k} has {feature.shape[1]} channels, head mlp_{k} expects {self.in_channels[k]}")
            patches = rearrange(feature, "b c h w -> b (h w) c")
            if patch_ids is not None:
                ids = patch_ids[k].to(feature.device)
            else:
                ids = sample_patch_ids(patches.shape[1], num_patches, generator, feature.device)
            picked = patches[:, ids]  # (B, N, C)
            if self.use_mlp:
                picked = heads[k](picked)
            samples.append(l2_normalize(picked))
            used_ids.append(ids)
        return samples, used_ids


@torch.no_grad()
def feature_channels(generator: nn.Module, layers: Sequence[int], in_channels: int = 3, probe_size: int = 32) -> list[int]:
    """Channel counts of ``generator.encode(x, layers)`` (any generator with CUT's ``encode``),
    read from one dry run on a small blank image in eval mode (so no batch-norm statistics move)."""
    if hasattr(generator, "feature_channels"):
        return list(generator.feature_channels(layers))
    reference = next(iter(generator.parameters()))
    probe = torch.zeros(1, in_channels, probe_size, probe_size, device=reference.device, dtype=reference.dtype)
    was_training = generator.training
    generator.eval()
    try:
        features = generator.encode(probe, list(layers))
    finally:
        generator.train(was_training)
    return [f.shape[1] for f in features]
