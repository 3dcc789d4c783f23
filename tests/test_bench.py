"""`gan-style bench`: the FLOP count of a training step, the matmul peak and the figures from them."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from gan_style.bench import count_gflop, describe_cpu_flags, peak_matmul_gflops, run_benchmark
from gan_style.cli import main as cli_main

TINY = {"ngf": 4, "ndf": 4}
TINY_ARGS = ["--size", "32", "--steps", "1", "--warmup", "0", "--set", "ngf=4", "--set", "ndf=4"]


def test_count_gflop_matches_the_analytic_count_of_a_conv_and_a_linear_layer():
    conv, linear = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Linear(8 * 16 * 16, 10, bias=False)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    gflop = count_gflop(lambda: linear(conv(x).flatten(1)).sum().backward())
    conv_forward = 2 * 2 * 8 * 3 * 3 * 3 * 16 * 16  # 2 flop per multiply-add, per output element
    linear_forward = 2 * 2 * 8 * 16 * 16 * 10
    # The backward pass computes the gradients of the input and of the weight: twice the forward.
    assert gflop * 1e9 == 3 * (conv_forward + linear_forward)


def test_peak_matmul_gflops_is_positive_and_stops_at_n_max():
    gflops, n = peak_matmul_gflops("cpu", torch.float32, n_max=256)
    assert gflops > 0 and n == 256


def test_bench_json_has_the_flop_figures(capsys):
    assert cli_main(["bench", "cyclegan", *TINY_ARGS, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["gflop_per_iter"] > 0 and result["peak_gflops"] > 0 and result["peak_dtype"] == "float32"
    # train.reuse_pages (on by default): what the page-reusing allocator did, where it could be built
    from gan_style.engine.memory import page_reuse_counters

    if page_reuse_counters() is not None:
        assert 0 <= result["page_reuse"]["reused_fraction"] <= 1 and result["page_reuse"]["peak_mapped_mb"] >= 0
    # the norms' activations run inside the fused C norm where it was chosen (train.fuse_activations)
    assert (result["fused_norm_activations"] > 0) == ("fused instance norm" in result["kernels"])
    assert result["achieved_gflops"] == pytest.approx(result["gflop_per_iter"] / result["sec_per_iter"], rel=0.01)
    assert result["fraction_of_peak"] == pytest.approx(result["achieved_gflops"] / result["peak_gflops"], rel=0.01)
    # fp32 on the CPU: the strided convolutions' weight gradients timed per shape, as reported
    strided = result["strided_weight_gradients"]
    assert any("stride 2" in shape for shape in strided)
    assert all(v["kernel"] in ("direct", "im2col") and v["direct_ms"] > 0 and v["im2col_ms"] > 0 for v in strided.values())


def test_bench_text_shows_gflops_and_no_flops_skips_the_count(capsys):
    assert cli_main(["bench", "cyclegan", *TINY_ARGS]) == 0
    assert "GFLOP/s" in capsys.readouterr().out
    assert cli_main(["bench", "cyclegan", *TINY_ARGS, "--json", "--no-flops"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "gflop_per_iter" not in result and "fraction_of_peak" not in result and result["peak_gflops"] > 0


def test_gflop_per_iter_grows_with_the_pixel_count():
    # CycleGAN is all convolutions: twice the side, four times the work (the PatchGAN's
    # unpadded last layers make it not exactly four).
    small, large = (run_benchmark("cyclegan", size, steps=1, warmup=0, overrides=TINY)["gflop_per_iter"] for size in (32, 64))
    assert large / small == pytest.approx(4, rel=0.1)


def test_a_counted_step_trains_like_an_uncounted_one():
    from gan_style.engine.contract import config_from_overrides
    from gan_style.engine.trainer import Trainer
    from gan_style.methods import get_method

    method_cls = get_method("fastcut")  # forward hooks on the encoder layers, several phases
    weights = []
    for counted in (False, True):
        trainer = Trainer(method_cls(config_from_overrides(method_cls, None, TINY)), run_dir=None, show_progress=False)
        before = {k: v.clone() for k, v in trainer.unwrapped("G").state_dict().items()}
        batch = trainer.method.synthetic_batch(32, 1, torch.Generator().manual_seed(0))
        step = functools.partial(trainer.train_step, batch)
        assert count_gflop(step) > 0 if counted else step()
        after = trainer.unwrapped("G").state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before)
        weights.append(after)
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key])


def test_bench_swapae_needs_no_settings_for_its_crop_and_batch(capsys):
    # its image discriminator is built for the crop size, and swaps pair the images of a batch
    assert cli_main(["bench", "swapae", "--preset", "smoke", "--size", "32", "--steps", "1", "--warmup", "0", "--json", "--no-flops"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["batch_size"] == 2 and result["size"] == 32 and result["iterations_per_step"] == 2


def test_the_cpu_line_names_the_bf16_units_a_cpu_lacks():
    # An Ice Lake Xeon (AVX-512, no bf16 units), a Zen 4 EPYC (AVX512-BF16, no AMX), a Sapphire Rapids Xeon.
    assert describe_cpu_flags(["avx2", "avx512f"]) == "avx2 avx512f; no avx512_bf16 or amx_bf16"
    assert describe_cpu_flags(["avx2", "avx512f", "avx512_bf16"]) == "avx2 avx512f avx512_bf16; no amx_bf16"
    assert describe_cpu_flags(["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]).endswith("amx_tile")
    assert describe_cpu_flags([]) == "no AVX2/AVX-512/AMX"
