"""Block streaming for Llama-family causal LMs: the model skeleton on the meta
device, one decoder block's weights read from the safetensors at a time, and the
calibration hidden states kept between blocks, so forward passes, Gauss–Newton
traces, measured losses and sequential GPTQ run with one block resident and give
what the whole model gives.

- `store`: the folder's safetensors tensors, read lazily;
- `skeleton`: `StreamedCausalLM` (resident embedding, norm, head; `block(i)`);
- `hidden`: hidden states in memory up to a budget, on disk past it;
- `gauss_newton`: block-streamed per-sample Gauss–Newton probe norms;
- `measure`: block-streamed calibration loss with one layer quantized;
- `gptq`: block-streamed sequential GPTQ.
"""
