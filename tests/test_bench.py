"""The benchmark harness: its workloads, its noisy-round rule, its report (not its figures)."""

import json

import numpy as np
import pytest

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
