"""MUNIT's networks against the reference's golden outputs (shared/golden/munit, see its README),
loaded the way a user loads them: the reference's own ``gen_00000001.pt`` / ``dis_00000001.pt``
through ``gan_style.hub.munit.import_munit_checkpoint``. Also the full-size parameter counts, the
importer's layout checks (non-MUNIT files rejected, stale norm statistics dropped) and the AdaIN
layer shared with the style-transfer method.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from conftest import GOLDEN, require_shared
from conftest import assert_golden_close as assert_close
from gan_style.engine.checkpoint import read_weights
from gan_style.hub.errors import LayoutMismatch
from gan_style.hub.munit import import_munit_checkpoint, is_munit_discriminator_state, is_munit_generator_state
from gan_style.methods.nst import adain as nst_adain
from gan_style.nn import adain
from gan_style.nn.discriminators import MultiScaleDiscriminator, MultiScaleDiscriminatorSpec
from gan_style.nn.generators import ResnetGenerator
from gan_style.nn.layers import count_parameters
from gan_style.nn.munit_networks import MUNITGenerator, MUNITGeneratorSpec

MUNIT = GOLDEN / "munit"
INPUTS = ("x_64", "x_72x96", "s_rand")
TINY_GEN = MUNITGeneratorSpec(dim=8, mlp_dim=32)  # the goldens' config (README, deviations)
TINY_DIS = MultiScaleDiscriminatorSpec(dim=8)

Nets = dict[str, torch.nn.Module]
Cases = dict[str, torch.Tensor]


def content_a(n: Nets, c: Cases, x: str = "x_64") -> torch.Tensor:
    return n["G_A"].encode(c[x])[0]


# cases.pt key -> how our networks compute it (README, "cases.pt")
CASES: dict[str, Callable[[Nets, Cases], torch.Tensor]] = {
    "gen_a.content": content_a,
    "gen_a.style": lambda n, c: n["G_A"].encode(c["x_64"])[1],
    "gen_a.adain_params_style": lambda n, c: n["G_A"].adain_params(n["G_A"].encode(c["x_64"])[1]),
    "gen_a.decode_content_style": lambda n, c: n["G_A"].decode(*n["G_A"].encode(c["x_64"])),
    "gen_a.decode_content_srand": lambda n, c: n["G_A"].decode(content_a(n, c), c["s_rand"]),
    "gen_b.decode_content_srand": lambda n, c: n["G_B"].decode(content_a(n, c), c["s_rand"]),  # a -> b as test.py
    "gen_a.forward_recon": lambda n, c: n["G_A"](c["x_64"]),
    "gen_a.content_72x96": lambda n, c: content_a(n, c, "x_72x96"),
    "gen_a.style_72x96": lambda n, c: n["G_A"].encode(c["x_72x96"])[1],
    "gen_a.decode_72x96": lambda n, c: n["G_A"].decode(*n["G_A"].encode(c["x_72x96"])),
    "gen_b.style": lambda n, c: n["G_B"].encode(c["x_64"])[1],
    **{f"dis_a.out_{i}": (lambda n, c, i=i: n["D_A"](c["x_64"])[i]) for i in range(3)},
    **{f"dis_b.out_72x96_{i}": (lambda n, c, i=i: n["D_B"](c["x_72x96"])[i]) for i in range(3)},
}


@pytest.fixture(scope="module")
def cases() -> Cases:
    return read_weights(require_shared(MUNIT / "cases.pt"))


@pytest.fixture(scope="module")
def nets() -> dict:
    require_shared(MUNIT / "gen_00000001.pt")
    return import_munit_checkpoint(MUNIT / "gen_00000001.pt", MUNIT / "dis_00000001.pt")




def test_every_case_is_checked(cases):
    assert set(cases) - set(INPUTS) == set(CASES)


@pytest.mark.parametrize("key", sorted(CASES))
@torch.no_grad()
def test_golden_case(nets, cases, key):
    assert_close(CASES[key](nets, cases), cases[key], key)


def test_imported_specs_and_counts(nets):
    assert set(nets) == {"G_A", "G_B", "D_A", "D_B", "specs"}
    assert nets["specs"] == {"G_A": TINY_GEN, "G_B": TINY_GEN, "D_A": TINY_DIS, "D_B": TINY_DIS}
    assert not any(m.training for name in ("G_A", "G_B", "D_A", "D_B") for m in nets[name].modules())
    G, D = nets["G_A"], nets["D_A"]
    assert (count_parameters(G), count_parameters(D)) == (239_499, 130_731)
    assert [count_parameters(getattr(G, p)) for p in ("enc_style", "enc_content", "dec", "mlp")] == [44_568, 85_456, 91_235, 18_240]


def test_full_size_parameter_counts():
    G, D = MUNITGenerator(), MultiScaleDiscriminator()  # edges2shoes_folder.yaml
    assert count_parameters(G) == 15_026_187 and 2 * count_parameters(G) == 30_052_374
    assert [count_parameters(getattr(G, p)) for p in ("enc_style", "enc_content", "dec", "mlp")] == [2_764_936, 5_385_856, 5_754_627, 1_120_768]
    assert count_parameters(D) == 8_271_171 and 2 * count_parameters(D) == 16_542_342
    assert G.dec.num_adain_params == 2 * 2 * 4 * 256  # two AdaIN layers per residual block, 256 channels


@torch.no_grad()
def test_stale_instance_norm_statistics_are_dropped(cases):
    """Old releases carry enc_content IN running stats (PyTorch 0.3); the AdaIN dummies are in every file."""
    gen = read_weights(require_shared(MUNIT / "gen_00000001.pt"))
    old = {d: dict(s) for d, s in gen.items()}
    for state in old.values():
        for k in [k for k in state if k.startswith("enc_content.") and k.endswith(".conv.weight")]:
            channels = state[k].shape[0]
            state[k.replace(".conv.weight", ".norm.running_mean")] = torch.full((channels,), 3.0)
            state[k.replace(".conv.weight", ".norm.running_var")] = torch.full((channels,), 7.0)
    assert any(".norm.running_mean" in k for k in gen["a"]) and is_munit_generator_state(old)
    G = import_munit_checkpoint(old)["G_A"]
    assert set(G.state_dict()) == {k for k in gen["a"] if ".norm.running_" not in k}
    assert_close(G(cases["x_64"]), cases["gen_a.forward_recon"], "gen_a.forward_recon (stale stats)")


def test_layout_detection(tmp_path):
    G, D = MUNITGenerator(TINY_GEN), MultiScaleDiscriminator(TINY_DIS)
    gen, dis = {"a": G.state_dict(), "b": G.state_dict()}, {"a": D.state_dict()}
    assert is_munit_generator_state(gen) and is_munit_generator_state(gen["a"]) and not is_munit_generator_state(dis)
    assert is_munit_discriminator_state(dis) and not is_munit_discriminator_state(gen)
    torch.save(gen, tmp_path / "gen_00000001.pt")
    out = import_munit_checkpoint(tmp_path / "gen_00000001.pt", dis, dis_options={"gan_type": "nsgan"})
    assert set(out) == {"G_A", "G_B", "D_A", "specs"} and out["specs"]["D_A"].gan_type == "nsgan"
    assert import_munit_checkpoint(gen, gen_options={"pad_type": "zero"})["specs"]["G_A"].pad_type == "zero"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (ResnetGenerator(ngf=4, n_blocks=1).state_dict(), "expected a dict with keys 'a' and/or 'b'"),  # a CycleGAN G
        ({"a": ResnetGenerator(ngf=4, n_blocks=1).state_dict()}, "keys outside"),
        ({"gen": {}, "dis": {}}, "expected a dict with keys 'a' and/or 'b'"),  # optimizer.pt
        ({"a": MultiScaleDiscriminator(TINY_DIS).state_dict()}, "keys outside"),  # a dis file as gen
        (MUNITGenerator(TINY_GEN).state_dict(), "one network at the top level"),
        ({"a": {k: v for k, v in MUNITGenerator(TINY_GEN).state_dict().items() if not k.startswith("mlp.model.2")}}, "missing keys"),
        ({"a": {**MUNITGenerator(TINY_GEN).state_dict(), "mlp.model.2.fc.bias": torch.zeros(500)}}, "shape mismatches"),
    ],
)
def test_non_munit_generator_files_are_rejected(content, match):
    with pytest.raises(LayoutMismatch, match=match):
        import_munit_checkpoint(content)


def test_non_munit_discriminator_files_are_rejected():
    with pytest.raises(LayoutMismatch, match="keys other than 'cnns"):
        import_munit_checkpoint(dis_state={"a": MUNITGenerator(TINY_GEN).state_dict()})
    with pytest.raises(LayoutMismatch, match="MUNIT discriminator file"):
        import_munit_checkpoint(dis_state={"b": {k: v for k, v in MultiScaleDiscriminator(TINY_DIS).state_dict().items() if not k.startswith("cnns.2.4")}})


def test_golden_optimizer_file_is_rejected():
    with pytest.raises(LayoutMismatch, match="'gen', 'dis'"):
        import_munit_checkpoint(require_shared(MUNIT / "optimizer.pt"))


def test_one_adain_for_both_methods():
    """AdaIN's style transfer and MUNIT's decoder share the layer; MUNIT's is instance norm."""
    assert nst_adain.adaptive_instance_norm is adain.adaptive_instance_norm
    x, gamma, beta = torch.randn(2, 5, 6, 7, dtype=torch.float64), torch.rand(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    expected = F.instance_norm(x, eps=1e-5) * gamma[..., None, None] + beta[..., None, None]
    torch.testing.assert_close(adain.adaptive_instance_norm(x, (beta, gamma), unbiased=False), expected)
    style = torch.randn(1, 5, 3, 4, dtype=torch.float64)  # AdaIN paper: the unbiased statistics of a feature map
    mean, std = style.mean((2, 3), keepdim=True), (style.var((2, 3), keepdim=True) + 1e-5).sqrt()
    normalised = (x - x.mean((2, 3), keepdim=True)) / (x.var((2, 3), keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(adain.adaptive_instance_norm(x, style), normalised * std + mean)


def test_generator_shapes_and_styles():
    G = MUNITGenerator(TINY_GEN)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    content, style = G.encode(x)
    assert content.shape == (2, 32, 8, 12) and style.shape == (2, 8, 1, 1)
    s = G.sample_style(2, torch.Generator().manual_seed(0))
    out = G.decode(content, s)
    assert out.shape == x.shape and out.abs().max() <= 1
    torch.testing.assert_close(G.decode(content, s.flatten(1)), out)  # a flat style works too
    assert not torch.allclose(out[0], G.decode(content[:1], G.sample_style(1))[0])  # the style matters
