"""The benchmark harness: its workloads, its noisy-round rule, its report (not its figures)."""

import json

import numpy as np
import pytest

from inertia import backend as backends
from inertia import bench, cli


def test_resnet50_has_161_tensors_and_25_6m_parameters():
    shapes = bench.resnet50_shapes()
    assert len(shapes) == 161
    assert sum(int(np.prod(s)) for s in shapes) == 25_557_032  # torchvision's count
    assert shapes[0] == (64, 3, 7, 7) and shapes[-2:] == [(1000, 2048), (1000,)]


def test_workloads_sizes():
    assert bench.WORKLOADS["W1"]() == [(32 * 2**20,)]
    w3 = bench.WORKLOADS["W3"]()
    assert len(w3) == 2000 and set(w3) == {(4096,)}


def test_bytes_per_parameter():
    assert bench.bytes_per_parameter("plain") == 20  # read w, g, v; write w, v
    assert bench.bytes_per_parameter("everything") == 32  # + EMA read/write, + the norm's read of g


class _Fixed:
    """A contender whose step times are scripted per round."""

    def __init__(self, name, times):
        self.name, self.times = name, list(times)

    def run(self, count):
        return [self.times.pop(0) if len(self.times) > 1 else self.times[0]] * count


def test_noisy_rounds_are_flagged_by_the_probe(monkeypatch):
    monkeypatch.setattr(bench.random, "shuffle", lambda items: None)
    contender = _Fixed("a", [1.0, 1.0, 1.0, 5.0, 1.0, 1.0])
    # The probe: its first call sizes the rounds; then one slow round (the 3rd) out of five.
    probe = _Fixed("probe", [1.0, 1.0, 1.0, 1.5, 1.0, 1.02])
    per_round, probe_times, clean = bench._measure([contender], probe, rounds=5, seconds_per_round=0.0)
    assert probe_times == [1.0, 1.0, 1.5, 1.0, 1.02]
    assert clean == [True, True, False, True, True]
    assert per_round["a"] == [1.0, 1.0, 5.0, 1.0, 1.0]


def test_small_run_reports_every_field_and_renders(tmp_path):
    report = bench.run(workloads=["W3"], configs=["plain", "everything"], rounds=2,
                       contenders=["inertia-numpy", "torch-fused"], scale=0.002, cold_start=False)
    rows = report["results"]
    assert {(r["config"], r["contender"]) for r in rows} == {
        (c, n) for c in ("plain", "everything") for n in ("inertia-numpy", "torch-fused")
    }
    for row in rows:
        assert row["median_ms"] > 0 and row["gbps"] > 0 and 0 <= row["spread"]
        assert row["ratios"][row["contender"]] == pytest.approx(1.0)
    assert report["bandwidth_gbps"]["W3"] > 0
    text = bench.markdown(report)
    assert "**W3 plain**" in text and "| inertia-numpy |" in text and "torch-fused" in text
    json.dumps(report)  # JSON-ready


def test_pairs_not_run_are_reported_with_their_reason(monkeypatch):
    def fails(name, shapes, config):
        raise RuntimeError("no such peer here")

    real = bench._Local
    monkeypatch.setattr(bench, "_Local", lambda name, shapes, config: fails(name, shapes, config) if name == "torch-fused" else real(name, shapes, config))
    report = bench.run(workloads=["W3"], configs=["plain"], rounds=2,
                       contenders=["inertia-numpy", "torch-compile", "torch-fused"], scale=0.002, cold_start=False)
    assert [r["contender"] for r in report["results"]] == ["inertia-numpy"]
    assert report["not_run"] == [
        {"workload": "W3", "config": "plain", "contender": "torch-compile", "reason": bench.NOT_RUN[("torch-compile", "W3")]},
        {"workload": "W3", "config": "plain", "contender": "torch-fused", "reason": "RuntimeError: no such peer here"},
    ]
    text = bench.markdown(report)
    assert "Not run: torch-compile (compiling the step over 2000 tensors" in text
    assert "Not run: torch-fused (RuntimeError: no such peer here)." in text


def test_cli_rejects_unknown_names(capsys):
    assert cli.main(["bench", "--workloads", "W9"]) == 2
    assert "W9" in capsys.readouterr().err
    assert cli.main(["bench", "--scale", "2"]) == 2


# Every contender does the work it is timed for: after the same steps, its weights match
# inertia's reference path. Small tensors, and one of 80 KiB (inertia-jax's custom call).
AGREEMENT_SHAPES = [(128, 160), (7,), (3, 5)]


def _reference_weights(config: str, steps: int) -> list:
    import inertia

    weights, grads = bench._data(AGREEMENT_SHAPES)
    variables = [inertia.Variable(w.copy()) for w in weights]
    optimizer = inertia.SGD(jit_compile=False, **bench._inertia_options(config))
    for _ in range(steps):
        optimizer.apply(grads, variables)
    return [v.numpy() for v in variables]


# torch's foreach Nesterov (also under torch.compile) adds momentum * buffer into p.grad in
# place, so a gradient tensor that is not recomputed (the benchmark's) grows from step to step.
GRADIENT_WRITERS = ("torch-foreach", "torch-compile")


def _torch_nesterov_writing_gradients(steps: int) -> list:
    """torch.optim.SGD(foreach=True, nesterov=True)'s steps on gradients it keeps rewriting, in float64."""
    weights, grads = bench._data(AGREEMENT_SHAPES)
    out = []
    for w, g in zip(weights, grads):
        w, g, buffer = w.astype(np.float64), g.astype(np.float64), None
        for _ in range(steps):
            buffer = g.copy() if buffer is None else bench.MOMENTUM * buffer + g
            g = g + bench.MOMENTUM * buffer  # written back into p.grad
            w = w - bench.LEARNING_RATE * g
        out.append(w)
    return out


def _assert_same_displacement(name: str, config: str, got: list, steps: int) -> None:
    start, _ = bench._data(AGREEMENT_SHAPES)
    if config == "nesterov" and name in GRADIENT_WRITERS:
        want = _torch_nesterov_writing_gradients(steps)
    else:
        want = _reference_weights(config, steps)
    for shape, w0, w, r in zip(AGREEMENT_SHAPES, start, got, want):
        assert w.shape == shape and w.dtype == np.float32, name
        moved, expected = w.astype(np.float64) - w0, np.asarray(r, np.float64) - w0
        # about 1e-4 of movement on weights up to 5: float32 keeps 2-3 digits of it, and each
        # implementation rounds its own way (8 float32 spacings at the largest weight)
        atol = 8 * float(np.spacing(np.abs(w0).max()))
        np.testing.assert_allclose(moved, expected, rtol=2e-3, atol=atol, err_msg=f"{name} {config} after {steps} steps")


@pytest.mark.parametrize("config", ["plain", "nesterov"])
def test_every_contender_takes_the_step_it_is_timed_for(config):
    """Same rule, same numbers: the peers' forms of momentum and Nesterov are the Keras
    rule's, up to rounding, under a constant learning rate (torch's foreach Nesterov aside,
    which rewrites its gradients: checked against a model of that)."""
    names = [n for n in bench.ALL_CONTENDERS if bench._available(n)]
    if backends.required():  # CI installs every peer
        assert names == list(bench.ALL_CONTENDERS)
    for name in names:
        contender = (bench._Worker if name in bench._WORKER_CONTENDERS else bench._Local)(name, AGREEMENT_SHAPES, config)
        try:
            contender.run(2)
            _assert_same_displacement(name, config, contender.weights(), contender.steps)
        finally:
            contender.close()


def test_inertia_contenders_take_every_stage_with_everything_on():
    """With everything on, peers take their own idioms (global clipping, coupled decay);
    inertia's backends take exactly the reference's stages."""
    for name in ("inertia-numpy", "inertia-torch", "inertia-jax"):
        if not bench._available(name):
            continue
        contender = bench._Local(name, AGREEMENT_SHAPES, "everything")
        contender.run(1)
        _assert_same_displacement(name, "everything", contender.weights(), contender.steps)
        contender.close()
