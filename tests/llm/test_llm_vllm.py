"""The Hugging Face exports served by vLLM, the engine they are written for: smollm2-135m
with its projections at 4 bits (down projections at 8) in symmetric groups of 64,
exported as gptq and as compressed-tensors, loads in vLLM and answers greedily as
bitalloc's fake-quantized model does. Needs a CUDA device and `pip install vllm`
(neither is a project dependency); skipped without them, as on every CPU machine."""

from __future__ import annotations

import pytest
import torch

from kernels.export.registry import write_export
from kernels.fake_quant import fake_quantize_model
from kernels.scheme import QuantConfig

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
vllm = pytest.importorskip("vllm")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TOKENS = 12


@pytest.mark.parametrize("fmt", ["gptq", "compressed-tensors"])
def test_vllm_serves_the_export_as_bitalloc_evaluates_it(smollm2, tmp_path, fmt):
    model, tokenizer, _ = smollm2
    configs = {name: QuantConfig(8 if name.endswith("down_proj") else 4, 64, symmetric=True)
               for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and ".layers." in name}
    write_export(fmt, model, configs, tmp_path, {"layers": {}}, tokenizer=tokenizer)

    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt")
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    reference = fake_quantize_model(model, configs).half().cuda().eval()
    with torch.no_grad():
        ours = reference.generate(ids.cuda(), attention_mask=torch.ones_like(ids).cuda(),
                                  max_new_tokens=TOKENS, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()

    engine = vllm.LLM(model=str(tmp_path), dtype="float16", enforce_eager=True,
                      max_model_len=256, gpu_memory_utilization=0.3)
    out = engine.generate([{"prompt_token_ids": ids[0].tolist()}],
                          vllm.SamplingParams(temperature=0.0, max_tokens=TOKENS))[0].outputs[0]
    theirs = list(out.token_ids)
    # fp16 kernels differ in rounding: the first tokens agree, the answer is the same
    assert theirs[:4] == ours[:4], (tokenizer.decode(theirs), tokenizer.decode(ours))
    assert "Paris" in tokenizer.decode(theirs)
