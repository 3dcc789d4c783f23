"""The trainer's Adam and AdamW (gan_style.engine.optimizers): PyTorch's updates, bit for bit, with
channels-last parameters handed to the fused kernel as dense views instead of copies."""

from __future__ import annotations

import pytest
import torch

from gan_style.engine import optimizers

SHAPES = [(8, 4, 3, 3), (4, 3, 7, 7), (1, 8, 4, 4), (8,), (5, 6)]


def _parameters(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in SHAPES:
        value = torch.randn(shape, generator=generator)
        params.append(torch.nn.Parameter(value.contiguous(memory_format=torch.channels_last) if value.dim() == 4 else value))
    return params


def _train(optimizer_class, steps: int = 3, **kwargs) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    params = _parameters(0)
    optimizer = optimizer_class(params, lr=0.01, betas=(0.5, 0.999), fused=True, **kwargs)
    for step in range(steps):
        generator = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator).contiguous(memory_format=torch.channels_last) if p.dim() == 4 else torch.randn(p.shape, generator=generator)
        optimizer.step()
    return params, optimizer


@pytest.mark.parametrize(("ours", "theirs", "kwargs"), [
    (optimizers.Adam, torch.optim.Adam, {}),
    (optimizers.Adam, torch.optim.Adam, {"amsgrad": True, "weight_decay": 0.01}),
    (optimizers.AdamW, torch.optim.AdamW, {"weight_decay": 0.01}),
])
def test_the_update_is_pytorchs_bit_for_bit(ours, theirs, kwargs):
    params, optimizer = _train(ours, **kwargs)
    expected, expected_optimizer = _train(theirs, **kwargs)
    for p, q in zip(params, expected, strict=True):
        assert torch.equal(p, q) and p.stride() == q.stride()  # still channels-last, same values
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimizer.state[p][key], expected_optimizer.state[q][key])
    # the state is keyed by and shaped like the parameters: a checkpoint loads into PyTorch's Adam
    restored = theirs(expected, lr=0.01, betas=(0.5, 0.999), fused=True, **kwargs)
    restored.load_state_dict(optimizer.state_dict())
    assert all(restored.state[q]["exp_avg"].shape == q.shape for q in expected)


def test_the_fused_kernel_gets_only_contiguous_tensors(monkeypatch):
    seen = []
    fused = torch._fused_adam_

    def recording(*lists, **kwargs):
        seen.extend(t.is_contiguous() for tensors in lists[:4] for t in tensors)
        return fused(*lists, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", recording)
    _train(optimizers.Adam, steps=1)
    assert len(seen) == 4 * len(SHAPES) and all(seen)


def test_the_dense_view_is_the_same_memory():
    weight = torch.randn(8, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    view = optimizers.dense_view(weight)
    assert view.is_contiguous() and view.data_ptr() == weight.data_ptr()
    view.add_(1)  # an update of the view is one of the weight
    assert torch.equal(weight.permute(0, 2, 3, 1), view)
    plain = torch.randn(8, 4, 3, 3)
    assert optimizers.dense_view(plain) is plain
