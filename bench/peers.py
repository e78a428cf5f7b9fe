"""Peer comparison on smollm2-135m: llm-compressor's GPTQ and auto-round against
bitalloc's own quantizers, same model, same calibration tokens, same evaluation.

The model is smollm2-135m as bitalloc loads it (the Q4_1 GGUF dequantized to fp32),
exported with `save_pretrained` (and its tokenizer) to WORK/fp; the calibration token
sequences bitalloc uses (windows of 128 tokens from the calibration half of the
built-in prose: the family's 8, or more with --calibration) go to WORK/calib-N.json.
bench/peer_quantize.py then runs in the peer's own environment (--peer-python, a venv
that is no part of bitalloc) and writes the peer's fake-quantized weights; they are
loaded into a copy of the model and measured with `bundle.evaluate`, the evaluation
`workers.evaluate.measure` runs (perplexity on the held-out half of the prose, KL to
full precision, top-1 agreement). bitalloc's quantizers go through `measure` itself.

What is quantized, for every row: the 210 Linear layers of the 30 blocks, uniform
width, asymmetric, group size --group-size along the input (default 64: 576 and 1,536
are multiples of 64, not 576 of 128, so every tool cuts the same groups); the tied
embedding / LM head stays at full precision (the peers leave lm_head alone).

    .venv/bin/python bench/peers.py                                  # defaults below
    .venv/bin/python bench/peers.py --quantizers gptq --peers llmcompressor-gptq \
        --calibration 8 32 128 --damping 0.01 0.1 --bits 4 3
    .venv/bin/python bench/peers.py --table                          # only print the table

Rows are kept in bench/results/peers.json by label; a rerun skips the labels it has
(--force redoes them).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch import nn  # noqa: E402

from kernels.scheme import ACTIVATION_BITS, QuantScheme  # noqa: E402
from sensitivity.data.prose import load_prose  # noqa: E402
from sensitivity.layers import discover_layers  # noqa: E402
from sensitivity.models import causal_lm, load_model  # noqa: E402
from sensitivity.quantized import QuantizedWeights  # noqa: E402
from workers.evaluate import measure  # noqa: E402

MODEL = "smollm2-135m"
RESULTS = ROOT / "bench" / "results" / "peers.json"
PEER_SCRIPT = ROOT / "bench" / "peer_quantize.py"
PEERS = ("llmcompressor-gptq", "autoround", "autoround-rtn")


def calibration_ids(tokenizer, sequences: int) -> torch.Tensor:
    """The family's calibration windows (the first `sequences` of its prose)."""
    ids = causal_lm.windows(tokenizer, load_prose().calibration, causal_lm.SEQUENCE_LENGTH, sequences)
    if ids.shape[0] < sequences:
        raise SystemExit(f"the calibration half holds only {ids.shape[0]} windows of "
                         f"{causal_lm.SEQUENCE_LENGTH} tokens")
    return ids


def with_calibration(bundle, ids: torch.Tensor):
    """The bundle with `ids` as its quantizer's calibration batches
    (`quantizer_calibration`), 8 sequences a batch. GPTQ only runs the model on them: no
    distillation targets needed."""
    batches = causal_lm.chunks({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, 8)
    return dataclasses.replace(bundle, quantizer_calibration=batches)


def export(bundle, work: Path, counts: list[int]) -> dict[int, Path]:
    fp = work / "fp"
    if not (fp / "config.json").is_file():
        bundle.model.save_pretrained(fp, safe_serialization=True)
        bundle.tokenizer.save_pretrained(fp)
    files = {}
    for n in counts:
        path = work / f"calib-{n}.json"
        ids = calibration_ids(bundle.tokenizer, n)
        if n == causal_lm.CALIBRATION_SEQUENCES:  # the very batches the bundle calibrates on
            own = torch.cat([b["input_ids"] for b in bundle.calibration])
            assert torch.equal(own, ids), "calibration windows differ from the bundle's"
        path.write_text(json.dumps({"input_ids": ids.tolist()}))
        files[n] = path
    return files


def block_linears(bundle, embedding: bool = False) -> list[str]:
    """The 210 block Linears (with `embedding`: and the tied embedding / LM head, as a
    bitalloc job quantizes it, rounded to nearest)."""
    modules = dict(bundle.model.named_modules())
    return [layer.name for layer in discover_layers(bundle)
            if layer.used and (embedding or isinstance(modules[layer.name], nn.Linear))
            and not layer.name.endswith("lm_head")]


def label(source: str, method: str, bits: int, g: int, calib: int, damping: float | None,
          iters: int | None = None) -> str:
    parts = [source, method, f"w{bits}", f"g{g}"]
    if calib:
        parts.append(f"c{calib}")
    if damping is not None:
        parts.append(f"d{damping:g}")
    if iters is not None:
        parts.append(f"it{iters}")
    return " ".join(parts)


def heldout_windows(tokenizer, most: int | None = None) -> torch.Tensor:
    """The windows of 128 tokens of the held-out half, all or the first `most` (the family
    evaluates the first 16)."""
    prose = load_prose()
    ids = tokenizer(prose.evaluation, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n = ids.numel() // causal_lm.SEQUENCE_LENGTH
    return causal_lm.windows(tokenizer, prose.evaluation, causal_lm.SEQUENCE_LENGTH, min(n, most or n))


@torch.no_grad()
def window_nll(bundle, model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each window (n,), float64."""
    out = []
    for i in range(0, ids.shape[0], causal_lm.EVALUATION_BATCH):
        batch = {"input_ids": ids[i:i + causal_lm.EVALUATION_BATCH]}
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        logp = torch.log_softmax(bundle.forward(model, batch).float(), -1)
        nll = -logp[:, :-1].gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
        out.append(nll.double().mean(1))
    return torch.cat(out)


def heldout(bundle, model, ids, work: Path, key: str) -> dict:
    """Perplexity over the whole held-out half; the per-window NLL kept for paired
    differences (`table`)."""
    nll = window_nll(bundle, model, ids)
    (work / "nll").mkdir(exist_ok=True)
    torch.save(nll, work / "nll" / f"{key.replace(' ', '_')}.pt")
    return {"windows": int(nll.numel()), "tokens": int(nll.numel()) * (causal_lm.SEQUENCE_LENGTH - 1),
            "perplexity": float(torch.exp(nll.mean()))}


def run_bitalloc(bundle, names, method, bits, g, calib, damping, steps) -> dict:
    fields = {"group_size": g, "algorithm": method}
    if method != "rtn":
        fields["damping"] = damping
    if method == "adaquant" and steps is not None:
        fields["adaquant_steps"] = steps
    scheme = QuantScheme(**fields)
    weights = QuantizedWeights(bundle, scheme)
    start = time.perf_counter()
    choices = {n: (bits, ACTIVATION_BITS) for n in names}
    quality = measure(bundle, choices, scheme, weights)
    row = {"quality": quality, "seconds": time.perf_counter() - start, "settings": scheme.as_dict()}
    return row, weights.apply(choices).model  # kept by the provider: no second pass


def run_peer(bundle, names, peer, bits, g, calib_file, damping, iters, work, python, threads) -> dict:
    tag = f"{peer}-w{bits}-g{g}-{calib_file.stem}-d{damping:g}-it{iters}"
    out = work / tag
    cmd = [python, "-P", str(PEER_SCRIPT), "--peer", peer, "--model", str(work / "fp"),
           "--calibration", str(calib_file), "--bits", str(bits), "--group-size", str(g),
           "--damping", str(damping), "--iters", str(iters), "--threads", str(threads),
           "--out", str(out)]
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "USE_HUB_KERNELS": "NO"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd="/tmp")
    wall = time.perf_counter() - start
    (work / f"{tag}.log").write_text(proc.stdout + "\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} failed (rc {proc.returncode}); log {work / f'{tag}.log'}:\n"
                           + proc.stderr[-3000:])
    meta = json.loads((out / "meta.json").read_text())
    quantized = load_file(str(out / "weights.safetensors"))
    model = copy.deepcopy(bundle.model)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for n in names:
            modules[n].weight.copy_(quantized[f"{n}.weight"].to(modules[n].weight.dtype))
    meta["wall_s"] = wall
    return {"quality": bundle.evaluate(model), "seconds": meta["seconds"], "peer": meta}, model


def paired(work: Path, key: str, reference: str, first: int | None = None) -> str:
    """Mean per-window NLL difference key − reference (nats/token) ± its standard error
    over the windows (all of them, or the `first` the family evaluates)."""
    a, b = (work / "nll" / f"{k.replace(' ', '_')}.pt" for k in (key, reference))
    if not (a.is_file() and b.is_file()):
        return "–"
    a, b = torch.load(a), torch.load(b)
    n = min(a.numel(), b.numel(), first or a.numel())
    if first is None and (n < max(a.numel(), b.numel()) or n <= causal_lm.EVALUATION_SEQUENCES):
        return "–"
    d = a[:n] - b[:n]
    return f"{float(d.mean()):+.3f} ± {float(d.std() / d.numel() ** 0.5):.3f}"


def table(results: dict, work: Path) -> str:
    fp = results.get("full_precision")
    fph = results.get("full_precision_heldout_all")
    lines = ["| row | bits | calib tokens | perplexity | KL to FP | top-1 agreement % | quantize s | "
             "perplexity, whole held-out half | ΔNLL vs RTN, 16 windows | ΔNLL vs RTN, all windows |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if fp:
        lines.append(f"| full precision | 16 | – | {fp['perplexity']:.2f} | 0 | 100 | – | "
                     f"{fph['perplexity']:.2f} | | |" if fph else
                     f"| full precision | 16 | – | {fp['perplexity']:.2f} | 0 | 100 | – | – | | |")
    for key, row in sorted(results.get("rows", {}).items(),
                           key=lambda kv: (-kv[1]["bits"], kv[1]["calib"], kv[0])):
        q = row["quality"]
        h = row.get("heldout_all")
        rtn = f"bitalloc rtn w{row['bits']} g{row['group_size']}" + (
            " +embedding" if key.endswith("+embedding") else "")
        lines.append(f"| {key} | {row['bits']} | {row['calib'] * causal_lm.SEQUENCE_LENGTH or '–'} | "
                     f"{q['perplexity']:.2f} | {q['kl_to_fp']:.3f} | {q['top1_agreement']:.1f} | "
                     f"{row['seconds']:.0f} | "
                     + (f"{h['perplexity']:.2f}" if h["windows"] > causal_lm.EVALUATION_SEQUENCES else "–")
                     + " | " if h else
                     f"| {key} | {row['bits']} | {row['calib'] * causal_lm.SEQUENCE_LENGTH or '–'} | "
                     f"{q['perplexity']:.2f} | {q['kl_to_fp']:.3f} | {q['top1_agreement']:.1f} | "
                     f"{row['seconds']:.0f} | – | ")
        lines[-1] += (f"{paired(work, key, rtn, causal_lm.EVALUATION_SEQUENCES)} | "
                      f"{paired(work, key, rtn)} |" if key != rtn else
                      "0 | " + ("0 |" if h and h["windows"] > causal_lm.EVALUATION_SEQUENCES else "– |"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", nargs="+", type=int, default=[4, 3])
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--quantizers", nargs="*", default=["rtn", "gptq"],
                    help="bitalloc's own: rtn gptq adaquant")
    ap.add_argument("--peers", nargs="*", default=["llmcompressor-gptq"], choices=PEERS)
    ap.add_argument("--calibration", nargs="+", type=int, default=[causal_lm.CALIBRATION_SEQUENCES],
                    help="calibration sequences of 128 tokens (the family uses 8)")
    ap.add_argument("--damping", nargs="+", type=float, default=[0.01])
    ap.add_argument("--autoround-iters", nargs="+", type=int, default=[0],
                    help="auto-round's iters (0: its RTN mode)")
    ap.add_argument("--adaquant-steps", type=int, default=None)
    ap.add_argument("--peer-python", default="/tmp/peer-venv/bin/python")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bitalloc-peers"))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--heldout-all", action="store_true",
                    help="also the perplexity over every 128-token window of the held-out half "
                         "(147 windows, the family evaluates 16), with per-window NLL kept")
    ap.add_argument("--heldout-windows", type=int, default=None,
                    help="with --heldout-all: only the first N windows (16: the family's own, "
                         "for the paired difference at the cost of one evaluation)")
    ap.add_argument("--with-embedding", action="store_true",
                    help="bitalloc's quantizers also quantize the tied embedding / LM head "
                         "(RTN, as a job does); rows labelled +embedding")
    ap.add_argument("--force", action="store_true", help="redo rows already in the JSON")
    ap.add_argument("--table", action="store_true", help="only print the table of the JSON")
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.setdefault("rows", {})
    if args.table:
        print(table(results, args.work))
        return 0
    torch.set_num_threads(args.threads)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    bundle = load_model(MODEL)
    names = block_linears(bundle, args.with_embedding)
    if args.with_embedding and args.peers:
        ap.error("--with-embedding is for bitalloc's quantizers only (the peers keep it)")
    g = args.group_size
    args.work.mkdir(parents=True, exist_ok=True)
    files = export(bundle, args.work, sorted(set(args.calibration)))
    if "full_precision" not in results:
        results["full_precision"] = bundle.evaluate(bundle.model)
    held = heldout_windows(bundle.tokenizer, args.heldout_windows) if args.heldout_all else None
    if args.heldout_all and "full_precision_heldout_all" not in results:
        results["full_precision_heldout_all"] = heldout(bundle, bundle.model, held, args.work,
                                                        "full precision")
    results["machine"] = f"{platform.platform()}, {os.cpu_count()} cores, {args.threads} torch thread(s)"
    results["model"] = {"name": MODEL, "quantized_layers": len(block_linears(bundle)),
                        "info": bundle.info}
    log(f"{MODEL}: {len(names)} block linears; full precision {results['full_precision']}")
    bundles = {}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))

    jobs = []
    for bits in args.bits:
        for q in args.quantizers:
            if q == "rtn":
                jobs.append(("bitalloc", q, bits, 0, None, None))
            else:
                jobs += [("bitalloc", q, bits, c, d, None) for c in args.calibration for d in args.damping]
        for p in args.peers:
            iters = args.autoround_iters if p == "autoround" else [None]
            damps = args.damping if p == "llmcompressor-gptq" else [None]
            jobs += [(p, p, bits, c, d, it) for c in args.calibration for d in damps for it in iters]
    for source, method, bits, calib, damping, iters in jobs:
        key = label(source, "" if source != "bitalloc" else method, bits, g, calib, damping, iters)
        key = " ".join(key.split()) + (" +embedding" if args.with_embedding else "")
        if key in results["rows"] and not args.force:
            log(f"{key}: kept")
            continue
        log(f"{key}: running")
        if source == "bitalloc":
            if calib and calib not in bundles:
                bundles[calib] = with_calibration(bundle, calibration_ids(bundle.tokenizer, calib))
            row, model = run_bitalloc(bundles.get(calib, bundle), names, method, bits, g, calib,
                                      damping, args.adaquant_steps)
        else:
            row, model = run_peer(bundle, names, method, bits, g, files[calib], damping or 0.01,
                                  iters or 0, args.work, args.peer_python, args.threads)
        if args.heldout_all:
            row["heldout_all"] = heldout(bundle, model, held, args.work, key)
        del model
        row.update(source=source, method=method, bits=bits, group_size=g, calib=calib,
                   damping=damping, iters=iters)
        results["rows"][key] = row
        save()
        q = row["quality"]
        log(f"{key}: perplexity {q['perplexity']:.2f}, KL {q['kl_to_fp']:.3f}, "
            f"top-1 {q['top1_agreement']:.1f} % in {row['seconds']:.0f}s")
    save()
    print(table(results, args.work))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
