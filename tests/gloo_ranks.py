"""Shared by the multi-process tests: launching a worker script once per gloo rank on
127.0.0.1, and counting the all_reduce calls a rank makes (not a test module)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(script: Path, out: Path, world: int = 2, timeout: float = 180) -> list:
    """Run ``script RANK WORLD PORT OUT`` once per rank; each saves ``OUT/rank<r>.pt``,
    returned in rank order. A rank waiting in a collective the other never joins fails the
    test after ``timeout`` seconds instead of hanging it."""
    import torch

    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen([sys.executable, str(script), str(rank), str(world), port, str(out)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in range(world)]
    try:
        outputs = [process.communicate(timeout=timeout)[0] for process in processes]
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
        pytest.fail(f"the ranks did not finish within {timeout} s: " + " | ".join(p.communicate()[0][-2000:] for p in processes))
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(world)]


class CountingAllReduce:
    """Counts torch.distributed.all_reduce calls (inertia's collectives look it up on the
    module, so replacing it there counts them)."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.calls = 0
        self.original = dist.all_reduce

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.original(*args, **kwargs)
