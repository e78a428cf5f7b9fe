"""Hutchinson probe work cut into shards, and where the shards run.

A round of `hutchinson_traces` draws `k` probes per active layer over every
calibration batch. Its shards are (chunk of the round's probes) × (calibration
batch): shard (r, b, c) draws probes c·m … c·m + m − 1 of round r on batch b from
a generator of its own, seeded from (seed, kind, r, b, c), and returns each active
layer's m share-weighted samples on that batch. The round's samples are the sum of
its shards over the batches in batch order, chunk by chunk: the same arithmetic
whether the shards ran here one after the other or on other workers, so one worker
and many give the same table. The plan depends on the probe settings, the engine
and the calibration data only, never on how many workers there are; chunks are the
engine's own block (`ProbeEngine.default_block`), so a round of the default block
is one shard per batch (an LLM's 8 sequences: 8 shards), and a larger `block`
gives more.

`empirical`'s layers are shards too (`MeasureShard`: one layer, every choice, under
RTN), and `shard_from_json` reads either kind back.

`ShardExecutor` is the seam: `LocalShards` runs them in order in this process (the
default, and what `bitalloc run` uses); the service's workers run them through the
broker (`service.worker.shards`). A shard is plain JSON (`Shard.to_json`), so
another process holding the same bundle can compute it
(`sensitivity.estimators.hutchinson.shard_runner`).
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sensitivity.bundle import ModelBundle
from sensitivity.perturb import frozen

if TYPE_CHECKING:
    from sensitivity.estimators.context import WeightedBatch


PROBES_PER_SHARD = 8  # the gn engines' block: smaller shards would repeat forward passes


@dataclass(frozen=True)
class Shard:
    kind: str  # the computation (its checkpoint kind, e.g. "hutchinson")
    round: int
    batch: int  # index into the calibration batches
    chunk: int  # which `probes`-sized slice of the round's probes
    probes: int
    seed: int
    engine: str  # key in SHARD_ENGINES ("" when only this process can run it)
    names: tuple[str, ...]  # every layer of the computation, in order
    active: tuple[int, ...]  # indices into `names` still being estimated

    @property
    def key(self) -> str:
        """Unique within a job: the computation, round, batch and chunk."""
        return f"{self.kind}/{self.round}/{self.batch}/{self.chunk}"

    def to_json(self) -> dict[str, Any]:
        return {"type": "probes", **asdict(self), "names": list(self.names), "active": list(self.active)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Shard:
        try:
            return cls(kind=str(data["kind"]), round=int(data["round"]), batch=int(data["batch"]),
                       chunk=int(data["chunk"]), probes=int(data["probes"]), seed=int(data["seed"]),
                       engine=str(data["engine"]), names=tuple(data["names"]),
                       active=tuple(int(i) for i in data["active"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a shard payload: {exc}") from None


@dataclass(frozen=True)
class MeasureShard:
    """One layer of `empirical`: the calibration loss with only this layer at each weight
    choice (RTN on the job's grid, so another process quantizes it the same way)."""

    kind: str
    layer: str
    choices: tuple[tuple[int, int], ...]
    scheme: tuple[tuple[str, Any], ...]  # QuantScheme.as_dict() items of an RTN scheme

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.layer}"

    def to_json(self) -> dict[str, Any]:
        return {"type": "measure", "kind": self.kind, "layer": self.layer,
                "choices": [list(c) for c in self.choices], "scheme": dict(self.scheme)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MeasureShard:
        try:
            choices = tuple((int(w), int(a)) for w, a in data["choices"])
            return cls(str(data["kind"]), str(data["layer"]), choices, tuple(sorted(data["scheme"].items())))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a measure shard payload: {exc}") from None


def shard_from_json(data: dict[str, Any]) -> Shard | MeasureShard:
    """A shard from its payload, whichever kind of work it is."""
    kinds = {"probes": Shard, "measure": MeasureShard}
    kind = data.get("type", "probes") if isinstance(data, dict) else None
    if kind not in kinds:
        raise ValueError(f"not a shard payload (type {kind!r}; known: {', '.join(kinds)})")
    return kinds[kind].from_json(data)


@dataclass
class ShardResult:
    samples: list[list[float]]  # per active layer (in `Shard.active` order), its `probes` samples
    evaluations: int  # HVPs, tangents or backward passes spent
    seconds: float = 0.0
    worker: str = ""  # who computed it (set by the executor)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShardResult:
        return cls([list(map(float, s)) for s in data["samples"]], int(data["evaluations"]),
                   float(data.get("seconds", 0.0)), str(data.get("worker", "")))


def shard_seed(seed: int, kind: str, round_: int, batch: int, chunk: int) -> int:
    """A generator seed for one shard: a hash, so neighbouring shards share no stream."""
    digest = hashlib.sha256(f"{seed}/{kind}/{round_}/{batch}/{chunk}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def plan_round(kind: str, round_: int, names: Sequence[str], active: Sequence[int], probes: int,
               chunk: int, batches: int, seed: int, engine: str) -> list[Shard]:
    """The round's shards in merge order: chunk by chunk, each over the batches in order."""
    shards = []
    for c, lo in enumerate(range(0, probes, chunk)):
        m = min(chunk, probes - lo)
        for b in range(batches):
            shards.append(Shard(kind, round_, b, c, m, shard_seed(seed, kind, round_, b, c), engine,
                                tuple(names), tuple(active)))
    return shards


def merge_round(shards: Sequence[Shard],
                results: Sequence[ShardResult]) -> tuple[dict[int, torch.Tensor], int]:
    """(layer index -> the round's samples, evaluations): per chunk, the batches' samples
    summed in batch order, as one process summing over its batches would."""
    if len(shards) != len(results):
        raise ValueError(f"{len(results)} results for {len(shards)} shards")
    chunks: dict[int, dict[int, torch.Tensor]] = {}
    evaluations = 0
    for shard, result in zip(shards, results):
        if len(result.samples) != len(shard.active):
            raise ValueError(f"shard {shard.key}: samples of {len(result.samples)} layers, "
                             f"expected {len(shard.active)}")
        acc = chunks.setdefault(shard.chunk, {i: torch.zeros(shard.probes, dtype=torch.float64)
                                              for i in shard.active})
        for i, values in zip(shard.active, result.samples):
            acc[i] += torch.tensor(values, dtype=torch.float64)
        evaluations += result.evaluations
    active = shards[0].active if shards else ()
    return {i: torch.cat([chunks[c][i] for c in sorted(chunks)]) for i in active}, evaluations


class ShardRunner:
    """Computes shards of one computation on one bundle. It holds the engine, so a
    single calibration batch's graph is built once and kept between shards."""

    def __init__(self, bundle: ModelBundle, engine, batches: Sequence[WeightedBatch]):
        self.bundle, self.engine, self.batches = bundle, engine, list(batches)

    def __call__(self, shard: Shard) -> ShardResult:
        if not 0 <= shard.batch < len(self.batches):
            raise ValueError(f"shard {shard.key}: batch {shard.batch} of {len(self.batches)}")
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(shard.seed)
        active = list(shard.active)
        sample = {i: torch.zeros(shard.probes, dtype=torch.float64) for i in active}
        with frozen(self.bundle.model):
            evaluations = self.engine.add_samples(shard.batch, self.batches[shard.batch], shard.probes,
                                                  gen, active, sample)
        return ShardResult([sample[i].tolist() for i in active], evaluations,
                           time.perf_counter() - start)


Compute = Callable[[Shard], ShardResult]


@dataclass
class ShardExecutor(ABC):
    """Runs a round's shards and returns their results in the shards' order; `done(n)`
    is called as the count of finished shards grows (the job's progress, and where a
    cancelled job stops). Records which workers computed shards."""

    name = "local"
    workers: set[str] = field(default_factory=set)
    shards_run: int = 0

    @abstractmethod
    def run(self, shards: Sequence[Shard], compute: Compute,
            done: Callable[[int], None] = lambda n: None) -> list[ShardResult]: ...

    def summary(self) -> dict[str, Any]:
        return {"executor": self.name, "shards": self.shards_run, "workers": len(self.workers)}


@dataclass
class LocalShards(ShardExecutor):
    """In this process, one after the other."""

    worker: str = "local"

    def run(self, shards, compute, done=lambda n: None):
        results = []
        for n, shard in enumerate(shards, 1):
            result = compute(shard)
            result.worker = self.worker
            results.append(result)
            self.shards_run += 1
            self.workers.add(self.worker)
            done(n)
        return results
