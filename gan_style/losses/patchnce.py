"""PatchNCE loss (Park et al., "Contrastive learning for unpaired image-to-image translation",
ECCV 2020, section 3.1-3.2).

A patch of the output is pulled towards the input patch at the same position (the positive) and
pushed away from the input's other patches (the negatives). With the query v (a projected output
patch), its positive v+ and the N negatives v-, all L2-normalised, eq. 2 of the paper is an
(N+1)-way classification with temperature tau:

    l(v, v+, v-) = -log( exp(v.v+ / tau) / (exp(v.v+ / tau) + sum_n exp(v.v-_n / tau)) )

and eq. 3 sums it over the patches s of every selected layer l:

    L_PatchNCE = E_x sum_l sum_s l(zhat_l^s, z_l^s, z_l^{S \\ s}),

where zhat = F(G(x)) are the queries and z = F(x) the keys (held fixed: no gradient flows
through the keys, as in the reference). Following the reference we average instead of summing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

#: a patch's similarity with itself is not a negative; its logit is replaced by this (exp(-10 / tau) ~ 0)
SELF_SIMILARITY_LOGIT = -10.0


def patch_nce_loss(
    query: Tensor, key: Tensor, temperature: float = 0.07, negatives_from_minibatch: bool = False
) -> Tensor:
    """Per-patch PatchNCE loss (eq. 2), shape (B, N).

    ``query`` (B, N, D): projected patches of the translated images G(x); ``key`` (B, N, D): the
    projected patches of x at the same positions (detached here). Patch i's positive is key i; its
    negatives are the other N - 1 keys of the same image, or with ``negatives_from_minibatch`` the
    other B*N - 1 keys of the whole batch (SinCUT, whose batch holds crops of one image).
    """
    batch, num_patches, _ = query.shape
    dtype = torch.promote_types(query.dtype, torch.float32)
    query, key = query.to(dtype), key.detach().to(dtype)

    positive = einsum(query, key, "b n d, b n d -> b n")
    if negatives_from_minibatch:
        query, key = rearrange(query, "b n d -> 1 (b n) d"), rearrange(key, "b n d -> 1 (b n) d")
        positive = rearrange(positive, "b n -> 1 (b n)")
    negative = einsum(query, key, "b n d, b m d -> b n m")
    is_self = torch.eye(negative.shape[-1], dtype=torch.bool, device=negative.device)
    negative = negative.masked_fill(is_self, SELF_SIMILARITY_LOGIT)

    logits = torch.cat([positive[..., None], negative], dim=-1) / temperature  # class 0 is the positive
    logits = rearrange(logits, "b n k -> (b n) k")
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, target, reduction="none")
    return loss.view(batch, num_patches)


def multilayer_patch_nce_loss(
    queries: Sequence[Tensor], keys: Sequence[Tensor], temperature: float = 0.07, negatives_from_minibatch: bool = False
) -> Tensor:
    """Eq. 3 as the reference computes it: the mean over layers of each layer's mean patch loss
    (the lambda_NCE weight is left to the caller)."""
    if len(queries) != len(keys) or not queries:
        raise ValueError(f"need one key per query layer, got {len(queries)} query and {len(keys)} key layers")
    per_layer = [patch_nce_loss(q, k, temperature, negatives_from_minibatch).mean() for q, k in zip(queries, keys)]
    return torch.stack(per_layer).mean()


class PatchNCELoss(nn.Module):
    """``patch_nce_loss`` with its two settings fixed (CUT: T = 0.07, negatives from the same image)."""

    def __init__(self, temperature: float = 0.07, negatives_from_minibatch: bool = False):
        super().__init__()
        self.temperature = temperature
        self.negatives_from_minibatch = negatives_from_minibatch

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return patch_nce_loss(query, key, self.temperature, self.negatives_from_minibatch)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, negatives_from_minibatch={self.negatives_from_minibatch}"
