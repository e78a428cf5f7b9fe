"""Content-addressed storage of sensitivity tables.

A table's key is a SHA-256 over everything that determines it: the model's
weights (every state_dict tensor), the calibration data, the method and its
parameters, the quantizer config, the candidate choices and the layers, the
bundle's `cache_salt` (an uploaded model's config) when it has one, the
quantizer's own calibration batches (`ModelBundle.quantizer_calibration`) when the
bundle has them and the quantizer reads them (GPTQ, AdaQuant), plus
`FORMAT` (bumped when an estimator's numbers change). Layout under
`sensitivity.paths.cache_dir("tables")`:

    <key>.json          the finished table (SensitivityTable.to_json)
    <key>.partial.json  the checkpoint of an interrupted computation
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kernels.scheme import ACTIVATION_BITS, QuantScheme
from sensitivity.bundle import ModelBundle
from sensitivity.layers import LayerInfo
from sensitivity.paths import atomic_write_bytes, cache_dir
from sensitivity.table import Choice, SensitivityTable

# 2: interlayer with measured pairs measures its per-layer terms too; 3: lrp with AttnLRP rules;
# 4: Hutchinson's probes drawn per shard (sensitivity.shards), another stream than one generator
FORMAT = 4


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def _update_tensor(h, name: str, t: torch.Tensor) -> None:
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(_tensor_bytes(t))


def table_key(method: str, bundle: ModelBundle, layers: Sequence[LayerInfo], choices: Sequence[Choice],
              quant: QuantScheme, params: dict[str, Any]) -> str:
    h = hashlib.sha256()
    header = {"format": FORMAT, "method": method, "params": params, "quant": quant.as_dict(),
              "choices": sorted([list(c) for c in choices]), "layers": [layer.name for layer in layers]}
    if any(c[1] < ACTIVATION_BITS for c in choices):  # only then: weight-only keys stay put
        header["activation"] = quant.activation.as_dict()
    if bundle.cache_salt:  # only when set, so the built-in models keep their keys
        header["salt"] = bundle.cache_salt
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    if bundle.streamed is not None:  # the weights are in the files, not in the skeleton
        h.update(f"streamed:{bundle.streamed.digest()}".encode())
    else:
        for name, t in sorted(bundle.model.state_dict().items()):
            _update_tensor(h, f"w:{name}", t)
    for i, batch in enumerate(bundle.calibration):
        for k in sorted(batch):
            _update_tensor(h, f"c{i}:{k}", batch[k])
    if quant.calibrated and bundle.quantizer_calibration is not None:  # RTN keys stay put
        for i, batch in enumerate(bundle.quantizer_calibration):
            for k in sorted(batch):
                _update_tensor(h, f"q{i}:{k}", batch[k])
    return h.hexdigest()


class TableCache:
    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir("tables")

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def partial_path(self, key: str) -> Path:
        return self.root / f"{key}.partial.json"

    def load(self, key: str) -> SensitivityTable | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return SensitivityTable.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError):
            return None  # a damaged entry is recomputed

    def store(self, key: str, table: SensitivityTable) -> None:
        atomic_write_bytes(self.path(key), json.dumps(table.to_json()).encode())
