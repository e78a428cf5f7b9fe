"""What each export format can hold, free of torch: the job spec checks a request
against it at submit time and the problem builder turns it into per-layer limits
before the integer program solves (DESIGN §6)."""

from __future__ import annotations

from dataclasses import dataclass

from kernels.scheme import WEIGHT_BITS


@dataclass(frozen=True)
class ExportFormat:
    name: str
    description: str
    widths: tuple[int, ...]  # weight widths the format holds (16: left unquantized)
    symmetric: bool | None = None  # True: only symmetric groups load; None: either
    whole_groups: bool = False  # the group size must divide every quantized layer's inputs
    inputs_multiple: int = 1  # every quantized layer's inputs a multiple of this (packing)
    quantizes_embeddings: bool = True
    layer_kinds: tuple[str, ...] | None = None  # layer kinds it can quantize; None: all
    quantizes_lm_head: bool = True
    fused_ties: bool = False  # q/k/v and gate/up share their bits (the engine fuses them)
    hf_folder: bool = False  # writes a Hugging Face model folder (needs a transformers model)
    grid: str = "group"  # the weight grid it stores (kernels.scheme.GRIDS): a job uses it
    input_quantization: bool = False  # stores layers' input quantizers (a_bits < 16)
    inputs_need_weights: bool = False  # ... only of layers whose weights it quantizes

    def check_spec(self, weight_bits: list[int], symmetric: bool) -> None:
        """Raise ValueError with the reason when a job's settings cannot be exported."""
        outside = sorted(set(weight_bits) - set(self.widths))
        if outside:
            raise ValueError(f"export {self.name!r} holds weight widths {list(self.widths)}; "
                             f"remove {outside} from weight_bits")
        if self.symmetric and not symmetric:
            raise ValueError(f"export {self.name!r} loads symmetric groups only: set "
                             "quant.symmetric to true")


EXPORT_FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("bitalloc", "bitalloc's packed artifact (model.safetensors + allocation.json), "
                 "run by kernels.artifact.load_artifact", WEIGHT_BITS, input_quantization=True),
    # symmetric only: transformers' CPU loader (compressed-tensors 0.20) cannot build the
    # packed zero points of asymmetric groups, and vLLM's Marlin/Machete kernels serve
    # symmetric groups
    ExportFormat("compressed-tensors", "compressed-tensors pack-quantized Hugging Face folder "
                 "(transformers with the compressed-tensors package, vLLM)",
                 (2, 3, 4, 5, 6, 8, 16), symmetric=True, whole_groups=True,
                 quantizes_embeddings=False, layer_kinds=("linear", "embedding"), hf_folder=True,
                 # a config group's input_activations: int, static per tensor (with its
                 # input_scale) or dynamic per token, on the layers whose weights it packs
                 input_quantization=True, inputs_need_weights=True),
    # vLLM's gptq method: 2/3/4/8-bit groups with zero points, fused q/k/v and gate/up,
    # embeddings and the LM head in 16 bits
    ExportFormat("gptq", "GPTQ Hugging Face folder with per-module `dynamic` bits (vLLM's gptq "
                 "method)", (2, 3, 4, 8, 16), whole_groups=True, inputs_multiple=32,
                 quantizes_embeddings=False,
                 layer_kinds=("linear", "embedding"), quantizes_lm_head=False, fused_ties=True,
                 hf_folder=True),
    # llama.cpp: each tensor's GGUF type for `llama-quantize --tensor-type-file`; the job is
    # measured on the GGUF types themselves (kernels.gguf_quants), each layer offered the
    # widths whose type fits its rows (kernels.scheme.gguf_widths)
    ExportFormat("gguf-plan", "llama.cpp tensor-type plan (GGUF type of every tensor, for "
                 "llama-quantize --tensor-type-file) and the exact llama-quantize command",
                 WEIGHT_BITS, layer_kinds=("linear", "embedding"), grid="gguf"),
)}


def export_format(name: str) -> ExportFormat:
    if name not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {name!r}; formats: {', '.join(EXPORT_FORMATS)}")
    return EXPORT_FORMATS[name]
