"""Hutchinson's shards: the traces are the same whichever way the shards run — in
order here, out of order through JSON as another worker returns them, or computed
by a runner built from the payload alone on a fresh copy of the bundle — and the
plan does not depend on the executor. `empirical`'s layers likewise."""

from __future__ import annotations

import json

import pytest
from sens_models import tiny_cnn, tiny_distill_mlp, tiny_mlp
from sens_run import CHOICES, SCHEME, used_layers

from sensitivity.engine import compute_table
from sensitivity.estimators.hutchinson import shard_runner
from sensitivity.estimators.remote import runner_for, runner_key
from sensitivity.shards import (
    LocalShards,
    MeasureShard,
    Shard,
    ShardExecutor,
    ShardResult,
    merge_round,
    plan_round,
    shard_from_json,
)

FISHER = {"tol": 0.02, "min_probes": 8, "max_probes": 40, "block": 16}
HAWQ = {"tol": 0.05, "min_probes": 4, "max_probes": 12, "block": 2}


class Remote(ShardExecutor):
    """Every shard through its JSON payload, computed by a runner that another process
    would build (from its own bundle and the payload), in reverse order, results back
    through JSON: what the service's workers do, minus the database."""

    name = "remote"

    def __init__(self, make_bundle):
        super().__init__()
        self.make_bundle = make_bundle
        self.runners = {}
        self.plans: list[list[str]] = []

    def run(self, shards, compute, done=lambda n: None):
        self.plans.append([s.key for s in shards])
        out = {}
        for n, shard in enumerate(reversed(shards), 1):
            data = json.loads(json.dumps(shard.to_json()))
            payload = shard_from_json(data)
            assert payload == shard
            key = runner_key(data)
            if key not in self.runners:
                self.runners[key] = runner_for(self.make_bundle(), data)
            result = self.runners[key](payload)
            result.worker = f"w{n % 2}"
            out[shard.key] = ShardResult.from_json(json.loads(json.dumps(result.to_json())))
            self.workers.add(result.worker)
            self.shards_run += 1
            done(n)
        return [out[s.key] for s in shards]


def _table(method, make_bundle, params, shards=None):
    bundle = make_bundle()
    return compute_table(method, bundle, used_layers(bundle), CHOICES, SCHEME, dict(params),
                         use_cache=False, shards=shards)


@pytest.mark.parametrize("method, make, params", [
    ("fisher", tiny_mlp, FISHER),  # two calibration batches: shards per batch and chunk
    ("fisher", tiny_cnn, FISHER),  # one batch, its graph kept between shards
    ("hawq_v2", tiny_mlp, HAWQ),  # double-backward HVPs
    ("hawq_v2", tiny_distill_mlp, {**HAWQ, "engine": "jvp", "block": 16}),  # chunks of 8
    ("hawq_v2", tiny_mlp, {**HAWQ, "mode": "shared"}),
    ("empirical", tiny_mlp, {}),  # a shard per layer, RTN weights of the runner's own
])
def test_sharded_traces_equal_sequential_exactly(method, make, params):
    local = LocalShards()
    here = _table(method, make, params, local)
    remote = Remote(make)
    there = _table(method, make, params, remote)
    assert here.layer_stats == there.layer_stats  # exactly: the same samples merged in the same order
    assert here.omega == there.omega
    assert remote.shards_run == local.shards_run > 1
    assert remote.workers == {"w0", "w1"} and local.workers == {"local"}
    assert len(remote.plans[0]) > 1  # the first round already splits


def test_the_plan_is_chunks_times_batches_with_distinct_seeds():
    shards = plan_round("hutchinson", 3, ["a", "b"], [1], probes=20, chunk=8, batches=2, seed=0, engine="gn")
    assert [(s.chunk, s.batch, s.probes) for s in shards] == [
        (0, 0, 8), (0, 1, 8), (1, 0, 8), (1, 1, 8), (2, 0, 4), (2, 1, 4)]
    assert len({s.seed for s in shards}) == len(shards)
    again = plan_round("hutchinson", 3, ["a", "b"], [1], probes=20, chunk=8, batches=2, seed=0, engine="gn")
    assert again == shards
    other = plan_round("hutchinson", 3, ["a", "b"], [1], probes=20, chunk=8, batches=2, seed=1, engine="gn")
    assert {s.seed for s in other}.isdisjoint(s.seed for s in shards)


def test_merge_sums_batches_per_chunk_in_order():
    shards = plan_round("k", 0, ["a"], [0], probes=3, chunk=2, batches=2, seed=0, engine="gn")
    results = [ShardResult([[1.0, 2.0]], 2), ShardResult([[10.0, 20.0]], 2),
               ShardResult([[3.0]], 1), ShardResult([[30.0]], 1)]
    samples, evaluations = merge_round(shards, results)
    assert samples[0].tolist() == [11.0, 22.0, 33.0] and evaluations == 6
    with pytest.raises(ValueError, match="3 results for 4 shards"):
        merge_round(shards, results[:3])
    with pytest.raises(ValueError, match="samples of 2 layers"):
        merge_round(shards[:1], [ShardResult([[1.0, 2.0], [3.0, 4.0]], 2)])


def test_bad_payloads_and_engines_are_refused():
    with pytest.raises(ValueError, match="not a shard payload"):
        Shard.from_json({"kind": "hutchinson"})
    with pytest.raises(ValueError, match="type 'other'"):
        shard_from_json({"type": "other"})
    with pytest.raises(ValueError, match="not a measure shard payload"):
        shard_from_json({"type": "measure", "kind": "empirical"})
    gptq = MeasureShard("empirical", "0", ((4, 16),), (("algorithm", "gptq"),)).to_json()
    with pytest.raises(ValueError, match="cannot be measured elsewhere"):
        runner_for(tiny_mlp(), gptq)
    with pytest.raises(ValueError, match="cannot run a shard elsewhere"):
        shard_runner(tiny_mlp(), ["0"], "input_gn")


def test_progress_is_monotone_and_counts_shards():
    seen = []
    bundle = tiny_mlp()
    compute_table("fisher", bundle, used_layers(bundle), CHOICES, SCHEME, dict(FISHER),
                  lambda stage, f, msg: seen.append((f, msg)), use_cache=False)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("round shards 1/" in msg for _, msg in seen)
