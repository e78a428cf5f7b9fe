"""Block streaming for Llama-family causal LMs: the model skeleton on the meta
device, one decoder block's weights read from the safetensors at a time, and the
calibration hidden states kept between blocks, so forward passes, Gauss–Newton
traces, measured losses and sequential GPTQ run with one block resident and give
what the whole model gives.

- `store`: the folder's safetensors tensors, read lazily;
- `skeleton`: `StreamedCausalLM` (resident embedding, norm, head; `block(i)`);
- `hidden`: hidden states in memory up to a budget, on disk past it;
- `gauss_newton`: block-streamed per-sample Gauss–Newton probe norms;
- `fisher`: the probe rounds, RTN errors block by block, the `fisher` table;
- `measure`: block-streamed calibration loss with one layer quantized (`empirical`);
- `gptq`: block-streamed sequential GPTQ;
- `evaluate`: the causal-LM family's quality metrics of an allocation, streamed;
- `budget`: `BITALLOC_MAX_MEMORY` and whether a folder must be streamed under it.

Each is tested against the whole-model computation (tests/streaming/).
"""
