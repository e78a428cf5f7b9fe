"""compressed-tensors export of quantized inputs (issue #17): each config group's
`input_activations` (static per tensor with its `input_scale` / `input_zero_point`, or dynamic
per token), parsed by the library's own QuantizationConfig / QuantizationArgs, and run by
transformers' CPU loader, which does apply input quantization (compressed-tensors wraps each
targeted Linear's forward in quantize-dequantize of its input).

What the loader computes against bitalloc's quantizers:

* asymmetric inputs, static and dynamic: the same codes (theirs are ours minus 2^(a−1)),
  up to a rare one-step flip where x/s + z rounds differently in float from x/s + z − 2^(a−1);
* symmetric static: the same on inputs inside the calibrated range (the format's codes reach
  −2^(a−1), ours stop at −(2^(a−1) − 1), so inputs below −max clip one step lower there);
* symmetric dynamic: compressed-tensors' own quantizer takes s = max|x| / (2^(a−1) − ½)
  where ours (and vLLM's dynamic int8 kernel) takes max|x| / (2^(a−1) − 1): the exported
  scheme is the same, the CPU reference runs it with its own scale (checked below).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kernels.activation import ActivationQuantizer, attach, calibrate, make_quantizer
from kernels.export.registry import write_export
from kernels.fake_quant import fake_quantize_model
from kernels.scheme import ActivationScheme, QuantConfig

ct = pytest.importorskip("compressed_tensors")
from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import forward_quantize  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

SCHEMES = {
    "static-asym": ActivationScheme(),
    "static-sym": ActivationScheme(symmetric=True),
    "dynamic-asym": ActivationScheme(mode="dynamic"),
    "dynamic-sym": ActivationScheme(mode="dynamic", symmetric=True),
}


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def calibrated():
    model = tiny_llama()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 128, (2, 16), generator=gen) for _ in range(3)]
    stats = calibrate(model, names, [lambda m, x=x: m(x) for x in batches])
    return model, names, stats, batches


def quantizers(calibrated, scheme: ActivationScheme, bits=8) -> dict[str, ActivationQuantizer]:
    model, names, stats, _ = calibrated
    modules = dict(model.named_modules())
    return {n: make_quantizer(bits, scheme, modules[n], stats.get(n)) for n in names}


def export(model, configs, records, folder):
    write_export("compressed-tensors", model, configs, folder, {"layers": {}, "activations": records})
    return json.loads((folder / "config.json").read_text())["quantization_config"]


def reference(model, configs, qs):
    """bitalloc's fake-quantized model as the export holds it: quantized weights in fp32, the
    other tensors rounded to fp16 (the folder's dtype), inputs by our pre-hooks."""
    ref = fake_quantize_model(model, configs)
    with torch.no_grad():
        for key, t in ref.state_dict().items():
            if key.removesuffix(".weight") not in configs and t.is_floating_point():
                t.copy_(t.half().float())
    attach(ref, qs)
    return ref


def test_input_schemes_parse_and_group_by_identical_schemes(calibrated, tmp_path):
    model, names, _, _ = calibrated
    static8 = quantizers(calibrated, SCHEMES["static-asym"])
    dynamic8 = quantizers(calibrated, SCHEMES["dynamic-sym"])
    static4 = quantizers(calibrated, SCHEMES["static-sym"], bits=4)
    plan = {}  # layer -> (weight bits, input quantizer or None)
    for i, n in enumerate(names):
        plan[n] = [(8, static8[n]), (8, dynamic8[n]), (4, static4[n]), (4, None)][i % 4]
    configs = {n: QuantConfig(b, 32, symmetric=True) for n, (b, _) in plan.items()}
    records = {n: q.record() for n, (_, q) in plan.items() if q is not None}
    qc = export(model, configs, records, tmp_path)
    parsed = QuantizationConfig.model_validate(qc)  # the library's own validation
    assert len(parsed.config_groups) == 4
    seen = {}
    for group in parsed.config_groups.values():
        ia = group.input_activations
        for target in group.targets:
            name = target.removeprefix("re:^").removesuffix("$").replace("[.]", ".")
            seen[name] = (group.weights.num_bits,
                          None if ia is None else (ia.num_bits, ia.strategy, ia.dynamic, ia.symmetric))
        assert group.format == "pack-quantized"
    expected = {8: {False: ("tensor", False, False), True: ("token", True, True)}}
    for n, (bits, q) in plan.items():
        if q is None:
            assert seen[n] == (bits, None)
        elif q.bits == 4:
            assert seen[n] == (4, (4, "tensor", False, True))
        else:
            assert seen[n] == (8, (8, *expected[8][q.mode == "dynamic"]))
    for raw in qc["config_groups"].values():  # each written input_activations parses alone too
        if raw["input_activations"]:
            QuantizationArgs.model_validate(raw["input_activations"])
    tensors = load_file(str(tmp_path / "model.safetensors"))
    for n, (_, q) in plan.items():
        if q is None or q.mode == "dynamic":
            assert f"{n}.input_scale" not in tensors
            continue
        assert tensors[f"{n}.input_scale"].dtype == torch.float32
        assert float(tensors[f"{n}.input_scale"]) == pytest.approx(q.scale, rel=1e-7)
        if q.symmetric:
            assert f"{n}.input_zero_point" not in tensors
        else:
            assert int(tensors[f"{n}.input_zero_point"]) == round(q.zero) - 2 ** (q.bits - 1)


@pytest.mark.parametrize("label", list(SCHEMES))
def test_the_cpu_loader_quantizes_the_inputs_as_exported(calibrated, label, tmp_path):
    model, names, _, batches = calibrated
    qs = quantizers(calibrated, SCHEMES[label])
    configs = {n: QuantConfig(8, 32, symmetric=True) for n in names}
    export(model, configs, {n: q.record() for n, q in qs.items()}, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    theirs = dict(loaded.named_modules())
    ref = reference(model, configs, qs)
    ours = dict(ref.named_modules())
    inputs = {}
    handles = [ours[n].register_forward_pre_hook(
        lambda m, a, n=n: inputs.__setitem__(n, a[0].detach()), prepend=True) for n in names]
    with torch.no_grad():
        ref(batches[0])  # a calibration batch: its inputs lie in the calibrated ranges
        loaded(batches[0])  # the first forward decompresses the packed weights
        for h in handles:
            h.remove()
        for n in names:
            m = theirs[n]
            assert m.quantization_scheme.input_activations.num_bits == 8
            torch.testing.assert_close(m.weight, ours[n].weight, rtol=0, atol=0)
            x = inputs[n]
            got = forward_quantize(m, x, "input", m.quantization_scheme.input_activations)
            want = qs[n].fake_quantize(x)
            if label == "dynamic-sym":  # the library's own scale: max|x| / 127.5
                s = x.abs().amax(-1, keepdim=True) / 127.5
                torch.testing.assert_close(got, (x / s).round().clamp(-128, 127) * s)
                assert not torch.equal(got, want)
                continue
            step = qs[n].scale if qs[n].mode == "static" else None
            off = (got - want).abs() > 1e-6
            assert float(off.float().mean()) <= 1e-3, (n, float(off.float().mean()))
            if step is not None and off.any():  # a rare tie: exactly one code step
                torch.testing.assert_close((got - want)[off].abs(),
                                           torch.full_like(got[off], step), rtol=1e-4, atol=0)
        if label == "dynamic-asym":  # every code the same: the very function
            torch.testing.assert_close(loaded(batches[1]).logits, ref(batches[1]).logits,
                                       rtol=1e-5, atol=1e-5)


def test_what_the_format_cannot_carry_is_refused(calibrated, tmp_path):
    model, names, _, _ = calibrated
    qs = quantizers(calibrated, SCHEMES["static-asym"])
    records = {n: q.record() for n, q in qs.items()}
    configs = {n: QuantConfig(8, 32, symmetric=True) for n in names[1:]}  # names[0] left at 16
    with pytest.raises(ValueError, match=f"{names[0]} has a 8-bit input and 16-bit weights"):
        write_export("compressed-tensors", model, configs, tmp_path, {"activations": records})
    configs[names[0]] = QuantConfig(8, 32, symmetric=True)
    bad = dict(records, **{names[0]: {**records[names[0]], "bits": 16}})
    with pytest.raises(ValueError, match="a 16-bit static input"):
        write_export("compressed-tensors", model, configs, tmp_path, {"activations": bad})
    with pytest.raises(ValueError, match="export 'gptq' does not store activation quantization"):
        write_export("gptq", model, configs, tmp_path, {"activations": records})


def test_the_manifest_and_the_spec_say_which_formats_store_input_quantization():
    from pydantic import ValidationError

    from workers.manifest import manifest
    from workers.spec import JobSpec

    served = {f["name"]: f["activation_quantization"] for f in manifest()["exports"]}
    assert served == {"bitalloc": True, "compressed-tensors": True, "gptq": False, "gguf-plan": False}
    JobSpec(model="minilm", budgets={"bops": 1e9}, activation_bits=[8, 16], export="compressed-tensors")
    with pytest.raises(ValidationError, match="need export 'bitalloc' or 'compressed-tensors'"):
        JobSpec(model="minilm", budgets={"bops": 1e9}, activation_bits=[8, 16], export="gptq")
