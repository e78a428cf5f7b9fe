"""The `causal-lm` family: decoder-only language models (Llama, Qwen, Mistral, GPT-2,
…) — the built-in `smollm2-135m`, its architecture with uploaded weights, uploaded
Hugging Face folders whose config.json names a `*ForCausalLM` / `*LMHeadModel`
architecture, and uploaded GGUF files (dequantized to fp32).

Calibration: token sequences — the uploaded texts (one sequence per text, at most
`SEQUENCE_LENGTH` tokens; even rows calibrate, odd rows evaluate) or token ids, or
else windows of `SEQUENCE_LENGTH` tokens from the calibration half of the built-in
prose (`sensitivity.data.prose`). GPTQ and AdaQuant take their layer inputs from
more of that half (`QUANTIZER_SEQUENCES` windows, input-only:
`ModelBundle.quantizer_calibration`), on uploaded data from its calibration rows.
Loss: self-distillation KL to the full-precision next-token distributions at every
real token (zero residual: `fisher` measures the exact Gauss–Newton trace, which is
then the Hessian's). An uploaded safetensors dataset with `labels` of the shape of
`inputs` (the Hugging Face convention: the input ids themselves, −100 where no loss
is wanted) selects next-token cross-entropy instead. Quality on held-out text:
perplexity (headline), mean KL to the full-precision distributions and top-1
agreement with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.catalog import FAMILIES
from sensitivity.data.prose import load_prose
from sensitivity.data.uploaded import read_tensors, split_rows
from sensitivity.memory import release_freed_memory
from sensitivity.models import smollm2
from sensitivity.models.family import ModelRequest
from sensitivity.models.hf import load_hf_tokenizer
from sensitivity.models.lm_loading import gguf_folder, load_hf_causal_lm
from sensitivity.models.lm_metrics import lm_quality, predicted, reference_of
from sensitivity.models.text_data import (
    MAX_TEXT_CALIBRATION,
    MAX_TEXT_EVALUATION,
    check_loading,
    chunks,
    folder_tokenizer,
    token_ids,
    uploaded_text_batches,
)
from sensitivity.models.weights import load_strict, read_state_dict
from sensitivity.output_loss import NextTokenCrossEntropyOutput, TokenDistillationKLOutput
from sensitivity.streaming.budget import max_memory
from sensitivity.streaming.budget import plan as streaming_plan

FAMILY = FAMILIES["causal-lm"]
SEQUENCE_LENGTH = 128
CALIBRATION_SEQUENCES = 8  # 1,024 calibration tokens from the built-in prose
CALIBRATION_BATCH = 1  # one sequence per batch: Gauss–Newton probes hold (probes, tokens, vocabulary)
EVALUATION_SEQUENCES = 16  # 2,048 held-out tokens
EVALUATION_BATCH = 2
# GPTQ / AdaQuant's layer inputs (`ModelBundle.quantizer_calibration`) on the built-in
# prose: 16,384 tokens (or as many windows as the calibration half holds) from the
# calibration half — 1,024 leave a layer's XᵀX (K up to 1,536) nearly singular and GPTQ
# overfits them. Forward passes only (no targets, no probes): 8 sequences a batch.
QUANTIZER_SEQUENCES = 128
QUANTIZER_BATCH = 8
MODEL_INPUTS = ("input_ids", "attention_mask")
ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel")
DISTILLATION = "self-distillation KL to the full-precision next-token distributions"
TASK_LOSS = "next-token cross-entropy on the dataset's labels"


def claims(config: dict) -> bool:
    """A folder whose config.json names a causal-LM architecture."""
    return any(isinstance(a, str) and a.endswith(ARCHITECTURE_SUFFIXES)
               for a in config.get("architectures") or ())


def load(request: ModelRequest) -> ModelBundle:
    """The bundle of the request's causal LM: the whole fp32 model, or (a folder whose fp32
    weights do not fit `BITALLOC_MAX_MEMORY`, `sensitivity.streaming.budget`) its
    block-streamed skeleton."""
    name, source = request.name, request.source
    label = f"model {name!r}"
    facts: dict[str, float | str] = {"source": request.source_note()}
    uploaded_weights = request.builtin is not None and source is not None  # a state dict on smollm2
    if source is not None and source.kind == "gguf":
        folder, loaded = gguf_folder(source.path, label)
        facts.update(loaded, source="uploaded GGUF file, dequantized to fp32")
        facts["gguf_file"] = source.path.name  # the file whose values are the reference
        salt = loaded["gguf_sha256"]
    elif request.builtin is None:
        folder = source.path
        salt = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    else:
        folder, loaded = gguf_folder(smollm2.gguf_path(), label)
        facts["gguf_conversion"] = loaded["gguf_conversion"]
        if not uploaded_weights:
            facts["gguf_file"] = smollm2.GGUF_NAME
            facts["reference_weights"] = smollm2.REFERENCE
        salt = ""
    plan = None if uploaded_weights or max_memory() is None else streaming_plan(folder)
    if plan is not None and plan.stream:
        return _streamed(request, folder, plan, facts, salt)
    if request.builtin is None and source.kind != "gguf":
        model, tokenizer = _folder(request)
    else:
        model, _ = load_hf_causal_lm(folder)
        tokenizer = load_hf_tokenizer(str(folder))
    if uploaded_weights:
        label = f"model {name!r} ({request.builtin.name})"
        load_strict(model, read_state_dict(source.path, label), label)
    calibration, evaluation, data_facts = _data(request, model, tokenizer)
    facts.update(data_facts)
    quantizer = corpus_quantizer_batches(tokenizer, _max_tokens(model)) if request.data is None else None
    facts.update(quantizer_facts(quantizer, calibration))
    bundle = causal_lm_bundle(name, model, calibration, evaluation, description=_description(request, model),
                              info=facts, cache_salt=_salt(salt), tokenizer=tokenizer)
    bundle.quantizer_calibration = quantizer
    return bundle


def _description(request: ModelRequest, model: nn.Module) -> str:
    source = request.source
    if source is not None and source.kind == "gguf":
        return f"uploaded GGUF {type(model).__name__} (dequantized to fp32)"
    if request.builtin is None:
        return f"uploaded Hugging Face {source.architecture} model ({type(model).__name__})"
    if source is not None:
        return "smollm2-135m architecture (Llama, 30 blocks) with uploaded weights"
    return "SmolLM2-135M-Instruct (Llama, 30 blocks), dequantized Q4_1 GGUF"


def _salt(salt: str) -> str:
    return hashlib.sha256(f"{salt}|{FAMILY.name}|seq={SEQUENCE_LENGTH}|v1".encode()).hexdigest() \
        if salt else ""


def _folder(request: ModelRequest):
    name, folder = request.name, request.source.path
    try:
        model, loading = load_hf_causal_lm(folder)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"model {name!r}: transformers could not build the uploaded "
                         f"{request.source.architecture} causal language model: {exc}") from None
    check_loading(name, loading)
    return model, _folder_tokenizer(request, folder)


def _folder_tokenizer(request: ModelRequest, folder):
    """An uploaded folder's tokenizer, when the data needs one (texts, or the built-in prose)."""
    if request.data is not None and not request.data.is_text:
        return None
    return folder_tokenizer(request.name, folder, load_hf_tokenizer)


def _streamed(request: ModelRequest, folder, plan, facts: dict, salt: str) -> ModelBundle:
    """The block-streamed bundle (`sensitivity.streaming.model`): the skeleton, the data
    as the whole model would get it, the targets by one streamed forward pass. Round-to-
    nearest only, so no quantizer calibration batches."""
    from sensitivity.streaming.measure import distillation_targets
    from sensitivity.streaming.model import StreamedModel
    from sensitivity.streaming.skeleton import StreamedCausalLM

    name = request.name
    try:
        lm = StreamedCausalLM(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"model {name!r} is too large for this worker's memory budget "
                         f"({plan.describe()}) and cannot be block streamed: {exc}") from None
    expected = [n for n in lm.model.state_dict() if not (lm.tied and n == "lm_head.weight")]
    check_loading(name, {"missing_keys": [n for n in expected if n not in lm.store]})
    if request.builtin is None and request.source.kind != "gguf":
        tokenizer = _folder_tokenizer(request, folder)
    else:
        tokenizer = load_hf_tokenizer(str(folder))
    calibration, evaluation, data_facts = _data(request, lm.model, tokenizer)
    labelled = all("labels" in b for b in calibration)
    try:
        if not labelled:
            calibration = distillation_targets(lm, calibration)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"model {name!r} fails on its calibration data: "
                         f"{type(exc).__name__}: {exc}") from None
    output_loss = NextTokenCrossEntropyOutput() if labelled else TokenDistillationKLOutput()
    streamed = StreamedModel(lm, calibration, evaluation, output_loss, plan)

    def forward(model: nn.Module, batch: Batch) -> torch.Tensor:
        if model is not lm.model:
            raise ValueError("a block-streamed model computes with its own weights only")
        return streamed.logits(batch)

    def evaluate(model: nn.Module) -> dict[str, float]:
        if model is not lm.model:
            raise ValueError("a block-streamed model is evaluated through its StreamedModel")
        return streamed.quality({})

    return ModelBundle(
        name=name, model=lm.model, calibration=calibration, forward=forward,
        loss=lambda m, b: output_loss(forward(m, b), b), output_loss=output_loss, evaluate=evaluate,
        metrics=FAMILY.metrics, description=_description(request, lm.model) + ", block streamed",
        info={**lm_facts(lm.model, calibration, evaluation), **facts, **data_facts,
              "streaming": plan.describe(),
              "quantizer_calibration": "none: a block-streamed model is rounded to nearest"},
        cache_salt=_salt(salt), tokenizer=tokenizer, streamed=streamed)


def _max_tokens(model: nn.Module) -> int:
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None)
    return min(SEQUENCE_LENGTH, int(positions or SEQUENCE_LENGTH))


def _data(request: ModelRequest, model: nn.Module, tokenizer):
    """(calibration batches, evaluation batches, facts about them)."""
    data = request.data
    length = _max_tokens(model)
    if data is None:
        return corpus_batches(tokenizer, length)
    if data.is_text:
        calibration, evaluation, note = uploaded_text_batches(
            data, tokenizer, model, MODEL_INPUTS, length, CALIBRATION_BATCH, EVALUATION_BATCH)
        loss = DISTILLATION
        eval_note = f"held-out half of dataset {data.name!r} (odd rows, at most {MAX_TEXT_EVALUATION})"
    else:
        calibration, evaluation, note, loss = token_batches(data, model)
        eval_note = f"held-out half of dataset {data.name!r} (odd rows, at most {MAX_TEXT_EVALUATION})"
    return calibration, evaluation, {
        "calibration": f"{note}, {loss}", "evaluation": eval_note, "loss": loss,
        "sequence_length": max(int(b["input_ids"].shape[1]) for b in calibration + evaluation)}


def token_batches(data, model: nn.Module):
    """Batches of an uploaded token dataset; with `labels` shaped like `inputs` they
    carry them (next-token cross-entropy)."""
    tensors = read_tensors(data)
    ids, mask = token_ids(tensors, data.name, model)
    labels = tensors.get("labels")
    if labels is not None and (labels.shape != ids.shape or labels.is_floating_point()):
        raise ValueError(f"dataset {data.name!r}: a causal language model takes `labels` as token "
                         f"ids shaped like `inputs` {list(ids.shape)} (−100: no loss), got "
                         f"{labels.dtype} of shape {list(labels.shape)}")
    calib_rows, eval_rows = split_rows(ids.shape[0], MAX_TEXT_CALIBRATION, MAX_TEXT_EVALUATION)

    def batches(rows, size):
        batch = {"input_ids": ids[rows].long(), "attention_mask": mask[rows].long()}
        if labels is not None:
            batch["labels"] = labels[rows].long()
        return chunks(batch, size)

    note = f"uploaded dataset {data.name!r}: {len(calib_rows)} token sequences (even rows)"
    return (batches(calib_rows, CALIBRATION_BATCH), batches(eval_rows, EVALUATION_BATCH), note,
            TASK_LOSS if labels is not None else DISTILLATION)


def windows(tokenizer, text: str, length: int, count: int) -> torch.Tensor:
    """The first `count` non-overlapping windows of `length` tokens of `text`."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    n = min(count, ids.numel() // length)
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens, fewer than one window of {length}")
    return ids[:n * length].reshape(n, length)


def corpus_batches(tokenizer, length: int):
    prose = load_prose()
    calib = windows(tokenizer, prose.calibration, length, CALIBRATION_SEQUENCES)
    held = windows(tokenizer, prose.evaluation, length, EVALUATION_SEQUENCES)

    def batches(ids, size):
        return chunks({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, size)

    return batches(calib, CALIBRATION_BATCH), batches(held, EVALUATION_BATCH), {
        "calibration": f"built-in prose ({prose.calibration_parts}): the first {calib.shape[0]} "
                       f"sequences of {length} tokens, {DISTILLATION}",
        "evaluation": f"built-in prose ({prose.evaluation_parts}; no overlap with calibration): "
                      f"the first {held.shape[0]} sequences of {length} tokens",
        "loss": DISTILLATION, "sequence_length": length}


def corpus_quantizer_batches(tokenizer, length: int) -> list[Batch]:
    """The quantizer's calibration on the built-in prose: the first `QUANTIZER_SEQUENCES`
    windows of `length` tokens of the calibration half (as many as it holds if fewer;
    the sensitivity calibration's windows are the first of them), input-only."""
    ids = windows(tokenizer, load_prose().calibration, length, QUANTIZER_SEQUENCES)
    return chunks({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, QUANTIZER_BATCH)


def quantizer_facts(quantizer: Sequence[Batch] | None, calibration: Sequence[Batch]) -> dict:
    """What GPTQ / AdaQuant calibrate on: the prose windows, or (uploaded data: all its
    calibration rows, already capped) the calibration batches themselves."""
    batches = calibration if quantizer is None else quantizer
    sequences = sum(int(b["input_ids"].shape[0]) for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    what = ("the calibration sequences" if quantizer is None else
            f"built-in prose ({load_prose().calibration_parts}): {sequences} sequences of "
            f"{int(batches[0]['input_ids'].shape[1])} tokens")
    return {"quantizer_calibration": f"{what} (GPTQ / AdaQuant layer inputs, forward passes only)",
            "quantizer_calibration_sequences": sequences, "quantizer_calibration_tokens": tokens}


def forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Next-token logits (B, T, V)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits


def causal_lm_bundle(name: str, model: nn.Module, calibration: Sequence[Batch],
                     evaluation: Sequence[Batch], *, description: str, info: dict | None = None,
                     cache_salt: str = "", tokenizer=None) -> ModelBundle:
    """Calibration batches with `labels` use next-token cross-entropy; otherwise they
    get the full-precision logits as `target` (self-distillation KL). The model is
    switched to eager attention: flash and SDPA kernels have no double backward,
    which the Hessian methods (hawq_v1, hawq_v2's hvp engine, interlayer) take."""
    model.eval()
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")
    labelled = all("labels" in b for b in calibration)

    def run(data: str, compute):
        try:
            with torch.no_grad():
                return compute()
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:  # the user's model
            raise ValueError(f"model {name!r} fails on its {data} data: "
                             f"{type(exc).__name__}: {exc}") from None

    if not labelled:
        # the targets: full-precision next-token log-probabilities in fp16 (half the
        # memory of fp32 logits; the model's own KL to them is ~1e-7 nats per token)
        calibration = run("calibration", lambda: [
            {**b, "target": F.log_softmax(forward(model, b).float(), -1).half()} for b in calibration])
    else:
        run("calibration", lambda: forward(model, calibration[0]))
    release_freed_memory()  # the forward passes' activations
    reference: list[tuple[torch.Tensor, torch.Tensor]] = []

    def full_precision_reference():
        """Next-token log-probabilities of the full-precision `model`, kept in fp16 for
        the KL (the full-precision model's own KL to them is ~1e-6), and the exact top-1
        tokens; computed at the first evaluation, so the sensitivity stage does not hold
        them (16 × 128 × 49,152 values for smollm2)."""
        if not reference:
            reference.extend([reference_of(forward(model, b)) for b in evaluation])
        return reference

    def evaluate(m: nn.Module) -> dict[str, float]:
        refs = run("evaluation", full_precision_reference)
        with torch.no_grad():
            return lm_quality(evaluation, (forward(m, b) for b in evaluation), refs)

    output_loss = NextTokenCrossEntropyOutput() if labelled else TokenDistillationKLOutput()
    return ModelBundle(
        name=name,
        model=model,
        calibration=calibration,
        forward=forward,
        loss=lambda m, b: output_loss(forward(m, b), b),
        output_loss=output_loss,
        evaluate=evaluate,
        metrics=FAMILY.metrics,
        description=description,
        info={**lm_facts(model, calibration, evaluation), **(info or {})},
        cache_salt=cache_salt,
        tokenizer=tokenizer,
    )


def lm_facts(model: nn.Module, calibration: Sequence[Batch], evaluation: Sequence[Batch]) -> dict:
    """What the result reports of a causal LM and its data (tokens, blocks, parameters)."""
    return {"calibration_sequences": sum(int(b["input_ids"].shape[0]) for b in calibration),
            "calibration_tokens": sum(int(b["attention_mask"].sum()) for b in calibration),
            "evaluation_sequences": sum(int(b["input_ids"].shape[0]) for b in evaluation),
            "evaluation_tokens": sum(int(b["attention_mask"].sum()) for b in evaluation),
            "evaluation_predicted_tokens": sum(int(predicted(b).sum()) for b in evaluation),
            "model_class": type(model).__name__,
            "blocks": int(getattr(model.config, "num_hidden_layers", 0)
                          or getattr(model.config, "n_layer", 0)),
            "parameters": sum(p.numel() for p in model.parameters()),
            "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False))}
