"""What another process computes a shard's payload with (`sensitivity.shards`): the
runner for its kind of work on that process's own copy of the job's bundle, and the
key under which a process keeps one runner per kind of payload."""

from __future__ import annotations

import json
from typing import Any

from sensitivity.bundle import ModelBundle


def runner_key(payload: dict[str, Any]) -> str:
    """Payloads with the same key are computed by the same runner."""
    if payload.get("type", "probes") == "measure":
        return json.dumps(["measure", payload.get("scheme")], sort_keys=True)
    return json.dumps(["probes", payload.get("names"), payload.get("engine")])


def runner_for(bundle: ModelBundle, payload: dict[str, Any]):
    """A callable shard -> ShardResult for payloads with this one's key."""
    if payload.get("type", "probes") == "measure":
        from sensitivity.estimators.empirical import measure_runner

        return measure_runner(bundle, payload["scheme"])
    from sensitivity.estimators.hutchinson import shard_runner

    return shard_runner(bundle, payload["names"], payload["engine"])
