"""inertia under FSDP2 (``fully_shard``, DTensor parameters; 2 gloo ranks on 127.0.0.1),
against one process on the unsharded model.

The ranks run ``tests/fsdp2_ranks.py`` (every scenario in one launch: the torch face, the
Keras face and tf.keras legacy's, each on the host kernel, the reference path and torch's
multi-tensor path); each result is compared here with the same training in this process:

* elementwise steps (momentum, Nesterov, weight decay, clipvalue, the EMA with overwrite,
  gradient accumulation): weights and state equal one process' bit for bit, the host
  kernel running on the local shards (it answered DONE at every step);
* norm clipping (clipnorm, global_clipnorm): one all_reduce per update, no other
  collective, and the numbers within rtol 1e-6: the squared norms are summed in another
  order (each rank's shard in float32, then the ranks'; one process sums the whole tensor,
  in double in the kernel), which can move the clip factor by an ulp or two;
* HSDP (replicated over one mesh dimension, sharded over the other): norms summed over the
  sharded dimension only, so equal to one process';
* state tensors are DTensors placed like their parameters, each rank holds its shards'
  bytes only (about half), and two identical runs give identical bits.
"""

import sys
from pathlib import Path

import pytest

from conftest import requires

torch = requires("torch")
requires("torch.distributed")

sys.path.insert(0, str(Path(__file__).parent))
import fsdp2_ranks  # noqa: E402
import gloo_ranks  # noqa: E402

WORLD = 2
DONE, DECLINED = 0, 1
NORM_CLIPPING = [name for name in fsdp2_ranks.SCENARIOS if name not in fsdp2_ranks.ELEMENTWISE]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every scenario's results, per rank (one launch of two processes)."""
    return gloo_ranks.launch(Path(__file__).parent / "fsdp2_ranks.py", tmp_path_factory.mktemp("fsdp2"), WORLD)


@pytest.fixture(scope="module")
def one_process():
    """Each scenario in this process, on the whole model."""
    return {name: fsdp2_ranks.train(name) for name in fsdp2_ranks.SCENARIOS}


def compare(result: dict, reference: dict, exact: bool) -> None:
    assert len(result["params"]) == len(reference["params"]) == 4
    assert result["state"].keys() == reference["state"].keys() and reference["state"]
    pairs = list(zip(result["params"], reference["params"])) + [(result["state"][k], reference["state"][k]) for k in reference["state"]]
    for got, expected in pairs:
        assert got.shape == expected.shape
        if exact:
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", fsdp2_ranks.ELEMENTWISE)
def test_elementwise_steps_equal_one_process_bit_for_bit(ranks, one_process, name):
    for rank in range(WORLD):
        compare(ranks[rank][name], one_process[name], exact=True)
        assert ranks[rank][name]["all_reduce_calls"] == [0] * fsdp2_ranks.STEPS
        assert ranks[rank][name]["collectives"] == [0] * fsdp2_ranks.STEPS


@pytest.mark.parametrize("name", ["torch_everything", "keras_everything", "torch_clipnorm", "torch_clipnorm_accumulating",
                                  "torch_global_clipnorm"])
def test_the_host_kernel_steps_the_local_shards(ranks, name):
    # One kernel call per step (micro-steps accumulate in it too), and it ran each; on the
    # torch face with norm clipping too (the norms meet across the mesh first, in one all_reduce).
    for rank in range(WORLD):
        assert ranks[rank][name]["kernel_answers"] == [[DONE]] * fsdp2_ranks.STEPS


@pytest.mark.parametrize("name", NORM_CLIPPING)
def test_norm_clipping_sums_the_norms_in_one_all_reduce(ranks, one_process, name):
    options = fsdp2_ranks.SCENARIOS[name][1]
    accumulating = options.get("gradient_accumulation_steps")
    updates = [not accumulating or (step + 1) % accumulating == 0 for step in range(fsdp2_ranks.STEPS)]
    for rank in range(WORLD):
        result = ranks[rank][name]
        compare(result, one_process[name], exact=False)
        assert result["all_reduce_calls"] == [int(update) for update in updates]
        assert result["collectives"] == [int(update) for update in updates]  # nothing DTensor reduces on its own


def test_norm_clipping_moves_the_weights(one_process):
    # The thresholds bind: without clipping the weights would differ (else the norm tests could not fail).
    unclipped = fsdp2_ranks.train_with("torch_clipnorm", clipnorm=None)
    assert not torch.equal(unclipped["params"][0], one_process["torch_clipnorm"]["params"][0])


@pytest.mark.parametrize("name", ["torch_clipnorm_hybrid", "keras_global_clipnorm_hybrid"])
def test_hybrid_sharding_sums_norms_over_the_sharded_dimension_only(ranks, one_process, name):
    base = name.removesuffix("_hybrid")
    for rank in range(WORLD):
        compare(ranks[rank][name], one_process[base], exact=False)
        assert ranks[rank][name]["collectives"] == ranks[rank][base]["collectives"]


def test_every_rank_holds_the_same_whole_model(ranks):
    for name in ranks[0]:
        if name in fsdp2_ranks.SCENARIOS or name.endswith(("_again", "_hybrid")):
            compare(ranks[1][name], ranks[0][name], exact=True)


def test_the_kernel_declines_shards_that_do_not_line_up(ranks):
    # Local shards of a weight and a gradient with the same local shape but other elements.
    for rank in range(WORLD):
        assert ranks[rank]["shards_that_do_not_line_up"] == {"reversed_mesh": None, "other_dimension": None, "lined_up": True}


def test_state_is_dtensors_placed_like_their_parameters(ranks):
    for rank in range(WORLD):
        for name, result in ranks[rank].items():
            if name == "shards_that_do_not_line_up":
                continue
            assert result["placed"] and all(result["placed"].values()), (name, result["placed"])


def test_each_rank_holds_its_shards_of_the_state(ranks, one_process):
    # Rows split as torch.chunk splits them: Linear(6, 5) 3+2 rows, Linear(5, 3) 2+1.
    shards = [3 * 6 + 3 + 2 * 5 + 2, 2 * 6 + 2 + 1 * 5 + 1]
    whole = 5 * 6 + 5 + 3 * 5 + 3
    for name, reference in one_process.items():
        slots = len(reference["state"]) // 4
        assert reference["local_state_bytes"] == whole * 4 * slots
        assert [ranks[rank][name]["local_state_bytes"] for rank in range(WORLD)] == [n * 4 * slots for n in shards]
    # torch_everything: momentum, EMA and accumulator; rank 0 holds 396 of 636 bytes, rank 1 240.
    assert [ranks[rank]["torch_everything"]["local_state_bytes"] for rank in range(WORLD)] == [396, 240]


@pytest.mark.parametrize("name", ["torch_clipnorm", "keras_everything"])
def test_identical_runs_give_identical_bits(ranks, name):
    for rank in range(WORLD):
        compare(ranks[rank][f"{name}_again"], ranks[rank][name], exact=True)
