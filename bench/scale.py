"""Scale benchmark: a Llama-shaped model of ~1.1B parameters (TinyLlama's shape: 22
blocks, hidden 2048, intermediate 5632, 32 heads, 4 KV heads, vocabulary 32,000,
untied head) with random weights, through `fisher` and sequential GPTQ, block
streamed (`sensitivity.streaming`) and whole-model, in the same run.

The model is written by the benchmark itself as bf16 safetensors, one shard per
decoder block (plus one for the embedding, final norm and head), so the writer
never holds more than one block. Every measurement runs in its own subprocess, so
its peak RSS (ru_maxrss) is its own; each also reports its RSS after the imports
(the Python + torch baseline) and after each part.

Stages:
- `streamed-fisher` / `whole-fisher`: full-precision targets (one forward pass), then
  `--probes` output-space Gauss–Newton probes on each of `--fisher-sequences`
  sequences (one round), and ‖ΔW‖² under RTN at 3/4/8 bits → Ω. Streamed: one block
  resident, block inputs kept; whole: `OutputGraph` on the fp32 model. The traces of
  the two are compared (they are the same computation).
- `streamed-gptq` / `whole-gptq`: sequential GPTQ (4 bits, groups of 128) on
  `--gptq-sequences` sequences of every block linear and the head. Streamed: each
  block's codes written to a safetensors file as it finishes; whole:
  `quantize_sequentially` in place on the fp32 model. Per-layer code checksums are
  compared.
- `streamed-job`: a whole job (`workers.pipeline.run_job`: `fisher` with `--probes`
  probes per sequence, 4 average bits, the evaluation and the packed artifact) on the
  folder as an upload with a token dataset of `--fisher-sequences` calibration and as
  many held-out random sequences; under `--budget` it is block streamed because the
  budget says so (`BITALLOC_MAX_MEMORY`), not because the stage asks. Reports the
  job's own stage times and peak RSS.

    .venv/bin/python bench/scale.py                      # the 1.1B model, every stage
    .venv/bin/python bench/scale.py --blocks 2 --hidden 256 --intermediate 704 \\
        --heads 4 --kv-heads 2 --vocab 1000               # a quick smoke run

Results: bench/results/scale.json (git-ignored); figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/kernels.py would shadow the `kernels` package: the repository root first
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
STAGES = ("streamed-fisher", "whole-fisher", "streamed-gptq", "whole-gptq", "streamed-job")
ERROR_CHOICES = [(3, 16), (4, 16), (8, 16)]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Parts:
    """Seconds and peak RSS so far after each part of a stage."""

    def __init__(self):
        self.rows: list[dict] = []
        self.t = time.perf_counter()

    def mark(self, part: str) -> None:
        now = time.perf_counter()
        self.rows.append({"part": part, "seconds": round(now - self.t, 2), "rss_mb": round(_rss_mb(), 1),
                          "peak_rss_mb": round(_peak_mb(), 1)})
        self.t = now


# --- the model ------------------------------------------------------------------------


def config_of(args):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_hidden_layers=args.blocks, num_attention_heads=args.heads,
                       num_key_value_heads=args.kv_heads, max_position_embeddings=2048,
                       tie_word_embeddings=False, architectures=["LlamaForCausalLM"],
                       torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)


def write_model(args, folder: Path) -> dict:
    """Random weights (normal, std 0.02; norms 1) as bf16 safetensors, one shard per block."""
    import torch
    from safetensors.torch import save_file

    config = config_of(args)
    gen = torch.Generator().manual_seed(args.seed)
    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)

    def normal(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)

    n_shards = config.num_hidden_layers + 1
    weight_map, total = {}, 0

    def save(index: int, tensors: dict) -> None:
        nonlocal total
        name = f"model-{index + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        for key, t in tensors.items():
            weight_map[key] = name
            total += t.numel() * t.element_size()

    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        save(i, {p + "self_attn.q_proj.weight": normal(d, d), p + "self_attn.k_proj.weight": normal(kv, d),
                 p + "self_attn.v_proj.weight": normal(kv, d), p + "self_attn.o_proj.weight": normal(d, d),
                 p + "mlp.gate_proj.weight": normal(f, d), p + "mlp.up_proj.weight": normal(f, d),
                 p + "mlp.down_proj.weight": normal(d, f),
                 p + "input_layernorm.weight": torch.ones(d, dtype=torch.bfloat16),
                 p + "post_attention_layernorm.weight": torch.ones(d, dtype=torch.bfloat16)})
    save(config.num_hidden_layers, {"model.embed_tokens.weight": normal(v, d), "lm_head.weight": normal(v, d),
                                    "model.norm.weight": torch.ones(d, dtype=torch.bfloat16)})
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return {"bf16_bytes": total, "parameters": total // 2}


def batches_of(args, count: int):
    import torch

    gen = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(0, args.vocab, (count, args.tokens), generator=gen)
    return [{"input_ids": ids[i:i + 1], "attention_mask": torch.ones_like(ids[i:i + 1])}
            for i in range(count)]


# --- the stages (each in its own subprocess) ------------------------------------------


def stage_streamed_fisher(args, folder: Path, parts: Parts) -> dict:
    from kernels.scheme import QuantScheme
    from sensitivity.layers import quantizable_modules
    from sensitivity.output_loss import TokenDistillationKLOutput
    from sensitivity.streaming.fisher import (
        layer_sizes,
        streamed_errors,
        streamed_fisher_omega,
        streamed_fisher_traces,
    )
    from sensitivity.streaming.measure import distillation_targets
    from sensitivity.streaming.skeleton import StreamedCausalLM

    lm = StreamedCausalLM(folder)
    names = list(quantizable_modules(lm.model))
    parts.mark("skeleton + resident embedding/norm/head")
    batches = distillation_targets(lm, batches_of(args, args.fisher_sequences))
    parts.mark("targets (one streamed forward)")
    traces = streamed_fisher_traces(lm, batches, TokenDistillationKLOutput(), names, probes=args.probes,
                                    block=args.probes, seed=0, hidden_budget=_hidden_budget(args))
    parts.mark(f"traces ({args.probes} probes x {len(batches)} sequences)")
    errors = streamed_errors(lm, names, QuantScheme(), ERROR_CHOICES)
    omega = streamed_fisher_omega(traces, errors, layer_sizes(lm, names))
    parts.mark("RTN errors and omega")
    return {"traces": {n: s.mean for n, s in traces.stats.items()},
            "omega_4bit": {n: row[(4, 16)] for n, row in omega.items()}}


def stage_whole_fisher(args, folder: Path, parts: Parts) -> dict:
    import torch

    from kernels.scheme import QuantScheme
    from sensitivity.gauss_newton import OutputGraph
    from sensitivity.layers import quantizable_modules
    from sensitivity.models.causal_lm import causal_lm_bundle
    from sensitivity.models.lm_loading import load_hf_causal_lm
    from sensitivity.omega import second_order_omega
    from sensitivity.perturb import Perturbation, frozen
    from sensitivity.quantized import QuantizedWeights

    model, _ = load_hf_causal_lm(folder)
    parts.mark("load the fp32 model (from_pretrained)")
    batches = batches_of(args, args.fisher_sequences)
    bundle = causal_lm_bundle("scale", model, batches, batches[:1], description="scale")
    parts.mark("targets (one forward)")
    names = list(quantizable_modules(model))
    idx = list(range(len(names)))
    gen = torch.Generator().manual_seed(0)
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    sample = torch.zeros(args.probes, len(names), dtype=torch.float64)
    pert = Perturbation(bundle, names)
    with frozen(model):
        for b in bundle.calibration:
            graph = OutputGraph(pert, b, idx)
            sample += bundle.batch_size(b) / total * graph.probe_norms(args.probes, gen, idx, keep=False)
            del graph
    traces = sample.mean(0)
    parts.mark(f"traces ({args.probes} probes x {len(batches)} sequences)")
    errors = QuantizedWeights(bundle, QuantScheme()).errors(names, ERROR_CHOICES)
    modules = dict(model.named_modules())
    omega = second_order_omega({n: float(traces[c]) / modules[n].weight.numel() for c, n in enumerate(names)},
                               errors)
    parts.mark("RTN errors and omega")
    return {"traces": {n: float(traces[c]) for c, n in enumerate(names)},
            "omega_4bit": {n: row[(4, 16)] for n, row in omega.items()}}


def _gptq_layer(checksums: dict):
    import torch

    from kernels.gptq import gptq_quantize
    from kernels.layout import from_quantizer_view, quantizer_view
    from kernels.scheme import QuantScheme

    scheme = QuantScheme(group_size=128)
    config = scheme.config(4)

    def quantize_layer(name, module, hessian):
        q = gptq_quantize(quantizer_view(module), hessian, config, damping=scheme.damping,
                          act_order=scheme.act_order, block_size=scheme.block_size, name=name)
        module.weight.copy_(from_quantizer_view(module, q.dequantize(module.weight.dtype)))
        checksums[name] = [int(q.codes.sum(dtype=torch.int64)), float(q.scales.double().sum())]
        return q

    return quantize_layer


def _gptq_names(model) -> list[str]:
    from torch import nn

    from sensitivity.layers import quantizable_modules

    return [n for n, m in quantizable_modules(model).items() if not isinstance(m, nn.Embedding)]


def stage_streamed_gptq(args, folder: Path, parts: Parts) -> dict:
    from safetensors.torch import save_file

    from sensitivity.streaming.gptq import quantize_streamed
    from sensitivity.streaming.hidden import HiddenStates
    from sensitivity.streaming.skeleton import StreamedCausalLM

    lm = StreamedCausalLM(folder)
    parts.mark("skeleton + resident embedding/norm/head")
    checksums: dict = {}
    codes: dict = {}
    layer = _gptq_layer(checksums)
    out = Path(tempfile.mkdtemp(prefix="scale-gptq-"))

    def quantize_layer(name, module, hessian):
        codes[name] = layer(name, module, hessian)

    def on_block(i, block):  # the block's codes go to disk; nothing of it stays resident
        tensors = {}
        for name in [n for n in codes if lm.block_of(n) == i]:
            q = codes.pop(name)
            tensors.update({f"{name}.codes": q.codes, f"{name}.scales": q.scales, f"{name}.zeros": q.zeros})
        save_file(tensors, str(out / f"block-{i:03d}.safetensors"))

    order = quantize_streamed(lm, batches_of(args, args.gptq_sequences), _gptq_names(lm.model),
                              quantize_layer, on_block=on_block, hidden=HiddenStates(_hidden_budget(args)))
    parts.mark(f"sequential GPTQ ({len(order)} layers, {args.gptq_sequences} sequences)")
    written = sum(p.stat().st_size for p in out.iterdir())
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    return {"checksums": checksums, "order": order, "codes_written_bytes": written}


def stage_whole_gptq(args, folder: Path, parts: Parts) -> dict:
    from functools import partial

    from sensitivity.layer_inputs import quantize_sequentially
    from sensitivity.models.causal_lm import forward
    from sensitivity.models.lm_loading import load_hf_causal_lm

    model, _ = load_hf_causal_lm(folder)
    parts.mark("load the fp32 model (from_pretrained)")
    checksums: dict = {}
    layer = _gptq_layer(checksums)
    modules = dict(model.named_modules())
    runs = [partial(lambda b, m: forward(m, b), b) for b in batches_of(args, args.gptq_sequences)]
    order = quantize_sequentially(model, _gptq_names(model), runs,
                                  lambda name, hessian: layer(name, modules[name], hessian))
    parts.mark(f"sequential GPTQ ({len(order)} layers, {args.gptq_sequences} sequences)")
    return {"checksums": checksums, "order": order}


def stage_streamed_job(args, folder: Path, parts: Parts) -> dict:
    import torch
    from safetensors.torch import save_file

    from sensitivity.sources import DataSource, ModelSource
    from workers.pipeline import run_job
    from workers.spec import JobSpec

    work = Path(tempfile.mkdtemp(prefix="bitalloc-scale-job-"))
    gen = torch.Generator().manual_seed(args.seed + 2)
    ids = torch.randint(0, args.vocab, (2 * args.fisher_sequences, args.tokens), generator=gen)
    save_file({"inputs": ids}, str(work / "ids.safetensors"))  # even rows calibrate, odd rows evaluate
    spec = JobSpec(model="scale-llama", method="fisher", budgets={"avg_bits": 4}, pareto_points=0,
                   method_params={"min_probes": args.probes, "max_probes": args.probes, "block": args.probes})

    def progress(stage: str, fraction: float, message: str) -> None:
        if fraction in (0.0, 1.0):
            print(f"    [{time.strftime('%H:%M:%S')}] {stage}: {message}", file=sys.stderr, flush=True)

    result = run_job(spec, progress, artifact_dir=work / "artifact",
                     model_source=ModelSource("scale-llama", "hf", "llama", folder),
                     data_source=DataSource("ids", "safetensors", work / "ids.safetensors"))
    for stage, seconds in result.timings.items():
        parts.rows.append({"part": f"job stage {stage}", "seconds": round(seconds, 1),
                           "peak_rss_mb": round(result.peak_rss_mb[stage], 1)})
    artifact = sum(f.stat().st_size for f in (work / "artifact").iterdir())
    return {"streamed": result.sensitivity["streamed"], "streaming": result.model.get("streaming"),
            "avg_bits": result.summary.avg_bits, "layers": len(result.layers),
            "backward_passes": result.sensitivity.get("backward_passes"),
            "quality": {"full_precision": result.quality.full_precision,
                        "allocation": result.quality.allocation, "uniform": result.quality.uniform,
                        "uniform_bits": result.quality.uniform_bits},
            "artifact_mib": round(artifact / 2**20, 1)}


def _hidden_budget(args) -> int | None:
    """Bytes of hidden states kept in memory: what the budget's plan leaves, else no limit."""
    plan = getattr(args, "plan", None)
    return None if plan is None else plan.hidden_budget


STAGE_FUNCTIONS = {"streamed-fisher": stage_streamed_fisher, "whole-fisher": stage_whole_fisher,
                   "streamed-gptq": stage_streamed_gptq, "whole-gptq": stage_whole_gptq,
                   "streamed-job": stage_streamed_job}


def run_stage(args) -> None:
    import torch

    import sensitivity.models.hf  # noqa: F401  (USE_HUB_KERNELS before transformers)
    from sensitivity.streaming.budget import max_memory, plan

    torch.set_num_threads(args.threads)

    limit = max_memory()  # BITALLOC_MAX_MEMORY, enforced: allocations past it fail
    if limit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        if args.stage.startswith("streamed"):  # its hidden states' share of the budget
            args.plan = plan(args.folder, limit)
    parts = Parts()
    base = _rss_mb()
    start = time.perf_counter()
    result = STAGE_FUNCTIONS[args.stage](args, Path(args.folder), parts)
    result.update(stage=args.stage, seconds=round(time.perf_counter() - start, 1),
                  baseline_rss_mb=round(base, 1),
                  peak_rss_mb=round(_peak_mb(), 1), parts=parts.rows,
                  budget_mb=None if limit is None else round(limit / 2**20, 1),
                  plan=args.plan.describe() if getattr(args, "plan", None) else None)
    Path(args.result).write_text(json.dumps(result))


# --- the run ----------------------------------------------------------------------------


def compare(results: dict) -> dict:
    """How far the streamed results are from the whole-model ones."""
    out = {}
    ok = {k: v for k, v in results.items() if not v.get("failed")}
    sf, wf = ok.get("streamed-fisher"), ok.get("whole-fisher")
    if sf and wf:
        rel = [abs(sf["traces"][n] - wf["traces"][n]) / abs(wf["traces"][n]) for n in wf["traces"]]
        out["fisher_trace_max_rel_diff"] = max(rel)
    sg, wg = ok.get("streamed-gptq"), ok.get("whole-gptq")
    if sg and wg:
        out["gptq_same_order"] = sg["order"] == wg["order"]
        out["gptq_layers_with_equal_codes"] = sum(sg["checksums"][n][0] == wg["checksums"][n][0]
                                                  for n in wg["checksums"])
        out["gptq_layers"] = len(wg["checksums"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=22)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--tokens", type=int, default=128, help="tokens per calibration sequence")
    p.add_argument("--fisher-sequences", type=int, default=2)
    p.add_argument("--gptq-sequences", type=int, default=4)
    p.add_argument("--probes", type=int, default=2, help="Gauss–Newton probes per sequence (one round)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--folder", help="the model folder: written there if missing, else reused")
    p.add_argument("--merge", action="store_true", help="keep the earlier results of stages not run")
    p.add_argument("--budget", help="BITALLOC_MAX_MEMORY for the stages (e.g. 3GiB), enforced as their "
                                    "RLIMIT_DATA; results are keyed '<stage>@<budget>'")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.json"))
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        run_stage(args)
        return
    tmp = None
    if args.folder and (Path(args.folder) / "config.json").is_file():
        folder, written = Path(args.folder), {}
        total = json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
        written = {"bf16_bytes": total, "parameters": total // 2, "reused": True}
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bitalloc-scale-")
        folder = Path(args.folder) if args.folder else Path(tmp.name) / "model"
        t0 = time.perf_counter()
        written = write_model(args, folder)
        written.update(seconds=round(time.perf_counter() - t0, 1), peak_rss_mb=round(_peak_mb(), 1))
        print(f"wrote {written['parameters'] / 1e9:.3f}B parameters "
              f"({written['bf16_bytes'] / 2**20:,.0f} MiB bf16) to {folder} in {written['seconds']} s "
              f"(writer peak RSS {written['peak_rss_mb']:,.0f} MiB)", flush=True)
    bf16_mb = written["bf16_bytes"] / 2**20
    results = {}
    if args.merge and Path(args.out).is_file():  # the stages not rerun keep their earlier results
        results = json.loads(Path(args.out).read_text())["results"]
    for stage in args.stages.split(","):
        result_file = Path(tempfile.mkstemp(suffix=".json")[1])
        cmd = [sys.executable, __file__, "--stage", stage, "--result", str(result_file),
               "--folder", str(folder)]
        cmd += [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                if k not in ("stage", "result", "folder", "stages", "out", "merge", "budget")
                and v is not None]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        env.pop("BITALLOC_MAX_MEMORY", None)
        key = stage
        if args.budget:
            env["BITALLOC_MAX_MEMORY"] = args.budget
            key = f"{stage}@{args.budget}"
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            tail = [line for line in proc.stderr.splitlines() if line.strip()][-1:]
            results[key] = {"stage": stage, "failed": True, "returncode": proc.returncode,
                            "error": tail[0][-300:] if tail else "", "budget": args.budget,
                            "seconds": round(time.perf_counter() - t0, 1)}
            log = Path(args.out).with_suffix(f".{stage}.stderr")
            log.write_text(proc.stderr)
            print(f"{key}: failed (exit {proc.returncode}) after {time.perf_counter() - t0:.0f} s: "
                  f"{results[key]['error']} (its stderr: {log})", flush=True)
            continue
        results[key] = json.loads(result_file.read_text())
        result_file.unlink()
        r = results[key]
        print(f"{key}: {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:,.0f} MiB = "
              f"{r['peak_rss_mb'] / bf16_mb:.2f}x bf16 (baseline {r['baseline_rss_mb']:,.0f} MiB); wall "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        for part in r["parts"]:
            print(f"    {part['part']:<48} {part['seconds']:>8.1f} s  peak {part['peak_rss_mb']:>9,.0f} MiB")
    checks = compare(results)
    print(json.dumps(checks, indent=1))
    out = {"model": {"config": config_of(args).to_dict(), **written, "bf16_mb": bf16_mb},
           "settings": {k: v for k, v in vars(args).items() if k not in ("stage", "result")},
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "python": platform.python_version()},
           "results": results,
           "checks": checks,
           "command": " ".join([Path(sys.executable).name, "bench/scale.py", *sys.argv[1:]])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
