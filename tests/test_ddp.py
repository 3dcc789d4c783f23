"""Two processes with DDP over gloo on this CPU, started the way users start multi-GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_two_process_ddp_training_keeps_replicas_in_sync(tmp_path, demo_cache):
    env = dict(os.environ, OMP_NUM_THREADS="1", GAN_STYLE_CACHE=str(demo_cache), PYTHONPATH=str(HERE.parent))
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "29517", str(HERE / "ddp_worker.py"), str(tmp_path),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["distributed_type"] == "DistributedType.MULTI_CPU"
        assert len(report["seen"]) == 3
    # Each process trained on its own shard of the data ...
    assert reports[0]["seen"] != reports[1]["seen"]
    # ... and DDP averaged the gradients, so the replicas stayed identical.
    assert reports[0]["checksums"] == reports[1]["checksums"]
    # Rank 1 wrote its own local state (RNG, image pools) beside the shared checkpoint.
    assert (tmp_path / "run" / "checkpoints" / "latest.rank1.pt").is_file()
