"""The benchmark harness: its workloads, its noisy-round rule, its report (not its figures)."""

import json

import numpy as np
import pytest
from conftest import requires

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


MS = 1e-3  # seconds


def _round(step_s):
    """One round's step times: a slow step in three, so its median is ``step_s`` and its mean is not."""
    return [step_s, step_s, 10 * step_s]


class _Scripted:
    """A contender (or the probe) whose ``run`` calls return scripted step times, in order."""

    def __init__(self, name, calls, first=0.0, peak=None):
        self.name, self.calls, self.first, self.peak = name, [list(c) for c in calls], first, peak
        self.counts, self.closed = [], False

    def run(self, count):
        self.counts.append(count)
        return self.calls.pop(0)

    def close(self):
        self.closed = True


def _measurement(rounds_ms):
    """The calls of one measurement: one that sizes the rounds (1 ms a step), then each round."""
    return [[1 * MS] * 3] + [_round(t * MS) for t in rounds_ms]


def test_rounds_are_sized_and_noisy_ones_flagged_by_the_probe():
    contender = _Scripted("a", [[2 * MS] * 3] + [_round(t) for t in (1.0, 2.0, 5.0, 3.0, 4.0)])
    # The probe's round medians around 10: 11 strays exactly 10% (clean), 8.9 strays 11% (noisy).
    probe = _Scripted("probe", [[0.1 * MS] * 3] + [_round(t) for t in (10.0, 11.0, 8.9, 10.0, 12.0)])
    per_round, probe_times, clean = bench._measure([contender], probe, rounds=5, seconds_per_round=0.03)
    assert probe_times == [10.0, 11.0, 8.9, 10.0, 12.0]  # each round's median step
    assert clean == [True, True, False, True, False]
    assert per_round == {"a": [1.0, 2.0, 5.0, 3.0, 4.0]}
    # about 30 ms of steps a round: 15 of 2 ms; the probe's 300 of 0.1 ms are capped at 200
    assert contender.counts == [3] + [15] * 5 and probe.counts == [3] + [200] * 5


def test_rounds_take_at_least_three_steps():
    contender = _Scripted("a", [[1.0] * 3, _round(1.0)])
    probe = _Scripted("probe", [[1.0] * 3, _round(1.0)])
    bench._measure([contender], probe, rounds=1, seconds_per_round=0.5)
    assert contender.counts == probe.counts == [3, 3]


# A scripted run of W3 at a scale that leaves 2000 tensors of 1000 elements: 2,000,000
# parameters, so 40 MB a step plain (20 bytes each) and 64 MB with everything on (32).
SCALE, SHAPES, PARAMETERS = 1000 / 4096, [(1000,)] * 2000, 2_000_000
# The probe's round medians: rounds 3 (19% off their median, 8.4 ms) and 5 (31% off) are noisy;
# round 2 (9.5% off) is clean. Over the clean rounds the probe takes 8 ms: 40 MB / 8 ms = 5 GB/s.
PROBE_MS = [8.0, 7.6, 10.0, 8.4, 11.0]
# Each contender's round medians (ms); over the clean rounds 1, 2 and 4 their medians are 16, 8
# and 24, their means 20, 8.67 and 28, and over all rounds their medians 32, 7 and 20.
ROUNDS_MS = {"inertia-numpy": [12, 16, 80, 32, 120], "inertia-torch": [7, 11, 1, 8, 1], "keras-jax": [40, 20, 2, 24, 2],
             "inertia-legacy": [30, 32, 1, 28, 1], "inertia-mlx-face": [48, 40, 1, 44, 1]}
FIRST_S = {"inertia-numpy": 0.25, "inertia-torch": 0.5, "keras-jax": 2.0, "inertia-legacy": 0.75, "inertia-mlx-face": 1.0}
PEAK_BYTES = {"inertia-numpy": 0, "inertia-torch": 3 * 2**20, "keras-jax": None, "inertia-legacy": 0, "inertia-mlx-face": 2**20}
MACHINE = {"date": "2030-01-02", "cpu": "Scripted CPU", "threads": 2, "python": "3.11.7", "inertia": "9.9",
           "versions": {"numpy": "2.0", "torch": "2.13"}, "kernels": "compiled", "xla_kernel": "compiled"}


@pytest.fixture
def scripted_run(monkeypatch):
    """``bench.run`` over scripted contenders and probe: it times nothing, and every figure it
    reports follows from the scripts above. Returns the run and what it set up."""
    made = {"probe": [], "contenders": []}

    def probe(elements):
        made["probe"].append(elements)
        return _Scripted("probe", _measurement(PROBE_MS) * 2)  # one probe a workload, measured per configuration

    def contender(kind):
        def make(name, shapes, config):
            assert shapes == SHAPES
            if name == "mlx":
                raise RuntimeError("no Metal here")
            made["contenders"].append((kind, name, config))
            scripted = _Scripted(name, _measurement(ROUNDS_MS[name]), FIRST_S[name], PEAK_BYTES[name])
            made[name, config] = scripted
            return scripted

        return make

    monkeypatch.setattr(bench, "_available", lambda name: True)
    monkeypatch.setattr(bench, "_Probe", probe)
    monkeypatch.setattr(bench, "_Local", contender("local"))
    monkeypatch.setattr(bench, "_Worker", contender("worker"))
    monkeypatch.setattr(bench, "_machine", lambda: MACHINE)
    monkeypatch.setattr(bench, "_cold_start", lambda log: {"cold_cache_s": 1.5, "warm_cache_s": 0.004})
    logged = []

    def run(contenders=("inertia-numpy", "inertia-torch", "torch-compile", "keras-jax", "mlx")):
        return bench.run(workloads=["W3"], configs=["plain", "everything"], rounds=5, seconds_per_round=0.0,
                         contenders=list(contenders), scale=SCALE, log=logged.append)

    return run, made, logged


def _expected_row(config, name, median_ms, spread, bytes_per_parameter, ratios):
    gbps = PARAMETERS * bytes_per_parameter / (median_ms * MS) / 1e9
    return {
        "workload": "W3", "config": config, "contender": name, "median_ms": pytest.approx(median_ms),
        "spread": pytest.approx(spread), "gbps": pytest.approx(gbps), "of_bandwidth": pytest.approx(gbps / 5.0),
        "first_step_s": FIRST_S[name],
        "peak_added_mb": None if PEAK_BYTES[name] is None else pytest.approx(PEAK_BYTES[name] / 2**20),
        "ratios": pytest.approx(ratios),
    }


def test_report_holds_the_median_of_clean_rounds_and_what_follows_from_it(scripted_run):
    run, made, logged = scripted_run
    report = run()
    assert made["probe"] == [PARAMETERS]
    assert made["contenders"] == [
        (kind, name, config) for config in ("plain", "everything")
        for kind, name in (("local", "inertia-numpy"), ("local", "inertia-torch"), ("worker", "keras-jax"))
    ]
    assert report["settings"] == {"rounds": 5, "seconds_per_round": 0.0, "scale": SCALE}
    assert report["bandwidth_gbps"] == {"W3": pytest.approx(5.0)}  # 40 MB / 8 ms
    # spread: (max - min) / median of the clean rounds' medians; time ratios: row / column
    numpy_ratios = {"inertia-numpy": 1.0, "inertia-torch": 2.0, "keras-jax": 16 / 24}
    torch_ratios = {"inertia-numpy": 0.5, "inertia-torch": 1.0, "keras-jax": 8 / 24}
    keras_ratios = {"inertia-numpy": 1.5, "inertia-torch": 3.0, "keras-jax": 1.0}
    assert report["results"] == [
        _expected_row(config, name, median_ms, spread, bytes_per_parameter, ratios)
        for config, bytes_per_parameter in (("plain", 20), ("everything", 32))
        for name, median_ms, spread, ratios in (
            ("inertia-numpy", 16, (32 - 12) / 16, numpy_ratios),
            ("inertia-torch", 8, (11 - 7) / 8, torch_ratios),
            ("keras-jax", 24, (40 - 20) / 24, keras_ratios),
        )
    ]
    reasons = {"torch-compile": bench.NOT_RUN[("torch-compile", "W3")], "mlx": "RuntimeError: no Metal here"}
    assert report["not_run"] == [
        {"workload": "W3", "config": config, "contender": name, "reason": reasons[name]}
        for config in ("plain", "everything") for name in ("torch-compile", "mlx")
    ]
    assert report["machine"] == MACHINE
    assert report["inertia_first_step"] == {"cold_cache_s": 1.5, "warm_cache_s": 0.004}
    assert all(scripted.closed for key, scripted in made.items() if isinstance(key, tuple))
    assert logged.count("  probe 5.0 GB/s; 2 noisy round(s) dropped") == 2
    json.loads(json.dumps(report))  # JSON-ready


def test_markdown_renders_the_report_as_tables(scripted_run):
    run, _, _ = scripted_run
    rows = [  # fastest first
        "| inertia-torch | 8.00 | 50% | {torch} | 0.50 | 1.00 | 0.50 | 3 |",
        "| inertia-numpy | 16.00 | 125% | {numpy} | 1.00 | 2.00 | 0.25 | 0 |",
        "| keras-jax | 24.00 | 83% | {keras} | 1.50 | 3.00 | 2.00 | - |",
    ]
    # GB/s, then of the probe's 5 GB/s
    figures = {"plain": {"torch": "5.0 | 1.00", "numpy": "2.5 | 0.50", "keras": "1.7 | 0.33"},
               "everything": {"torch": "8.0 | 1.60", "numpy": "4.0 | 0.80", "keras": "2.7 | 0.53"}}
    expected = ["Machine: Scripted CPU, 2 threads; 2030-01-02; Python 3.11.7; numpy 2.0, torch 2.13.", ""]
    for config in ("plain", "everything"):
        expected += [
            f"**W3 {config}** (probe 5.0 GB/s)",
            "",
            "| contender | step ms | spread | GB/s | of probe | time / inertia-numpy | time / inertia-torch | first step s | peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *(row.format(**figures[config]) for row in rows),
            f"Not run: torch-compile ({bench.NOT_RUN[('torch-compile', 'W3')]}).",
            "Not run: mlx (RuntimeError: no Metal here).",
            "",
        ]
    expected.append("inertia's first fused step in a fresh process: 1.50 s with an empty kernel cache, 0.004 s with a warm one.")
    assert bench.markdown(run()).split("\n") == expected


def test_a_run_with_every_round_noisy_keeps_them_all(scripted_run, monkeypatch):
    """No clean round at all (impossible with an odd count, so forced here): the report then
    stands on every round rather than on none."""
    run, _, logged = scripted_run
    def every_round_noisy(active, probe, rounds, seconds_per_round):
        per_round = {c.name: [t * MS for t in ROUNDS_MS[c.name]] for c in active}
        return per_round, [t * MS for t in PROBE_MS], [False] * rounds

    monkeypatch.setattr(bench, "_measure", every_round_noisy)
    report = run()
    medians = {r["contender"]: r["median_ms"] for r in report["results"] if r["config"] == "plain"}
    assert medians == {"inertia-numpy": pytest.approx(32), "inertia-torch": pytest.approx(7), "keras-jax": pytest.approx(20)}
    assert report["bandwidth_gbps"] == {"W3": pytest.approx(40e6 / 8.4e-3 / 1e9)}  # median of all five: 8.4 ms
    assert "  probe 4.8 GB/s; 0 noisy round(s) dropped" in logged


def test_a_face_without_a_configurations_options_is_reported_not_run_for_it(scripted_run):
    """The legacy and MLX faces have no weight decay, clipnorm or EMA: they run plain, and
    "everything" is listed as not run with the reason, never set up and never missing."""
    run, made, logged = scripted_run
    report = run(contenders=["inertia-numpy", "inertia-legacy", "inertia-mlx-face"])
    assert made["contenders"] == [
        ("local", "inertia-numpy", "plain"), ("local", "inertia-legacy", "plain"), ("local", "inertia-mlx-face", "plain"),
        ("local", "inertia-numpy", "everything"),
    ]
    # clean rounds 1, 2 and 4: medians 16, 30 and 44 ms
    assert report["results"] == [
        _expected_row("plain", "inertia-numpy", 16, (32 - 12) / 16, 20, {"inertia-numpy": 1.0, "inertia-legacy": 16 / 30, "inertia-mlx-face": 16 / 44}),
        _expected_row("plain", "inertia-legacy", 30, (32 - 28) / 30, 20, {"inertia-numpy": 30 / 16, "inertia-legacy": 1.0, "inertia-mlx-face": 30 / 44}),
        _expected_row("plain", "inertia-mlx-face", 44, (48 - 40) / 44, 20, {"inertia-numpy": 44 / 16, "inertia-legacy": 44 / 30, "inertia-mlx-face": 1.0}),
        _expected_row("everything", "inertia-numpy", 16, (32 - 12) / 16, 32, {"inertia-numpy": 1.0}),
    ]
    reasons = {"inertia-legacy": "tf.keras legacy SGD has no weight decay or EMA", "inertia-mlx-face": "MLX SGD has no clipnorm or EMA"}
    assert report["not_run"] == [
        {"workload": "W3", "config": "everything", "contender": name, "reason": reason} for name, reason in reasons.items()
    ]
    assert all(f"  {name}: not run ({reason})" in logged for name, reason in reasons.items())
    text = bench.markdown(report)
    assert all(f"Not run: {name} ({reason})." in text for name, reason in reasons.items())


def test_a_peer_that_is_not_installed_is_listed_not_dropped(scripted_run, monkeypatch):
    run, made, logged = scripted_run
    monkeypatch.setattr(bench, "_found", lambda module: module not in ("optax", "jax"))
    monkeypatch.setattr(bench, "_available", lambda name: not bench._missing(name))
    report = run(contenders=["inertia-numpy", "optax", "keras-jax", "inertia-torch"])
    assert [name for _, name, _ in made["contenders"]] == ["inertia-numpy", "inertia-torch"] * 2
    assert report["not_run"] == [
        {"workload": "W3", "config": config, "contender": name, "reason": f"not installed: pip install {packages}"}
        for config in ("plain", "everything") for name, packages in (("optax", "optax jax"), ("keras-jax", "jax"))
    ]
    assert "Not run: keras-jax (not installed: pip install jax)." in bench.markdown(report)


def test_every_contender_has_a_factory_and_every_exclusion_names_a_contender():
    assert set(bench.FACTORIES) == set(bench.ALL_CONTENDERS) and set(bench.DEFAULT_CONTENDERS) <= set(bench.ALL_CONTENDERS)
    assert all(name in bench.ALL_CONTENDERS and workload in bench.WORKLOADS for name, workload in bench.NOT_RUN)
    assert all(name in bench.ALL_CONTENDERS and config in bench.CONFIGS for name, config in bench.NOT_RUN_CONFIGS)
    assert set(bench._WORKER_CONTENDERS) <= set(bench.ALL_CONTENDERS)
    assert set(bench.REPLACES) | set(bench.REPLACES.values()) <= set(bench.ALL_CONTENDERS)


def test_markdown_gives_each_face_against_the_peer_it_replaces():
    row = lambda name, ms: {"workload": "W3", "config": "plain", "contender": name, "median_ms": ms, "spread": 0.0,
                            "gbps": 1.0, "of_bandwidth": 0.1, "first_step_s": 0.1, "peak_added_mb": None, "ratios": {}}
    report = {"machine": MACHINE, "bandwidth_gbps": {"W3": 5.0}, "not_run": [], "results": [
        row("inertia-tensorflow", 10.0), row("tf-keras", 40.0), row("inertia-legacy-tensorflow", 30.0), row("inertia-numpy", 1.0),
    ]}
    lines = bench.markdown(report).split("\n")
    # the legacy face's peer did not run: no ratio for it
    assert "Time against the peer each replaces: inertia-tensorflow 0.25x tf-keras." in lines


def test_the_probe_streams_with_sgds_access_pattern():
    """Both the compiled kernel and its NumPy fallback: c = c / 2 + b, then a += c."""
    for compiled in (True, False):
        probe = bench._Probe(1000)
        if not compiled:
            probe.module = None
        elif probe.module is None:
            if backends.required():  # CI: a C compiler is part of the test environment
                pytest.fail("the probe's compiled kernel is unavailable")
            continue  # no compiler here: the fallback below is what runs
        a, b, c = (x.astype(np.float64) for x in probe.buffers)
        times = probe.run(2)
        for _ in range(2):
            c = c / 2 + b
            a = a + c
        assert len(times) == 2 and all(t >= 0 for t in times)
        np.testing.assert_allclose(probe.buffers[2], c, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(probe.buffers[0], a, rtol=1e-6, atol=1e-9)


def test_cli_runs_the_benchmark_and_writes_its_report(monkeypatch, tmp_path, capsys):
    report = {"machine": MACHINE, "bandwidth_gbps": {}, "results": [], "not_run": []}
    asked = {}

    def run(**options):
        asked.update(options)
        options["log"]("set up")
        return report

    monkeypatch.setattr(bench, "run", run)
    json_path, markdown_path = tmp_path / "report.json", tmp_path / "report.md"
    assert cli.main(["bench", "--workloads", "W3, W1", "--configs", "nesterov", "--contenders", "optax,mlx",
                     "--rounds", "3", "--scale", "0.5", "--json", str(json_path), "--markdown", str(markdown_path)]) == 0
    assert {k: v for k, v in asked.items() if k != "log"} == {
        "workloads": ["W3", "W1"], "configs": ["nesterov"], "contenders": ["optax", "mlx"], "rounds": 3, "scale": 0.5,
    }
    out, err = capsys.readouterr()
    assert out == bench.markdown(report) + "\n" and err == "set up\n"
    assert json.loads(json_path.read_text()) == report
    assert markdown_path.read_text() == bench.markdown(report) + "\n"
    assert cli.main(["bench"]) == 0 and asked["contenders"] is None  # every installed contender


def test_cli_writes_the_plot_of_the_report(monkeypatch, tmp_path, capsys):
    requires("matplotlib")
    report = {"machine": MACHINE, "bandwidth_gbps": {"W3": 5.0}, "not_run": [], "results": [
        {"workload": "W3", "config": "plain", "contender": "inertia-numpy", "median_ms": 16.0, "spread": 0.1,
         "gbps": 2.5, "of_bandwidth": 0.5, "first_step_s": 0.1, "peak_added_mb": None, "ratios": {}},
    ]}
    monkeypatch.setattr(bench, "run", lambda **options: report)
    path = tmp_path / "bench.png"
    assert cli.main(["bench", "--plot", str(path)]) == 0
    capsys.readouterr()
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_cli_rejects_each_unknown_name_with_its_own_error(capsys):
    assert cli.main(["bench", "--workloads", "W9,W1", "--configs", "fast", "--contenders", "optax,torch-slow"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "inertia bench: error: --workloads: unknown name 'W9' (choose from W1, W2, W3)",
        "inertia bench: error: --configs: unknown name 'fast' (choose from plain, nesterov, everything, distributed)",
        f"inertia bench: error: --contenders: unknown name 'torch-slow' (choose from {', '.join(bench.ALL_CONTENDERS)})",
    ]
    assert cli.main(["bench", "--scale", "2"]) == 2
    assert capsys.readouterr().err.splitlines() == ["inertia bench: error: --scale: must be in (0, 1], got 2.0"]


def test_cli_help_lists_workloads_configurations_and_contenders(monkeypatch, capsys):
    monkeypatch.setattr(bench, "_found", lambda module: module != "mlx.optimizers")
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "about 20 minutes on 2 cores" in text
    assert "W3: 2000 tensor(s), 8.2M parameters" in text and "W2: 161 tensor(s), 25.6M parameters" in text
    assert all(f"  {config}: " in text for config in bench.CONFIGS)
    assert all(f"  {name}: " in text for name in bench.ALL_CONTENDERS)
    assert "  mlx: needs mlx, not installed (pip install mlx)" in text
    assert "  torch-fused: needs torch, installed" in text and "  inertia-numpy: installed" in text
    assert "  keras-jax: needs keras and jax, installed" in text
    assert "  tf-keras-legacy: needs tf-keras and tensorflow, installed" in text


# Every contender does the work it is timed for: after the same steps, its weights match
# inertia's reference path. Small tensors, and one of 80 KiB (inertia-jax's custom call).
AGREEMENT_SHAPES = [(128, 160), (7,), (3, 5)]
# The rule each configuration stands for, written out here rather than read from the
# benchmark, so that a contender set up with the wrong options cannot agree with itself.
REFERENCE_OPTIONS = {
    "plain": {"learning_rate": 0.01, "momentum": 0.9},
    "nesterov": {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True},
    "everything": {"learning_rate": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "clipnorm": 1.0,
                   "use_ema": True, "ema_momentum": 0.99},
}


def _reference_weights(config: str, steps: int) -> list:
    import inertia

    weights, grads = bench._data(AGREEMENT_SHAPES)
    variables = [inertia.Variable(w.copy()) for w in weights]
    optimizer = inertia.SGD(jit_compile=False, **REFERENCE_OPTIONS[config])
    for _ in range(steps):
        optimizer.apply(grads, variables)
    return [v.numpy() for v in variables]


# torch's foreach Nesterov (also under torch.compile) adds momentum * buffer into p.grad in
# place, so a gradient tensor that is not recomputed (the benchmark's) grows from step to step.
GRADIENT_WRITERS = ("torch-foreach", "torch-compile")


def _torch_nesterov_writing_gradients(steps: int) -> list:
    """torch.optim.SGD(foreach=True, nesterov=True)'s steps on gradients it keeps rewriting, in float64."""
    weights, grads = bench._data(AGREEMENT_SHAPES)
    learning_rate, momentum = REFERENCE_OPTIONS["nesterov"]["learning_rate"], REFERENCE_OPTIONS["nesterov"]["momentum"]
    out = []
    for w, g in zip(weights, grads):
        w, g, buffer = w.astype(np.float64), g.astype(np.float64), None
        for _ in range(steps):
            buffer = g.copy() if buffer is None else momentum * buffer + g
            g = g + momentum * buffer  # written back into p.grad
            w = w - learning_rate * g
        out.append(w)
    return out


# inertia's other faces, each against the rule of the API it copies, written out (float64).
def _torch_optim_sgd(config: str, steps: int, joint_clip: bool = False) -> list:
    """torch.optim.SGD's own steps, in float64: the rule of inertia.torch.SGD. With everything
    on: torch's L2 weight decay, each gradient first clipped to norm 1, or all of them to a
    joint norm of 1 (``joint_clip``: the flat buffer's norm); the EMA moves no weight."""
    import torch

    weights, grads = bench._data(AGREEMENT_SHAPES)
    options = {"lr": 0.01, "momentum": 0.9, "nesterov": config == "nesterov", "weight_decay": 1e-4 if config == "everything" else 0.0}
    params = [torch.tensor(w, dtype=torch.float64, requires_grad=True) for w in weights]
    optimizer = torch.optim.SGD(params, foreach=False, **options)
    joint = float(np.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads)))
    for _ in range(steps):
        for p, g in zip(params, grads):
            g = torch.tensor(g, dtype=torch.float64)
            norm = joint if joint_clip else float(g.norm())
            p.grad = g * min(1.0, 1.0 / norm) if config == "everything" else g
        optimizer.step()
    return [p.detach().numpy() for p in params]


def _keras_form(config: str, steps: int) -> list:
    """tf.keras legacy SGD (ApplyKerasMomentum), float64: v <- m*v - lr*g (from zero), then
    w <- w + v, or w <- w + m*v - lr*g with Nesterov."""
    assert config in ("plain", "nesterov")
    weights, grads = bench._data(AGREEMENT_SHAPES)
    out = []
    for w, g in zip(weights, grads):
        w, g, v = w.astype(np.float64), g.astype(np.float64), 0.0
        for _ in range(steps):
            v = 0.9 * v - 0.01 * g
            w = w + (0.9 * v - 0.01 * g if config == "nesterov" else v)
        out.append(w)
    return out


def _mlx_heavy_ball(config: str, steps: int) -> list:
    """mlx.optimizers.SGD, float64: v <- m*v + g (from zero), then w <- w - lr*v, or
    w <- w - lr*(g + m*v) with Nesterov."""
    assert config in ("plain", "nesterov")
    weights, grads = bench._data(AGREEMENT_SHAPES)
    out = []
    for w, g in zip(weights, grads):
        w, g, v = w.astype(np.float64), g.astype(np.float64), 0.0
        for _ in range(steps):
            v = 0.9 * v + g
            w = w - 0.01 * (g + 0.9 * v if config == "nesterov" else v)
        out.append(w)
    return out


FACE_REFERENCES = {
    "inertia-torch-face": _torch_optim_sgd,
    "inertia-torch-flat": lambda config, steps: _torch_optim_sgd(config, steps, joint_clip=True),
    "inertia-torch-face-compile": _torch_optim_sgd,
    "inertia-legacy": _keras_form,
    "inertia-legacy-tensorflow": _keras_form,
    "tf-keras-legacy": _keras_form,
    "inertia-mlx-face": _mlx_heavy_ball,
}


def _assert_same_displacement(name: str, config: str, got: list, steps: int) -> None:
    start, _ = bench._data(AGREEMENT_SHAPES)
    if name in FACE_REFERENCES:
        want = FACE_REFERENCES[name](config, steps)
    elif config == "nesterov" and name in GRADIENT_WRITERS:
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


def _available_or_skip(name: str) -> None:
    """A contender whose library is missing is skipped, or fails where CI requires backends (it
    installs every peer)."""
    if bench._available(name):
        return
    if backends.required():
        pytest.fail(f"{name}: its library is missing, and INERTIA_REQUIRE_BACKENDS says every peer is installed")
    pytest.skip(f"{name}: its library is not installed")


@pytest.mark.parametrize("name", [n for n in bench.ALL_CONTENDERS if n not in bench.TENSORFLOW_CONTENDERS])
def test_every_contender_takes_the_step_it_is_timed_for(name):
    """Same rule, same numbers: the peers' forms of momentum and Nesterov are the Keras
    rule's, up to rounding, under a constant learning rate (torch's foreach Nesterov aside,
    which rewrites its gradients: checked against a model of that). With everything on, peers
    take their own idioms (global clipping, coupled decay); inertia's backends take exactly the
    reference's stages. inertia's other faces are checked against the rules of the APIs they
    copy (torch.optim.SGD itself for the torch face, L2 decay included); a configuration a face
    lacks the options for refuses to set up."""
    _available_or_skip(name)
    configs = ["plain", "nesterov"] + (["everything"] if name.startswith("inertia-") else [])
    for config in [c for c in configs if (name, c) in bench.NOT_RUN_CONFIGS]:
        configs.remove(config)
        with pytest.raises(ValueError, match=bench.NOT_RUN_CONFIGS[name, config]):
            bench._Local(name, AGREEMENT_SHAPES, config)
    if name in bench._WORKER_CONTENDERS:
        # One process for every configuration: each start-up imports Keras and its backend (seconds).
        worker = bench._Worker(name, AGREEMENT_SHAPES, configs[0])
        try:
            for config in configs:
                if config != configs[0]:
                    worker.reconfigure(config)
                worker.run(2)
                _assert_same_displacement(name, config, worker.weights(), worker.steps)
        finally:
            worker.close()
        return
    for config in configs:
        contender = bench._Local(name, AGREEMENT_SHAPES, config)
        try:
            contender.run(2)
            _assert_same_displacement(name, config, contender.weights(), contender.steps)
        finally:
            contender.close()


def test_tensorflow_contenders_take_the_steps_they_are_timed_for():
    """As above, for the contenders on tf.Variables (inertia's Keras face eagerly and inside a
    tf.function, its tf.keras 2.11+ and legacy faces; tf_keras' SGD jitted or not, inside a tf.function, and its
    legacy SGD): all in one worker process, as the benchmark runs them, which imports
    TensorFlow once; a configuration their API lacks refuses to set up, before TensorFlow is
    imported."""
    requires("tf_keras")
    assert set(bench.TENSORFLOW_CONTENDERS) <= set(bench._WORKER_CONTENDERS)
    host = bench._Host(AGREEMENT_SHAPES)
    try:
        for name in bench.TENSORFLOW_CONTENDERS:
            configs = ["plain", "nesterov"] + (["everything"] if name.startswith("inertia-") else [])
            for config in [c for c in configs if (name, c) in bench.NOT_RUN_CONFIGS]:
                configs.remove(config)
                with pytest.raises(ValueError, match=bench.NOT_RUN_CONFIGS[name, config]):
                    bench._Local(name, AGREEMENT_SHAPES, config)
            for config in configs:
                worker = bench._Worker(name, AGREEMENT_SHAPES, config, host=host)
                try:
                    worker.run(2)
                    _assert_same_displacement(name, config, worker.weights(), worker.steps)
                finally:
                    worker.close()
    finally:
        host.close()


def test_a_shared_worker_reports_a_contender_that_fails_and_serves_the_others():
    host = bench._Host(AGREEMENT_SHAPES)
    try:
        with pytest.raises(RuntimeError, match="ValueError: inertia-legacy does not run 'everything'"):
            bench._Worker("inertia-legacy", AGREEMENT_SHAPES, "everything", host=host)
        first = bench._Worker("inertia-numpy", AGREEMENT_SHAPES, "plain", host=host)
        second = bench._Worker("inertia-legacy", AGREEMENT_SHAPES, "nesterov", host=host)
        assert len(first.run(3)) == 3 and len(second.run(2)) == 2
        _assert_same_displacement("inertia-numpy", "plain", first.weights(), first.steps)
        _assert_same_displacement("inertia-legacy", "nesterov", second.weights(), second.steps)
        first.close()
        with pytest.raises(RuntimeError, match="KeyError"):
            first.run(1)  # dropped from the worker
        second.close()
    finally:
        host.close()
    assert host.process.returncode == 0


# ---------------------------------------------------------------------------------------------
# the distributed benchmark (inertia bench --configs distributed): 2 gloo ranks, DDP and FSDP2
# ---------------------------------------------------------------------------------------------
def _rank_rows(times_per_round, state_bytes, elements, dw=(0.0, 1.0), **extra):
    return {"config": "plain", "parallelism": "ddp", "optimizer": "torch-default", "times": times_per_round,
            "steps": sum(len(r) for r in times_per_round), "state_bytes": state_bytes, "elements": elements, "dw": list(dw),
            **extra}


def test_distributed_rows_take_the_slower_rank_per_step_then_the_median_of_rounds():
    from inertia import bench_distributed

    # (train_s, step_s) per step; round 1's slower rank per step: train 4, 6, 3 -> 4; step 2, 1, 1 -> 1
    rank0 = _rank_rows([[(4.0, 2.0), (1.0, 1.0), (3.0, 1.0)], [(8.0, 4.0)] * 3, [(2.0, 1.0)] * 3], 40, 10, dw=(1e-7, 0.5))
    rank1 = _rank_rows([[(1.0, 1.0), (6.0, 0.5), (2.0, 0.5)], [(8.0, 4.0)] * 3, [(2.0, 1.0)] * 3], 36, 9, dw=(2e-7, 0.25))
    failed = {"config": "plain", "parallelism": "fsdp2", "optimizer": "torch-fused"}
    other = [dict(failed, error="NotImplementedError: no sharding strategy"), dict(failed, error="failed on the other rank")]
    (row, broken), = [bench_distributed._combine([{"rows": [rank0, other[0]]}, {"rows": [rank1, other[1]]}])]
    assert broken == dict(failed, error="NotImplementedError: no sharding strategy")
    # round figures: train 4, 8, 2 -> median 4, spread (8 - 2) / 4; step 1, 4, 1 -> 1, (4 - 1) / 1
    assert row["train_ms"] == pytest.approx(4000) and row["train_spread"] == pytest.approx(1.5)
    assert row["step_ms"] == pytest.approx(1000) and row["step_spread"] == pytest.approx(3.0)
    assert row["train_best_ms"] == pytest.approx(2000) and row["step_best_ms"] == pytest.approx(1000)
    assert row["state_bytes_per_rank"] == [40, 36] and row["elements_per_rank"] == [10, 9]
    assert row["step_gbps_per_rank"] == pytest.approx(10 * 20 / 1.0 / 1e9)
    assert row["dw"] == pytest.approx(2e-7 / 0.5)  # the largest difference over the largest move, over ranks
    assert row["step_vs_reference"] == row["train_vs_reference"] == 1.0


def test_distributed_benchmark_runs_ddp_zero_and_fsdp2_beside_torch():
    """A tiny run of the real thing (2 gloo ranks, a few steps): every row is there, with
    positive figures or the reason it did not run; the optimizers that must work do, and
    take torch.optim.SGD's steps."""
    requires("torch.distributed")
    from inertia import bench_distributed

    configs = ["plain", "decay"]
    report = bench_distributed.run(configs=configs, rounds=2, steps=2, warmup=1, scale=0.02, timeout_s=240)
    assert "error" not in report, report.get("error")
    parameters = bench_distributed.parameter_count(report["model"])
    assert report["parameters"] == parameters and report["model"]["width"] == 20
    assert len(report["load_average"]) == 2
    rows = {(r["config"], r["parallelism"], r["optimizer"]): r for r in report["results"]}
    assert list(rows) == [(c, p, o) for c in configs for p in bench_distributed.PARALLELISMS for o in bench_distributed.OPTIMIZERS]
    must_run = {(c, p, o) for c in configs for p in bench_distributed.PARALLELISMS
                for o in ("torch-default", "torch-foreach", "inertia-torch-face")} | {("plain", "ddp", "inertia-keras-face")}
    for key, row in rows.items():
        if "step_ms" not in row:
            assert key not in must_run, (key, row)
            assert row.get("error") or row.get("not_run"), key
            continue
        assert row["steps"] == 1 + 2 * 2, key  # warm-up, then rounds x steps: the same steps for every contender
        assert 0 < row["step_ms"] < row["train_ms"], key
        assert 0 < row["step_best_ms"] <= row["step_ms"] and 0 < row["train_best_ms"] <= row["train_ms"], key
        assert row["step_spread"] >= 0 and row["train_spread"] >= 0 and row["step_gbps_per_rank"] > 0, key
        assert row["step_vs_reference"] > 0 and row["train_vs_reference"] > 0, key
        state, elements = row["state_bytes_per_rank"], row["elements_per_rank"]
        assert len(state) == len(elements) == 2 and min(state) > 0, key
        if key[1] == "ddp":  # every rank holds every parameter and its momentum (4 bytes each)
            assert elements == [parameters] * 2 and min(state) >= 4 * parameters, key
        else:  # FSDP2 (a shard of each parameter) and ZeRO (a partition of them): each rank steps its part, and holds only its momentum
            assert sum(elements) == parameters and max(elements) < parameters, key
            if key[2] != "inertia-keras-face":
                assert sum(state) == 4 * parameters, key
        assert row["dw"] <= 1e-4, key  # the same steps as torch.optim.SGD, up to rounding
    assert rows["decay", "ddp", "inertia-keras-face"]["not_run"] == bench_distributed.NOT_RUN["inertia-keras-face", "decay"]
    assert rows["plain", "zero", "inertia-keras-face"]["not_run"] == bench_distributed.NOT_RUN_UNDER["zero", "inertia-keras-face"]
    text = bench_distributed.markdown(report)
    for config in configs:
        assert f"**distributed {config}**" in text
    for (config, parallelism, optimizer), row in rows.items():
        assert f"| {parallelism} {optimizer} | " in text
    json.loads(json.dumps(report))  # JSON-ready


def test_cli_runs_the_distributed_benchmark_alone_or_beside_the_others(monkeypatch, capsys):
    from inertia import bench_distributed

    distributed = {"world_size": 2, "backend": "gloo", "model": bench_distributed.model_shape(0.5), "parameters": 7,
                   "settings": {"rounds": 3, "steps": 8, "warmup": 3, "scale": 0.5}, "results": []}
    asked, single = {}, []
    monkeypatch.setattr(bench_distributed, "run", lambda **options: asked.update(options) or distributed)
    monkeypatch.setattr(bench, "_machine", lambda: MACHINE)
    monkeypatch.setattr(bench, "run", lambda **options: single.append(options["configs"]) or
                        {"machine": MACHINE, "bandwidth_gbps": {}, "results": [], "not_run": []})
    assert cli.main(["bench", "--configs", "distributed", "--rounds", "3", "--scale", "0.5"]) == 0
    assert single == [] and {k: v for k, v in asked.items() if k != "log"} == {"rounds": 3, "scale": 0.5}
    out = capsys.readouterr().out
    assert out.endswith(bench_distributed.markdown(distributed) + "\n") and out.startswith("Machine: Scripted CPU")
    assert cli.main(["bench", "--configs", "plain,distributed"]) == 0 and single == [["plain"]]
    capsys.readouterr()
    assert cli.main(["bench", "--configs", "distributed", "--plot", "x.png"]) == 2
    assert "--plot: draws the single-process configurations, and --configs names none" in capsys.readouterr().err


def test_distributed_markdown_shows_each_failure_in_its_row():
    from inertia import bench_distributed

    report = {"world_size": 2, "backend": "gloo", "model": bench_distributed.model_shape(), "parameters": 4214800,
              "settings": {"rounds": 7, "steps": 8, "warmup": 3, "scale": 1.0}, "results": [
                  {"config": "plain", "parallelism": "fsdp2", "optimizer": "torch-fused", "error": "NotImplementedError: a | b"},
                  {"config": "plain", "parallelism": "ddp", "optimizer": "inertia-torch-face", "train_ms": 80.0,
                   "train_best_ms": 70.0, "train_spread": 0.1, "step_ms": 8.0, "step_best_ms": 7.0, "step_spread": 0.2, "step_gbps_per_rank": 10.5,
                   "state_bytes_per_rank": [2**20, 2**20], "dw": 0.0, "step_vs_reference": 1.25, "train_vs_reference": 1.0},
              ]}
    text = bench_distributed.markdown(report)
    assert "| fsdp2 torch-fused | error: NotImplementedError: a / b | | | | | | | | | | | |" in text
    assert "| ddp inertia-torch-face | 8.00 | 7.00 | 20% | 80.00 | 70.00 | 10% | 10.5 | 1.25 | 1.00 | 1.00 / 1.00 | 0.0e+00 |" in text
    assert "4,214,800 float32 parameters" in text and "load average" not in text
    assert "load average was 1.5 then 3.0 (before, then at the end" in bench_distributed.markdown(dict(report, load_average=[1.5, 3.0]))
    failed = bench_distributed.markdown(dict(report, error="a rank failed"))
    assert failed.endswith("Distributed benchmark failed: a rank failed")
