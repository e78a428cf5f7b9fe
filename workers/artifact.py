"""The packed model of a finished job (DESIGN §6): the allocation applied to the
model and saved with `kernels.artifact.save_artifact` into the job's folder."""

from __future__ import annotations

from pathlib import Path

from workers.spec import JobResult, JobSpec


def write_artifact(spec: JobSpec, result: JobResult, directory: Path) -> Path:
    """`model.safetensors` + `allocation.json` for the result's allocation."""
    from kernels.artifact import save_artifact
    from kernels.quantizer import QuantConfig
    from sensitivity.models import load_model

    bundle = load_model(spec.model)
    q = spec.quant
    configs = {layer.name: QuantConfig(layer.w_bits, q.group_size, q.symmetric, q.mse_clip)
               for layer in result.layers}
    allocation = {
        "model": spec.model,
        "layers": {layer.name: {"w_bits": layer.w_bits, "a_bits": layer.a_bits}
                   for layer in result.layers},
        "unused_layers": result.unused_layers,
        "quant": q.model_dump(),
        "summary": result.summary.model_dump(),
    }
    return save_artifact(bundle.model, configs, directory, allocation)
