"""Quantize an exported Hugging Face causal LM with a published tool; run by
bench/peers.py with the peer's own interpreter (/tmp/peer-venv/bin/python), never
in the project venv. It imports nothing of bitalloc.

    /tmp/peer-venv/bin/python bench/peer_quantize.py --peer llmcompressor-gptq \
        --model /tmp/bitalloc-peers/fp --calibration /tmp/bitalloc-peers/calib-8.json \
        --bits 4 --group-size 64 --out /tmp/bitalloc-peers/llmc-w4-c8

Peers:
- `llmcompressor-gptq`: llm-compressor's `oneshot` with a `GPTQModifier` (int weights,
  asymmetric, group strategy, the given group size, act-order off, dampening 0.01 unless
  --damping, block 128), targets every Linear except lm_head;
- `autoround`: auto-round's `AutoRound(iters=N)` (iters 0: its RTN mode, "optimized RTN"
  unless disabled; N > 0: N steps of signed-gradient tuning per block), asymmetric, the
  given group size, lm_head kept;
- `autoround-rtn`: auto-round with iters 0 and `disable_opt_rtn=True` (plain RTN).

Writes OUT/weights.safetensors (the fake-quantized, i.e. dequantized, fp32 weight of
every quantized Linear, under its `named_modules` name + ".weight") and OUT/meta.json
(peer, version, settings, seconds, the largest number of distinct values seen in one
group of one layer: at most 2^bits when the weights do lie on the grid).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

# bench/ must not be on the path: bench/kernels.py would pass for the Hugging Face
# `kernels` package transformers probes for
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


def calibration(path: Path) -> list[list[int]]:
    return json.loads(path.read_text())["input_ids"]


def llmcompressor_gptq(model, ids, args) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier

    weights = {"num_bits": args.bits, "type": "int", "symmetric": False, "strategy": "group",
               "group_size": args.group_size}
    modifier = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                            ignore=["lm_head"], actorder=None, block_size=128,
                            dampening_frac=args.damping)
    batch = 8 if len(ids) > 8 and len(ids) % 8 == 0 else 1  # the same XᵀX, fewer calls
    data = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]})
    oneshot(model=model, dataset=data, recipe=modifier, num_calibration_samples=len(ids),
            max_seq_length=max(len(r) for r in ids), shuffle_calibration_samples=False,
            batch_size=batch)
    return {"weights": weights, "batch_size": batch, "ignore": ["lm_head"], "actorder": None,
            "block_size": 128, "dampening_frac": args.damping,
            "pipeline": "oneshot default (sequential, per decoder layer)"}


def autoround(model, tokenizer, ids, args) -> dict:
    from auto_round import AutoRound

    data = [torch.tensor([r]) for r in ids]
    settings = {"bits": args.bits, "group_size": args.group_size, "sym": False, "iters": args.iters,
                "nsamples": len(ids), "seqlen": max(len(r) for r in ids), "batch_size": 1}
    if args.peer == "autoround-rtn":  # plain round-to-nearest, no "optimized RTN" search
        settings.update(iters=0, disable_opt_rtn=True)
    ar = AutoRound(model, tokenizer=tokenizer, dataset=data, device_map="cpu", **settings)
    ar.quantize()
    return settings


def linear_weights(model) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": m.weight.detach().float().contiguous().clone()
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")}


def distinct_per_group(w: torch.Tensor, g: int) -> int:
    rows, k = w.shape
    groups = w.reshape(rows, k // g, g) if k % g == 0 else w[:, :g].reshape(rows, 1, g)
    flat = groups.reshape(-1, groups.shape[-1])
    return max(int(torch.unique(r).numel()) for r in flat[:: max(1, flat.shape[0] // 64)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, choices=("llmcompressor-gptq", "autoround", "autoround-rtn"))
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--calibration", type=Path, required=True)
    ap.add_argument("--bits", type=int, required=True)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--damping", type=float, default=0.01)
    ap.add_argument("--iters", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model.eval()
    before = linear_weights(model)
    ids = calibration(args.calibration)
    start = time.perf_counter()
    if args.peer == "llmcompressor-gptq":
        settings = llmcompressor_gptq(model, ids, args)
        package = "llmcompressor"
    else:
        settings = autoround(model, tokenizer, ids, args)
        package = "auto-round"
    seconds = time.perf_counter() - start
    after = linear_weights(model)
    missing = sorted(set(before) - set(after))
    changed = sum(1 for n in after if n in before and not torch.equal(before[n], after[n]))
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(after, str(args.out / "weights.safetensors"))
    meta = {"peer": args.peer, "package": package, "version": version(package),
            "torch": torch.__version__, "transformers": version("transformers"),
            "settings": settings, "seconds": seconds, "threads": args.threads,
            "calibration_sequences": len(ids), "calibration_tokens": sum(len(r) for r in ids),
            "layers": len(after), "layers_changed": changed, "missing": missing,
            "max_distinct_per_group": max(distinct_per_group(w, args.group_size) for w in
                                          list(after.values())[:14])}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
