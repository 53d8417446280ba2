"""inertia under torch.distributed (2 gloo ranks on 127.0.0.1), against one process.

The ranks run ``tests/torch_ranks.py`` (every scenario in one launch); each result is
compared here with the same training in this process:

* DDP with ``no_sync()`` on every micro-step and ``aggregate=all_reduce_mean()``: one
  all_reduce per update, replicas identical, equal bit for bit to one process that
  averages the ranks' accumulated means the same way; without the aggregation stage the
  replicas diverge (the hazard the stage removes).
* ZeroRedundancyOptimizer with every inertia option: optimizer-wide options copied into
  the groups accepted, ``clip_group`` making global_clipnorm global (one all_reduce per
  update; an empty shard joins), counters carried by ``consolidate_state_dict`` so a
  resumed run equals the uninterrupted one bit for bit, and about half the state per rank.
"""

import sys
from pathlib import Path

import pytest

from conftest import requires

torch = requires("torch")
requires("torch.distributed")

import inertia.torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import gloo_ranks  # noqa: E402
import torch_ranks  # noqa: E402

WORLD = 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Every scenario's results, per rank (one launch of two processes)."""
    return gloo_ranks.launch(Path(__file__).parent / "torch_ranks.py", tmp_path_factory.mktemp("ranks"), WORLD)


def assert_bitwise(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], dict):
            assert_bitwise(left[key], right[key])
        else:
            assert torch.equal(left[key], right[key]), key


def assert_close(left: dict, right: dict, rtol: float) -> None:
    assert left.keys() == right.keys()
    for key in left:
        if isinstance(left[key], dict):
            assert_close(left[key], right[key], rtol)
        else:
            torch.testing.assert_close(left[key], right[key], rtol=rtol, atol=1e-7)


def one_process_averaging_ranks(ranks_data: list, face: str = "torch") -> dict:
    """One process doing what the aggregation stage does: each rank's accumulation mean
    ``(g_last + (g_first + 0))/N`` (both faces form it so), then their mean
    ``(m_0 + m_1)/2`` as all_reduce_mean forms it; one optimizer without accumulation
    (``face``: the torch face or the Keras face) applies it once per update."""
    model = torch_ranks.model_for()
    params = list(model.parameters())
    if face == "torch":
        optimizer = inertia.torch.SGD(params, **torch_ranks.OPTIONS)
    else:
        optimizer = inertia.SGD(**torch_ranks.KERAS_OPTIONS)
    accumulated = [[torch.zeros_like(p) for p in params] for _ in ranks_data]
    steps = torch_ranks.ACCUMULATION
    for step in range(torch_ranks.MICRO_STEPS):
        grads = []
        for rank in ranks_data:
            model.zero_grad()
            torch_ranks.loss_of(model, torch_ranks.batch(rank, step)).backward()
            grads.append([p.grad.detach().clone() for p in params])
        if (step + 1) % steps:
            for sums, rank_grads in zip(accumulated, grads):
                for total, grad in zip(sums, rank_grads):
                    total.copy_(grad + total)
            continue
        means = [[(grad + total) / steps for grad, total in zip(rank_grads, sums)] for rank_grads, sums in zip(grads, accumulated)]
        averaged = [(m0 + m1) / WORLD for m0, m1 in zip(*means)]
        if face == "torch":
            for p, grad in zip(params, averaged):
                p.grad = grad
            optimizer.step()
        else:
            optimizer.apply(averaged, params)
        for sums in accumulated:
            for total in sums:
                total.zero_()
    if face == "torch":
        return torch_ranks.snapshot(model, optimizer)
    return {"params": {name: p.detach().clone() for name, p in model.named_parameters()},
            "momentums": [m.value.detach().clone() for m in optimizer.momentums]}


def one_process(steps: int = torch_ranks.MICRO_STEPS, single: bool = False, clipnorm: float | None = 0.05,
                dtype: torch.dtype = torch.float32) -> tuple:
    model = torch_ranks.model_for(single=single, dtype=dtype)
    optimizer = inertia.torch.SGD(model.parameters(), **torch_ranks.OPTIONS, global_clipnorm=clipnorm,
                                  gradient_accumulation_steps=torch_ranks.ACCUMULATION)
    for step in range(steps):
        inputs, targets = torch_ranks.batch(None, step)
        torch_ranks.loss_of(model, (inputs.to(dtype), targets.to(dtype))).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def sharded_state(ranks_results: list) -> dict:
    """The union of the ranks' state shards (each param's state lives on one rank)."""
    state: dict = {}
    for result in ranks_results:
        for name, entries in result["state"].items():
            assert name not in state, f"{name}'s state lives on two ranks"
            state[name] = entries
    return state


def test_ddp_no_sync_with_the_aggregation_stage_communicates_once_per_update_and_equals_one_process(ranks):
    first, second = (r["ddp_aggregated"] for r in ranks)
    assert_bitwise(first["params"], second["params"])  # identical replicas
    assert_bitwise(first["state"], second["state"])
    # one all_reduce per update (the aggregation stage), none on micro-steps (DDP's no_sync)
    assert first["all_reduce_calls"] == [0, 1] * (torch_ranks.MICRO_STEPS // 2)
    assert first["updates"] == torch_ranks.MICRO_STEPS // 2
    expected = one_process_averaging_ranks([0, 1])
    assert_bitwise(first["params"], expected["params"])
    assert_bitwise(first["state"], {k: {s: v for s, v in e.items() if s != "gradient_accumulator"} | (
        {"gradient_accumulator": first["state"][k]["gradient_accumulator"]} if "gradient_accumulator" in first["state"][k] else {})
        for k, e in expected["state"].items()})


def test_the_keras_face_under_ddp_no_sync_aggregates_once_per_update_and_equals_one_process(ranks):
    first, second = (r["keras_face_ddp"] for r in ranks)
    assert_bitwise(first["params"], second["params"])
    assert first["all_reduce_calls"] == [0, 1] * (torch_ranks.MICRO_STEPS // 2)
    expected = one_process_averaging_ranks([0, 1], face="keras")
    assert_bitwise(first["params"], expected["params"])
    for got, want in zip(first["momentums"], expected["momentums"]):
        assert torch.equal(got, want)


def test_a_loss_scale_skips_a_step_on_every_rank_when_one_rank_overflows(ranks):
    first, second = (r["loss_scaled_keras_face"] for r in ranks)
    assert first["skipped"] == second["skipped"] == [False, True, False, False]
    assert_bitwise(first["params"], second["params"])


def test_the_accumulators_restart_after_each_update(ranks):
    for name, entries in ranks[0]["ddp_aggregated"]["state"].items():
        assert torch.count_nonzero(entries["gradient_accumulator"]) == 0, name


def test_without_the_aggregation_stage_no_sync_replicas_diverge(ranks):
    first, second = (r["ddp_unaggregated"] for r in ranks)
    assert not all(torch.equal(first["params"][k], second["params"][k]) for k in first["params"])
    assert first["all_reduce_calls"] == [0] * torch_ranks.MICRO_STEPS


def test_multi_process_runs_are_deterministic(ranks):
    for rank in ranks:
        assert_bitwise(rank["ddp_aggregated"]["params"], rank["ddp_aggregated_again"]["params"])
        assert_bitwise(rank["ddp_aggregated"]["state"], rank["ddp_aggregated_again"]["state"])


def test_identical_data_on_every_rank_gives_one_process_numbers_bit_for_bit(ranks):
    model, optimizer = one_process(clipnorm=None)
    expected = torch_ranks.snapshot(model, optimizer)
    for rank in ranks:
        assert_bitwise(rank["ddp_aggregated_same_data"]["params"], expected["params"])
        assert_bitwise(rank["ddp_aggregated_same_data"]["state"], expected["state"])


def test_zero_with_every_option_and_a_clip_group_equals_one_process(ranks):
    model, optimizer = one_process()
    expected = torch_ranks.snapshot(model, optimizer)
    for rank in ranks:
        # global_clipnorm's norm is the sum of the two ranks' partial sums: rounding apart, one process'
        assert_close(rank["zero"]["params"], expected["params"], rtol=2e-6)
        assert rank["zero"]["counters"] == {"micro_steps": 6, "updates": 3}
        # one all_reduce of (squared norm, count) per update, none on micro-steps
        assert rank["zero"]["all_reduce_calls"] == [0, 1] * 3
    assert_close(sharded_state([r["zero"] for r in ranks]), expected["state"], rtol=2e-6)


def test_zero_without_a_clip_group_clips_each_shard_by_its_own_norm(ranks):
    model, optimizer = one_process()
    expected = torch_ranks.snapshot(model, optimizer)["params"]
    got = ranks[0]["zero_without_clip_group"]["params"]
    assert max(float((got[k] - expected[k]).abs().max()) for k in got) > 1e-4  # the hazard clip_group removes


def test_zero_state_per_rank_is_a_shard(ranks):
    model, optimizer = one_process()
    full = sum(v.numel() * v.element_size() for entries in optimizer.state.values() for v in entries.values())
    local = [r["zero"]["local_state_bytes"] for r in ranks]
    assert sum(local) == full
    assert max(local) < 0.75 * full, (local, full)


def test_zero_consolidated_state_carries_the_counters_and_resumes_bit_for_bit(ranks):
    assert ranks[0]["zero_first_half"]["consolidated_counters"] == [{"micro_steps": 3, "updates": 1}]
    for rank in ranks:
        assert_bitwise(rank["zero_resumed"]["params"], rank["zero"]["params"])
        assert_bitwise(rank["zero_resumed"]["state"], rank["zero"]["state"])
        assert rank["zero_resumed"]["counters"] == rank["zero"]["counters"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_rank_with_an_empty_zero_shard_joins_the_norm_and_counts_the_updates(ranks, dtype):
    results = [r["zero_empty_shard" if dtype == "float32" else "zero_empty_shard_float64"] for r in ranks]
    assert sorted(r["local_params"] for r in results) == [0, 1]
    for result in results:
        assert result["counters"] == {"micro_steps": 6, "updates": 3}
        assert result["all_reduce_calls"] == [0, 1] * 3
    model, optimizer = one_process(single=True, dtype=getattr(torch, dtype))
    expected = torch_ranks.snapshot(model, optimizer)
    for result in results:
        assert_close(result["params"], expected["params"], rtol=2e-6)
