"""``inertia bench --configs distributed``: inertia's SGD under 2-rank DDP, ZeRO and FSDP2, beside torch.optim.SGD.

Two gloo ranks on 127.0.0.1 (a free port; ``python -m inertia.bench_distributed`` launched once
per rank, each with one thread: ``OMP_NUM_THREADS=1``, ``INERTIA_NUM_THREADS=1``) train the same
MLP (float32, 4 hidden layers of 1024: 4.2M parameters in 10 tensors; batch 32 per rank, a fixed
batch per rank) under

* ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` (every rank holds every parameter and
  its optimizer state),
* ``zero``: the same, with ``torch.distributed.optim.ZeroRedundancyOptimizer`` (ZeRO-1) around
  the optimizer class: each rank keeps the state of, and steps, its partition of the
  parameters, then broadcasts them (the broadcast is part of its step time); not the Keras
  face, which is no torch.optim.Optimizer class, and
* ``fsdp2``: ``torch.distributed.fsdp.fully_shard`` on ``init_device_mesh("cpu", (2,))``, each
  Linear its own group, then the root (each rank holds half of each parameter as a DTensor's
  local shard, and steps only that),

with each optimizer:

* ``torch-default``: ``torch.optim.SGD`` as constructed by default (on CPU tensors torch picks
  its for-loop implementation), ``torch-foreach`` (``foreach=True``), ``torch-fused``
  (``fused=True``);
* ``inertia-torch-face``: ``inertia.torch.SGD`` (``step()``);
* ``inertia-keras-face``: ``inertia.SGD`` on the torch parameters,
  ``opt.apply([p.grad for p in params], params)``,

for the configurations ``plain`` (momentum 0.9), ``nesterov`` and ``decay`` (momentum 0.9 and
torch's L2 weight decay 1e-4; not run on the Keras face, whose ``weight_decay`` is Keras'
decoupled decay, another rule).

Every contender of a configuration is set up on both ranks (its own model, built from the same
seed), warmed up, then timed in rounds: in each round the contenders run in a shuffled order
(the same on both ranks), each for a fixed number of training steps, so that every contender
takes the same steps on the same data. A step is timed on each rank in two parts: the
optimizer's step (``step()`` / ``apply``) and the whole training step (forward, backward with
its communication, and the optimizer's step; ``zero_grad`` is left out). Per step the slower
rank's time counts (the job waits for it); a round's figure is the median of its steps, and
the report gives the median over rounds, the best round (other work on the machine only ever
slows a round) and the spread (max - min of the round figures, over the median); and the
machine's load average before and after.

Reported per contender: those two times, the optimizer step's GB/s per rank (20 bytes per
parameter a rank steps: read w, g, v; write w, v), its ratio to ``torch-default``'s step under
the same parallelism, the optimizer-state bytes on each rank (the sum of the state tensors'
bytes: ``optimizer.state`` for the torch API, for FSDP2 the local shards; every optimizer
variable for the Keras face), and ``dw``: the largest difference of its weights from
``torch-default``'s after the same steps, over the largest distance ``torch-default``'s weights
moved: 0 where the implementation rounds as torch does (torch's own and ``inertia.torch.SGD``);
the Keras face's form (``v = m*v - lr*g; w += v``) rounds differently, and training amplifies
that (about 1e-6 after a few steps, 1e-3 after 59 at full size); a contender that does other
work would show a difference of order 1. A
contender that fails to set up or to step, on either rank, is reported with its error.

Example (tiny and quick):
    >>> from inertia import bench_distributed
    >>> report = bench_distributed.run(configs=["plain"], rounds=1, steps=1, warmup=1, scale=0.02,
    ...                                optimizers=["torch-default"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = ["PARALLELISMS", "OPTIMIZERS", "CONFIGS", "NOT_RUN", "NOT_RUN_UNDER", "MODEL", "run", "markdown", "describe"]

WORLD = 2
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
PARALLELISMS = ("ddp", "zero", "fsdp2")  # zero: ZeroRedundancyOptimizer (ZeRO-1) over DDP
OPTIMIZERS = ("torch-default", "torch-foreach", "torch-fused", "inertia-torch-face", "inertia-keras-face")
CONFIGS = ("plain", "nesterov", "decay")
REFERENCE = "torch-default"  # what the ratios and dw compare with, under the same parallelism
# (optimizer, configuration): not run, and why (reported, never silently missing).
NOT_RUN = {
    ("inertia-keras-face", "decay"): "inertia.SGD's weight_decay is Keras' decoupled decay, not torch's L2 decay",
}
# (parallelism, optimizer): not run, and why.
NOT_RUN_UNDER = {
    ("zero", "inertia-keras-face"): "ZeroRedundancyOptimizer wraps a torch.optim.Optimizer class",
}
# The model at scale 1: inputs -> depth x (Linear(width) + ReLU) -> classes.
MODEL = {"inputs": 1024, "width": 1024, "depth": 4, "classes": 16, "batch": 32}
BYTES_PER_PARAMETER = 20  # read w, g, v; write w, v (torch's L2 decay reads w, already read)


def model_shape(scale: float = 1.0) -> dict:
    """The model's sizes at ``scale`` (inputs and width shrink; at least 2 of each)."""
    shape = dict(MODEL)
    for key in ("inputs", "width"):
        shape[key] = max(2, int(round(MODEL[key] * scale)))
    return shape


def parameter_count(shape: dict) -> int:
    count, fan_in = 0, shape["inputs"]
    for _ in range(shape["depth"]):
        count += fan_in * shape["width"] + shape["width"]
        fan_in = shape["width"]
    return count + fan_in * shape["classes"] + shape["classes"]


def describe() -> str:
    """One line for ``inertia bench --help``."""
    shape = model_shape()
    return (f"  distributed: needs torch; 2 gloo ranks, DDP, ZeRO and FSDP2, an MLP of {parameter_count(shape) / 1e6:.1f}M parameters "
            f"({', '.join(OPTIMIZERS)}; {', '.join(CONFIGS)}); about 4 minutes")


# ---------------------------------------------------------------------------------------------
# one rank
# ---------------------------------------------------------------------------------------------
def _build_model(shape: dict):
    import torch

    torch.manual_seed(0)
    layers: list = []
    fan_in = shape["inputs"]
    for _ in range(shape["depth"]):
        layers += [torch.nn.Linear(fan_in, shape["width"]), torch.nn.ReLU()]
        fan_in = shape["width"]
    layers.append(torch.nn.Linear(fan_in, shape["classes"]))
    return torch.nn.Sequential(*layers)


def _local(tensor):
    """A DTensor's local shard, or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return (to_local() if callable(to_local) else tensor).detach()


def _tensor_bytes(values) -> int:
    import torch

    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            local = _local(value)
            total += local.numel() * local.element_size()
    return total


class _Contender:
    """One (parallelism, optimizer, configuration) on this rank: its own model, wrapped."""

    def __init__(self, parallelism: str, optimizer: str, config: str, shape: dict, rank: int, mesh: Any) -> None:
        import torch

        self.parallelism, self.optimizer_name, self.config = parallelism, optimizer, config
        self.name = f"{parallelism} {optimizer}"
        model = _build_model(shape)
        if parallelism in ("ddp", "zero"):
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(model)
        else:
            from torch.distributed.fsdp import fully_shard

            for layer in model:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=mesh)
            self.module = fully_shard(model, mesh=mesh)
        self.params = [p for p in self.module.parameters()]
        self.initial = [_local(p).clone() for p in self.params] if optimizer == REFERENCE else None
        generator = torch.Generator().manual_seed(1000 + rank)
        self.inputs = torch.randn(shape["batch"], shape["inputs"], generator=generator)
        self.targets = torch.randint(0, shape["classes"], (shape["batch"],), generator=generator)
        nesterov, decay = config == "nesterov", WEIGHT_DECAY if config == "decay" else 0.0
        if optimizer == "inertia-keras-face":
            import inertia

            self.keras = inertia.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM, nesterov=nesterov)
            self.optimizer = None
            self.step_optimizer: Callable[[], None] = lambda: self.keras.apply([p.grad for p in self.params], self.params)
        else:
            options: dict[str, Any] = dict(lr=LEARNING_RATE, momentum=MOMENTUM, nesterov=nesterov, weight_decay=decay)
            if optimizer.startswith("inertia-"):
                import inertia.torch

                optimizer_class, kind = inertia.torch.SGD, {}
            else:
                optimizer_class = torch.optim.SGD
                kind = {"torch-default": {}, "torch-foreach": {"foreach": True}, "torch-fused": {"fused": True}}[optimizer]
            if parallelism == "zero":
                from torch.distributed.optim import ZeroRedundancyOptimizer

                self.optimizer = ZeroRedundancyOptimizer(self.params, optimizer_class=optimizer_class, **kind, **options)
            else:
                self.optimizer = optimizer_class(self.params, **kind, **options)
            self.step_optimizer = self.optimizer.step
        self.times: list[list[tuple[float, float]]] = []  # per round: (train_s, step_s) per step
        self.steps = 0

    def train_step(self) -> tuple[float, float]:
        import torch

        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(self.module(self.inputs), self.targets)
        loss.backward()
        middle = time.perf_counter()
        self.step_optimizer()
        end = time.perf_counter()
        self.module.zero_grad(set_to_none=True)
        self.steps += 1
        return end - start, end - middle

    def run(self, count: int) -> None:
        self.times.append([self.train_step() for _ in range(count)])

    def _stepping(self) -> Any:
        """The optimizer that keeps this rank's state (ZeRO's local one under ZeRO)."""
        return getattr(self.optimizer, "optim", self.optimizer)

    def state_bytes(self) -> int:
        if self.optimizer is None:
            return _tensor_bytes(v.value for v in self.keras.variables)
        return _tensor_bytes(value for state in self._stepping().state.values() for value in state.values())

    def local_elements(self) -> int:
        """The elements this rank steps: its shards (FSDP2), its partition (ZeRO), or all."""
        if self.parallelism == "zero":
            return sum(p.numel() for group in self._stepping().param_groups for p in group["params"])
        return sum(_local(p).numel() for p in self.params)


def _agree(ok: bool) -> bool:
    """True on every rank when it is true on every rank (one tiny all_reduce)."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return " ".join(text.split())[:300]


def _rank_main(rank: int, port: int, spec: dict, out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=spec["collective_timeout_s"]))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (WORLD,)) if "fsdp2" in spec["parallelisms"] else None
    shape = spec["shape"]
    rows: list[dict] = []
    for config in spec["configs"]:
        contenders: list[_Contender] = []
        for parallelism in spec["parallelisms"]:
            for optimizer in spec["optimizers"]:
                row = {"config": config, "parallelism": parallelism, "optimizer": optimizer}
                rows.append(row)
                reason = NOT_RUN.get((optimizer, config)) or NOT_RUN_UNDER.get((parallelism, optimizer))
                if reason is not None:
                    row["not_run"] = reason
                    continue
                contender, error = None, None
                try:
                    contender = _Contender(parallelism, optimizer, config, shape, rank, mesh)
                    for _ in range(spec["warmup"]):
                        contender.train_step()
                except Exception as caught:  # reported in the table, not fatal
                    error = _error_text(caught)
                if not _agree(error is None):
                    row["error"] = error or "failed on the other rank"
                    continue
                contender.row = row  # type: ignore[attr-defined]
                contenders.append(contender)
        order = random.Random(f"{config}-{spec['seed']}")  # the same order on every rank
        for _ in range(spec["rounds"]):
            shuffled = list(contenders)
            order.shuffle(shuffled)
            for contender in shuffled:
                error = None
                try:
                    contender.run(spec["steps"])
                except Exception as caught:
                    error = _error_text(caught)
                if not _agree(error is None):
                    contender.row["error"] = error or "failed on the other rank"  # type: ignore[attr-defined]
                    contenders.remove(contender)
        references = {c.parallelism: c for c in contenders if c.optimizer_name == REFERENCE}
        for contender in contenders:
            row = contender.row  # type: ignore[attr-defined]
            row.update(times=contender.times, steps=contender.steps, state_bytes=contender.state_bytes(),
                       elements=contender.local_elements())
            reference = references.get(contender.parallelism)
            if reference is not None and reference.steps == contender.steps:
                with torch.no_grad():
                    diff = max(float((_local(p) - _local(q)).abs().max()) if _local(p).numel() else 0.0
                               for p, q in zip(contender.params, reference.params))
                    moved = max(float((_local(q) - q0).abs().max()) if q0.numel() else 0.0
                                for q, q0 in zip(reference.params, reference.initial))
                row["dw"] = [diff, moved]
        del contenders, references
    with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
        json.dump({"rank": rank, "rows": rows, "torch": torch.__version__}, handle)
    dist.barrier()
    dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# the launcher
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _combine(per_rank: list[dict]) -> list[dict]:
    """One row per contender: the slower rank's time per step, round medians, then their median."""
    results = []
    for rows in zip(*(r["rows"] for r in per_rank)):
        first = rows[0]
        result = {key: first[key] for key in ("config", "parallelism", "optimizer")}
        for key in ("not_run", "error"):
            values = [row[key] for row in rows if key in row]
            if values:
                result[key] = values[0]
        if "not_run" in result or "error" in result:
            results.append(result)
            continue
        for index, label in ((0, "train"), (1, "step")):
            round_figures = []
            for round_index in range(len(first["times"])):
                per_step = zip(*(row["times"][round_index] for row in rows))
                round_figures.append(statistics.median(max(pair[index] for pair in step) for step in per_step))
            median = statistics.median(round_figures)
            result[f"{label}_ms"] = median * 1e3
            result[f"{label}_best_ms"] = min(round_figures) * 1e3
            result[f"{label}_spread"] = (max(round_figures) - min(round_figures)) / median if median > 0 else 0.0
        result["steps"] = first["steps"]
        result["elements_per_rank"] = [row["elements"] for row in rows]
        result["state_bytes_per_rank"] = [row["state_bytes"] for row in rows]
        result["step_gbps_per_rank"] = max(result["elements_per_rank"]) * BYTES_PER_PARAMETER / (result["step_ms"] / 1e3) / 1e9
        if all("dw" in row for row in rows):
            diff, moved = max(row["dw"][0] for row in rows), max(row["dw"][1] for row in rows)
            result["dw"] = diff / moved if moved > 0 else float(diff > 0)
        results.append(result)
    for result in results:
        reference = next((r for r in results if r["config"] == result["config"] and r["parallelism"] == result["parallelism"]
                          and r["optimizer"] == REFERENCE and "step_ms" in r), None)
        if "step_ms" in result and reference is not None:
            result["step_vs_reference"] = result["step_ms"] / reference["step_ms"]
            result["train_vs_reference"] = result["train_ms"] / reference["train_ms"]
    return results


def run(
    configs: Optional[list[str]] = None,
    parallelisms: Optional[list[str]] = None,
    optimizers: Optional[list[str]] = None,
    rounds: int = 7,
    steps: int = 8,
    warmup: int = 3,
    scale: float = 1.0,
    timeout_s: float = 1800,
    log: Callable[[str], None] = lambda text: None,
) -> dict:
    """Launch the two ranks, wait for them, and return the JSON-ready report (``markdown(report)``
    renders it). A launch that fails as a whole (a rank that dies or hangs) is reported under
    ``"error"``, with the ranks' last output."""
    import inertia

    spec = {
        "configs": list(configs or CONFIGS), "parallelisms": list(parallelisms or PARALLELISMS),
        "optimizers": list(optimizers or OPTIMIZERS), "rounds": rounds, "steps": steps, "warmup": warmup,
        "shape": model_shape(scale), "seed": 0, "collective_timeout_s": max(60, int(timeout_s / 2)),
    }
    for name, given, known in (("configs", spec["configs"], CONFIGS), ("parallelisms", spec["parallelisms"], PARALLELISMS),
                               ("optimizers", spec["optimizers"], OPTIMIZERS)):
        unknown = [item for item in given if item not in known]
        if unknown:
            raise ValueError(f"{name}: unknown {', '.join(map(repr, unknown))} (choose from {', '.join(known)})")
    report: dict[str, Any] = {
        "world_size": WORLD, "backend": "gloo", "model": spec["shape"], "parameters": parameter_count(spec["shape"]),
        "settings": {key: spec[key] for key in ("rounds", "steps", "warmup")} | {"scale": scale},
        "threads_per_rank": 1, "results": [],
    }
    from inertia.bench import _found

    if not _found("torch.distributed"):
        report["error"] = "not installed: pip install torch (with torch.distributed)"
        log(f"distributed: {report['error']}")
        return report
    log(f"distributed: 2 gloo ranks, {', '.join(spec['parallelisms'])}; {', '.join(spec['configs'])}; "
        f"MLP of {report['parameters']:,} parameters")
    source_root = str(Path(inertia.__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS="1", INERTIA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([source_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    started = time.perf_counter()
    report["load_average"] = [_load_average()]
    with tempfile.TemporaryDirectory() as out:
        port = _free_port()
        command = lambda rank: [sys.executable, "-m", "inertia.bench_distributed", "--rank", str(rank), "--port", str(port),
                                "--spec", json.dumps(spec), "--out", out]
        logs = [open(os.path.join(out, f"rank{rank}.log"), "w+") for rank in range(WORLD)]
        processes = [subprocess.Popen(command(rank), env=env, stdout=logs[rank], stderr=subprocess.STDOUT, text=True)
                     for rank in range(WORLD)]
        failure = None
        try:
            for process in processes:
                remaining = max(1.0, timeout_s - (time.perf_counter() - started))
                process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            failure = f"the ranks did not finish within {timeout_s:.0f} s"
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        tails = []
        for rank, handle in enumerate(logs):
            handle.seek(0)
            tails.append(f"rank {rank}: " + " ".join(handle.read()[-1500:].split()))
            handle.close()
        if failure is None and any(p.returncode != 0 for p in processes):
            failure = "a rank failed (exit codes " + ", ".join(str(p.returncode) for p in processes) + ")"
        if failure is not None:
            report["error"] = f"{failure}; " + " | ".join(tails)
            log(f"distributed: {report['error']}")
            return report
        per_rank = [json.loads(Path(out, f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    report["results"] = _combine(per_rank)
    report["load_average"].append(_load_average())
    report["wall_s"] = time.perf_counter() - started
    log(f"distributed: done in {report['wall_s']:.0f} s")
    return report


def _load_average() -> Optional[float]:
    """The machine's 1-minute load average (other work competing for the cores), where known."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cell(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    """The report as Markdown tables (GitHub pipe tables, as ``inertia.bench.markdown``), one per
    configuration; a contender that failed shows its error in its row."""
    model = report["model"]
    lines = [
        f"**Distributed**: {report['world_size']} {report['backend']} ranks on 127.0.0.1, one thread each; an MLP of "
        f"{report['parameters']:,} float32 parameters ({model['inputs']} -> {model['depth']} x {model['width']} -> "
        f"{model['classes']}), batch {model['batch']} per rank; {report['settings']['rounds']} rounds of "
        f"{report['settings']['steps']} steps after {report['settings']['warmup']} warm-up steps. Times: the slower rank's; "
        f"median over rounds, the best round, and the spread (max - min over the median). step: the optimizer's step; train: forward + backward "
        f"(with its communication) + step. GB/s: {BYTES_PER_PARAMETER} bytes a parameter the rank steps. dw: the largest "
        f"weight difference from {REFERENCE} after the same steps, over the largest distance its weights moved.",
        "",
    ]
    loads = [load for load in report.get("load_average", []) if load is not None]
    if loads:
        lines[0] += (f" The machine's 1-minute load average was {' then '.join(f'{load:.1f}' for load in loads)} "
                     f"(before, then at the end, where the 2 ranks add about 2; more than its cores: other work competed).")
    if "error" in report:
        lines.append(f"Distributed benchmark failed: {report['error']}")
        return "\n".join(lines)
    for config in dict.fromkeys(r["config"] for r in report["results"]):
        lines += [
            f"**distributed {config}**",
            "",
            f"| setup | step ms | best | spread | train ms | best | spread | step GB/s per rank | step / {REFERENCE} | "
            f"train / {REFERENCE} | state MB per rank | dw |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in (r for r in report["results"] if r["config"] == config):
            setup = f"{r['parallelism']} {r['optimizer']}"
            if "step_ms" not in r:
                what = f"not run: {r['not_run']}" if "not_run" in r else f"error: {r['error']}"
                lines.append(f"| {setup} | {what.replace('|', '/')} |" + " |" * 11)
                continue
            state = " / ".join(f"{b / 2**20:.2f}" for b in r["state_bytes_per_rank"])
            dw = "-" if r.get("dw") is None else f"{r['dw']:.1e}"
            lines.append(
                f"| {setup} | {r['step_ms']:.2f} | {r['step_best_ms']:.2f} | {100 * r['step_spread']:.0f}% | "
                f"{r['train_ms']:.2f} | {r['train_best_ms']:.2f} | {100 * r['train_spread']:.0f}% | {r['step_gbps_per_rank']:.1f} | {_cell(r.get('step_vs_reference'))} | "
                f"{_cell(r.get('train_vs_reference'))} | {state} | {dw} |"
            )
        lines.append("")
    return "\n".join(lines)


def _main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m inertia.bench_distributed", description="one rank of the distributed benchmark")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    _rank_main(args.rank, args.port, json.loads(args.spec), args.out)


if __name__ == "__main__":
    _main()
