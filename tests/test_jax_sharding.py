"""JAX sharding (issue 16): sharded variables keep their sharding, and their numbers.

Eager ``apply`` / ``apply_gradients`` / ``minimize`` of ``inertia.Variable``s holding arrays
sharded over a 2x2 mesh keep every variable's and every slot's sharding (the counters and
the learning rate replicated), take XLA's own fusions instead of the custom call (which
would gather whole arrays), and give the unsharded run's numbers: bit for bit where every
operation is elementwise, within a few float32 roundings where a norm is summed shard by
shard. ``stateless_apply`` under a user's ``jax.jit``, ``inertia.legacy.SGD`` and
``inertia.mlx.SGD`` keep the sharding too; ``inertia.distributed.jax.pmean`` averages
gradients over a shard_map axis.

JAX fixes its device count when it starts, and this process runs it on one device: the
multi-device scenarios run in one subprocess with 4 host devices
(``jax_sharding_scenarios.py``), which reports what the tests below assert.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import requires

jax = requires("jax")
import inertia  # noqa: E402
from inertia import kernels  # noqa: E402

HERE = pathlib.Path(__file__).parent
import jax_sharding_scenarios as scenarios  # noqa: E402

SHARDED = list(scenarios.SCENARIOS)
NORM_SCENARIOS = [name for name in SHARDED if scenarios.takes_norms(name)]
ELEMENTWISE = [name for name in SHARDED if not scenarios.takes_norms(name)]
# A norm summed per shard and then across shards adds in another order than one device:
# the clip factor may differ in its last bit, so every value within a few roundings of the
# array's largest (float32's epsilon is 1.2e-7; measured: at most 2.4e-7).
NORMWISE_TOLERANCE = 1e-6
# Against the unsharded default path (inertia's custom call for the 512 KiB kernel, which
# does not contract multiply-adds as XLA's fusions do): measured at most 2e-7.
FUSED_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    """Every scenario's report, from one subprocess with 4 host devices."""
    out = tmp_path_factory.mktemp("jax_sharding") / "results.json"
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={scenarios.DEVICES}",
        "PYTHONPATH": os.pathsep.join([str(pathlib.Path(inertia.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "jax_sharding_scenarios.py"), str(out)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, f"the scenarios failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", SHARDED)
def test_every_variable_and_slot_keeps_its_sharding(results, name):
    report = results[name]
    assert report["wrong_placements"] == []
    # weights and their slots sharded like the weight; counters and learning rate replicated
    if name.startswith("keras_everything") and name != "keras_everything_explicit_mesh":
        assert report["placements"]["kernel_momentum"] == "P('rows', 'cols')"
        assert report["placements"]["embedding_gradient_accumulator"] == "P(None, 'rows')"
        assert report["placements"]["bias_average"] == "P('cols',)"
        assert report["placements"]["iteration"] == "P()"


@pytest.mark.parametrize("name", SHARDED)
def test_donated_state_is_reused_and_one_step_is_compiled(results, name):
    report = results[name]
    assert report["donation_warnings"] == []  # donated buffers of another layout would warn
    if "compiled_steps" in report:  # eager Keras-face steps: counters placed before the first trace
        assert report["compiled_steps"] == 1


@pytest.mark.parametrize("name", SHARDED)
def test_two_identical_runs_give_identical_bits(results, name):
    assert results[name]["deterministic"] is True


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_steps_equal_the_unsharded_run_bit_for_bit(results, name):
    versus = results[name]["versus_reference"]
    assert versus == {"max_abs": 0.0, "max_normwise": 0.0, "bit_equal": True}


@pytest.mark.parametrize("name", NORM_SCENARIOS)
def test_norm_clipping_equals_the_unsharded_run_within_roundings(results, name):
    versus = results[name]["versus_reference"]
    assert versus["max_normwise"] <= NORMWISE_TOLERANCE
    assert results[name]["all_reduce"] is True  # the squared norms are summed across shards


@pytest.mark.parametrize("name", SHARDED)
def test_sharded_steps_take_xla_fusions_not_the_custom_call(results, name):
    report = results[name]
    assert report["custom_call_sharded"] is False
    assert report["versus_fused"]["max_normwise"] <= FUSED_TOLERANCE
    if scenarios.SCENARIOS[name].gradients == "like_weights":
        assert report["all_gather"] is False  # no whole array gathered anywhere
    if name in ("keras_momentum", "keras_clipnorm", "keras_ema_overwrite") and kernels.load_xla() is not None:
        # the comparison above is with the custom call: unsharded, it ran
        assert report["custom_call_unsharded"] is True
        assert report["versus_fused"]["bit_equal"] is False


def test_a_variable_resharded_between_steps_keeps_its_new_sharding(results):
    assert results["resharded_between_steps"] == {"kernel_keeps_the_new_sharding": True, "compiled_steps": 2}


def test_pmean_gives_every_device_the_mean_computed_by_hand(results):
    report = results["pmean"]
    assert "error" not in report, report
    assert report["per_device_equal_to_mean_by_hand"] == [True] * 16
    assert report["devices_first_elements"] == [report["mean_by_hand_first_elements"][0]] * 4
    assert report["mean_by_hand_first_elements"] == [0.0625, 0.00390625]


def test_data_parallel_stateless_apply_in_shard_map_equals_one_device_on_the_mean_gradient(results):
    report = results["data_parallel"]
    assert "error" not in report, report
    assert report["kernel_moved"] is True
    assert report["bit_equal_to_single_device"] == [True] * 32  # 8 arrays x 4 devices
    assert report["max_abs"] == 0.0


# --- in this process (one device) --------------------------------------------------------


def test_pmean_names_a_bad_axis_name():
    from inertia.distributed.jax import pmean

    with pytest.raises(TypeError, match=r"axis_name=3"):
        pmean(3)
    with pytest.raises(TypeError, match=r"axis_name=\(\)"):
        pmean(())
    with pytest.raises(ValueError, match=r"pmean\(axis_name='data'\) must run where that axis is bound"):
        pmean("data").reduce([jax.numpy.ones(2)])


def test_pmean_is_reached_from_the_package_lazily():
    assert repr(inertia.distributed.jax.pmean(("data", "model"))) == "pmean(('data', 'model'))"
    assert isinstance(inertia.distributed.jax.pmean("data"), inertia.distributed.GradientAggregator)


def test_one_device_arrays_keep_their_default_placement():
    from inertia.backend.jax import BACKEND

    weights = jax.numpy.ones(3)
    assert BACKEND.zeros((3,), "float32", like=weights).committed is False
    assert BACKEND.colocated([weights])[0] is weights
    assert BACKEND.spans_devices(BACKEND.placements([weights])) is False
