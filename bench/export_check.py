"""Load a compressed-tensors export with transformers and compare it with bitalloc's
fake-quantized model at the allocation it records (`allocation.json`): the
decompressed weights, and the logits on random tokens (both in fp16, eager attention).
Prints a table and writes `bench/results/export_check.json`.

    .venv/bin/python bench/export_check.py out/ --model smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/kernels.py would shadow the `kernels` package: the repository root comes first
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from kernels.fake_quant import fake_quantize_model  # noqa: E402
from kernels.scheme import QuantScheme  # noqa: E402
from sensitivity.models import load_bundle  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args(argv)
    allocation = json.loads((Path(args.folder) / "allocation.json").read_text())
    q = allocation["quant"]
    scheme = QuantScheme(group_size=q["group_size"], symmetric=q["symmetric"])
    bits = {name: layer["w_bits"] for name, layer in allocation["layers"].items()}
    loaded = AutoModelForCausalLM.from_pretrained(args.folder, attn_implementation="eager").eval()
    bundle = load_bundle(args.model)
    bundle.model.config._attn_implementation = "eager"
    ours = fake_quantize_model(bundle.model, {n: scheme.config(b) for n, b in bits.items()}).half()
    vocab = loaded.config.vocab_size
    ids = torch.randint(0, vocab, (2, args.tokens), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs_logits = loaded(ids).logits.float()  # the first forward decompresses
        ours_logits = ours(ids).logits.float()
    mine, theirs = dict(ours.named_modules()), dict(loaded.named_modules())
    weight_diff = max(float((theirs[n].weight.detach().float() - mine[n].weight.float()).abs().max())
                      for n in bits)
    diff = float((theirs_logits - ours_logits).abs().max())
    top1 = float((theirs_logits.argmax(-1) == ours_logits.argmax(-1)).float().mean())
    print("| layers | max weight difference | max logit difference | largest logit | top-1 agreement |")
    print(f"| {len(bits)} | {weight_diff:.3g} | {diff:.3g} | {float(ours_logits.abs().max()):.3g} | "
          f"{100 * top1:.1f} % |")
    out = ROOT / "bench" / "results" / "export_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"folder": str(args.folder), "layers": len(bits),
                               "max_weight_difference": weight_diff, "max_logit_difference": diff,
                               "top1_agreement": top1}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
