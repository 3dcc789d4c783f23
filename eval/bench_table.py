"""Speed and memory table: `gan-style bench` for each method and size, each in a fresh process
(so peak RSS is that run's own), alternating runs (A B A B) to even out machine drift.

    python eval/bench_table.py --methods cyclegan --sizes 128 256 --repeats 2 [--set train.channels_last=false]

Prints one JSON line per run and a markdown table of medians, with the FLOP/s figures that compare
across machines: GFLOP per step, GFLOP/s achieved, and the fraction of the same process's matmul peak.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def run_once(method: str, size: int, steps: int, warmup: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "gan_style.cli", "bench", method, "--size", str(size), "--steps", str(steps),
               "--warmup", str(warmup), "--json", *extra]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["cyclegan"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (the matmul peak is still timed)")
    args = parser.parse_args()
    extra = [item for kv in args.set for item in ("--set", kv)] + (["--no-flops"] if args.no_flops else [])
    if args.threads:
        extra += ["--threads", str(args.threads)]
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeats):
        for method in args.methods:
            for size in args.sizes:
                result = run_once(method, size, args.steps, args.warmup, extra)
                print(json.dumps(result), flush=True)
                results.setdefault((method, size), []).append(result)
    print("\n| method | size | s/iteration (median) | peak RSS | GFLOP/iteration | GFLOP/s | matmul peak GFLOP/s | of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for (method, size), runs in results.items():
        seconds = statistics.median(r["sec_per_iter"] for r in runs)
        rss = max(r["peak_rss_mb"] for r in runs) / 1024
        peak = statistics.median(r["peak_gflops"] for r in runs)
        if not args.no_flops:
            gflop = statistics.median(r["gflop_per_iter"] for r in runs)
            flops = f"{gflop:.4g} | {gflop / seconds:.4g} | {peak:.4g} | {gflop / seconds / peak:.1%}"
        else:
            flops = f"- | - | {peak:.4g} | -"
        print(f"| {method} | {size} px | {seconds:.2f} s | {rss:.1f} GiB | {flops} |")


if __name__ == "__main__":
    main()
