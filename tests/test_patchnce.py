"""PatchNCE loss (Park et al. 2020, eq. 2-3) and CUT's patch sampler F, without golden files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gan_style.losses.patchnce import PatchNCELoss, multilayer_patch_nce_loss, patch_nce_loss
from gan_style.nn.generators import GeneratorSpec, build_generator
from gan_style.nn.patch_sampler import PatchSampleMLP, feature_channels, l2_normalize, sample_patch_ids


def unit_rows(*shape: int, seed: int = 0) -> torch.Tensor:
    return l2_normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))


def eq2_by_hand(v: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """-log(exp(v.v+/tau) / (exp(v.v+/tau) + sum_n exp(v.v-_n/tau))) plus the reference's
    self-similarity slot, whose logit is -10 (so it adds exp(-10/tau))."""
    pos = torch.exp(v @ positive / tau)
    neg = torch.exp(negatives @ v / tau).sum() + math.exp(-10 / tau)
    return -torch.log(pos / (pos + neg))


@pytest.mark.parametrize("from_minibatch", [False, True])
def test_loss_is_eq2_for_every_patch(from_minibatch):
    batch, patches, tau = 2, 5, 0.07
    q, k = unit_rows(batch, patches, 8, seed=1), unit_rows(batch, patches, 8, seed=2)
    loss = patch_nce_loss(q, k, tau, negatives_from_minibatch=from_minibatch)
    assert loss.shape == (batch, patches)
    all_keys = k.reshape(batch * patches, 8)
    for b in range(batch):
        for i in range(patches):
            if from_minibatch:
                others = torch.cat([all_keys[: b * patches + i], all_keys[b * patches + i + 1 :]])
            else:
                others = torch.cat([k[b, :i], k[b, i + 1 :]])
            expected = eq2_by_hand(q[b, i], k[b, i], others, tau)
            torch.testing.assert_close(loss[b, i], expected)


def test_minibatch_negatives_change_nothing_for_one_image():
    q, k = unit_rows(1, 7, 16, seed=3), unit_rows(1, 7, 16, seed=4)
    torch.testing.assert_close(patch_nce_loss(q, k, 0.07, True), patch_nce_loss(q, k, 0.07, False))


def test_closed_form_for_orthonormal_patches():
    """q_i = k_i and orthogonal keys: logits 1/tau for the positive, 0 for the N - 1 negatives,
    -10/tau for the self slot."""
    n, tau = 6, 0.07
    k = torch.eye(n, dtype=torch.float64)[None]
    expected = math.log(1 + (n - 1) * math.exp(-1 / tau) + math.exp(-11 / tau))
    torch.testing.assert_close(patch_nce_loss(k.clone(), k, tau), torch.full((1, n), expected, dtype=torch.float64))


def test_gradient_flows_into_the_queries_only():
    q = unit_rows(2, 4, 8, seed=5).requires_grad_()
    k = unit_rows(2, 4, 8, seed=6).requires_grad_()
    patch_nce_loss(q, k).mean().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_multilayer_mean_and_module():
    layers = [(unit_rows(1, 4, 8, seed=s), unit_rows(1, 4, 8, seed=s + 10)) for s in range(3)]
    queries, keys = [q for q, _ in layers], [k for _, k in layers]
    expected = torch.stack([patch_nce_loss(q, k).mean() for q, k in layers]).mean()
    torch.testing.assert_close(multilayer_patch_nce_loss(queries, keys), expected)
    module = PatchNCELoss(temperature=0.1, negatives_from_minibatch=True)
    torch.testing.assert_close(module(queries[0], keys[0]), patch_nce_loss(queries[0], keys[0], 0.1, True))
    with pytest.raises(ValueError):
        multilayer_patch_nce_loss(queries, keys[:2])


def test_half_precision_inputs_give_a_float32_loss():
    q, k = unit_rows(1, 4, 8, seed=7).half(), unit_rows(1, 4, 8, seed=8).half()
    assert patch_nce_loss(q, k).dtype == torch.float32


# -- the patch sampler F -------------------------------------------------------------------------
def feature_maps(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 10, 12, generator=gen), torch.randn(2, 16, 5, 6, generator=gen)]


def test_heads_exist_before_the_first_batch_with_reference_names():
    netF = PatchSampleMLP([3, 16], out_channels=32)
    shapes = {name: tuple(p.shape) for name, p in netF.named_parameters()}
    assert shapes == {
        "mlp_0.0.weight": (32, 3), "mlp_0.0.bias": (32,), "mlp_0.2.weight": (32, 32), "mlp_0.2.bias": (32,),
        "mlp_1.0.weight": (32, 16), "mlp_1.0.bias": (32,), "mlp_1.2.weight": (32, 32), "mlp_1.2.bias": (32,),
    }  # fmt: skip
    assert all(float(p.detach().abs().sum()) == 0 for n, p in netF.named_parameters() if n.endswith("bias"))
    # xavier-normal with gain 0.02: std = 0.02 * sqrt(2 / (fan_in + fan_out))
    assert netF.mlp_0[2].weight.std().item() == pytest.approx(0.02 * math.sqrt(2 / 64), rel=0.1)


def test_samples_are_unit_rows_at_the_drawn_positions():
    features = feature_maps()
    netF = PatchSampleMLP([3, 16], out_channels=32)
    samples, ids = netF(features, num_patches=7, generator=torch.Generator().manual_seed(0))
    for sample, id_ in zip(samples, ids):
        assert sample.shape == (2, 7, 32) and id_.shape == (7,) and len(set(id_.tolist())) == 7
        # ~1: the +1e-7 on the norm is felt by the tiny outputs of freshly initialised heads
        torch.testing.assert_close(sample.norm(dim=-1), torch.ones(2, 7), atol=1e-3, rtol=0)
    # the sampled rows are the features at positions y * W + x, projected by the layer's head
    y, x = divmod(int(ids[1][0]), features[1].shape[3])
    expected = l2_normalize(netF.mlp_1(features[1][:, :, y, x]))
    torch.testing.assert_close(samples[1][:, 0], expected)


def test_same_ids_for_the_translated_image_and_reproducible_draws():
    netF = PatchSampleMLP([3, 16])
    real, fake = feature_maps(0), feature_maps(1)
    keys, ids = netF(real, num_patches=5, generator=torch.Generator().manual_seed(3))
    queries, ids_again = netF(fake, patch_ids=ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, ids_again))
    np.random.seed(123)  # numpy's global RNG plays no part
    _, ids_seeded = netF(real, num_patches=5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(ids, ids_seeded))
    assert queries[0].shape == keys[0].shape == (2, 5, 256)


def test_zero_patches_means_every_position_in_order_and_sample_only_mode():
    features = feature_maps()
    netF = PatchSampleMLP(use_mlp=False)
    assert len(list(netF.parameters())) == 0 and netF.state_dict() == {}
    samples, ids = netF(features, num_patches=0)
    assert torch.equal(ids[0], torch.arange(120)) and samples[0].shape == (2, 120, 3)
    torch.testing.assert_close(samples[0], l2_normalize(features[0].flatten(2).transpose(1, 2)))
    assert sample_patch_ids(10, 50, torch.Generator().manual_seed(0)).sort().values.tolist() == list(range(10))


def test_mismatched_features_are_refused():
    netF = PatchSampleMLP([3, 16])
    with pytest.raises(ValueError, match="channels"):
        netF([torch.zeros(1, 4, 3, 3), torch.zeros(1, 16, 3, 3)], num_patches=2)
    with pytest.raises(ValueError, match="heads"):
        netF([torch.zeros(1, 3, 3, 3)], num_patches=2)
    with pytest.raises(ValueError):
        PatchSampleMLP([])


def test_feature_channels_of_a_resnet_generator_leave_it_untouched():
    G = build_generator(GeneratorSpec(ngf=8, norm="batch", antialias=True, antialias_up=True), init_type="normal")
    before = {k: v.clone() for k, v in G.state_dict().items()}
    assert feature_channels(G, [0, 4, 8, 12, 16]) == [3, 16, 32, 32, 32]
    assert G.training
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
