"""The one provider of quantized weights in a job: Q_b(W_l) for each layer and width
under the job's quantizer (`QuantScheme.algorithm`), computed once and kept.

Everything that needs a quantized weight asks it: ΔW_l(b) = Q_b(W_l) − W_l in every
Ω formula, the layers `empirical` and `interlayer` swap in, the fake-quantized
evaluation of an allocation and the packed artifact. So the sensitivity measures
the quantizer that ships, and the artifact holds the very codes evaluated.

* `rtn`: round-to-nearest (`kernels.quantizer`), no calibration data.
* `gptq`: `kernels.gptq` on each layer's input Hessian.
* `adaquant`: GPTQ's codes refined by `kernels.adaquant` (weights within their grid,
  scales, zero points; a bias absorbs the mean output error), and for an applied
  allocation BatchNorm re-estimated on the quantized model.

Layers the algorithm cannot calibrate are rounded to nearest and said so in
`notes`: embeddings (a lookup has no input matrix to compensate over), grouped
convolutions, and weights shared by several modules (a tied LM head sees other
inputs than the embedding that holds the weight).

The inputs come from the bundle's quantizer calibration (`bundle.quantizer_batches`:
for the causal-LM family on its built-in prose, 128 windows of 128 tokens instead of
the sensitivity methods' 8; elsewhere the calibration batches). AdaQuant needs no
more of them than GPTQ: its refinement reads only XᵀX and the mean input row, and
its BatchNorm re-estimation runs the model over the same batches.

Two kinds of inputs (`sensitivity.layer_inputs`): per-layer Q_b(W_l) for the
tables comes from the full-precision model's inputs, one Hessian per layer
gathered once and reused for every width; `apply(choices)` quantizes sequentially,
each layer from the inputs it gets with the earlier layers at their chosen widths
(GPTQ's order), as the evaluation and the artifact need.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from kernels.adaquant import adaquant_quantize, reestimate_batchnorm
from kernels.fake_quant import fake_quantize_model, fake_quantize_weight, weight_quantization_error
from kernels.gptq import gptq_quantize
from kernels.hessian import LayerHessian, supports
from kernels.layout import from_quantizer_view, quantizer_view, shared_users
from kernels.quantizer import QuantizedWeight, quantize
from kernels.scheme import ACTIVATION_BITS, QuantConfig, QuantScheme
from sensitivity.activations import QuantizedActivations
from sensitivity.bundle import ModelBundle
from sensitivity.layer_inputs import collect_hessians, quantize_sequentially, quantizer_runs
from sensitivity.layers import quantizable_modules
from sensitivity.progress import Progress, no_progress
from sensitivity.table import Choice

APPLIED_KEPT = 1  # calibrated allocations kept: the one evaluated last is the one packed next


@dataclass
class AppliedAllocation:
    """An allocation applied with the job's quantizer.

    `model` computes it in float (each quantized weight dequantized, biases
    corrected, BatchNorm re-estimated where the algorithm does so); `quantized`
    holds the codes of every quantized layer for the packer (empty for `rtn`, whose
    packer quantizes the same way itself)."""

    model: nn.Module
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # sequential order of the calibrated layers
    seconds: float = 0.0


class QuantizedWeights:
    """Q_b(W_l) of the layers of `bundle.model` under `scheme`, computed once and kept."""

    def __init__(self, bundle: ModelBundle, scheme: QuantScheme, progress: Progress = no_progress,
                 stage: str = "sensitivity"):
        self.bundle, self.scheme = bundle, scheme
        self.progress, self.stage = progress, stage
        self.modules = dict(bundle.model.named_modules())
        self.notes: dict[str, str] = {}
        self._codes: dict[tuple[str, int], QuantizedWeight] = {}
        self._bias_shift: dict[tuple[str, int], torch.Tensor | None] = {}
        self._weights: dict[tuple[str, Choice], torch.Tensor] = {}
        self._errors: dict[tuple[str, Choice], float] = {}
        self._hessians: dict[str, LayerHessian] | None = None
        self._applied: OrderedDict[tuple, AppliedAllocation] = OrderedDict()
        self.seconds = {"hessians": 0.0, "layers": 0.0}
        self._activations: QuantizedActivations | None = None

    @property
    def activations(self) -> QuantizedActivations:
        """The job's input quantizers (`scheme.activation`), calibrated on first use."""
        if self._activations is None:
            self._activations = QuantizedActivations(self.bundle, self.scheme.activation)
        return self._activations

    # --- which layers the algorithm calibrates -------------------------------------

    def calibrated(self, name: str) -> bool:
        """True when `name` is quantized by the job's algorithm, False for RTN."""
        if not self.scheme.calibrated:
            return False
        if name not in self.notes:
            self.notes[name] = self._rtn_reason(name)
        return self.notes[name] == ""

    def rtn_notes(self) -> dict[str, str]:
        """Layers rounded to nearest under a calibrated algorithm, with the reason."""
        return {n: why for n, why in self.notes.items() if why}

    def _rtn_reason(self, name: str) -> str:
        module = self.modules[name]
        if isinstance(module, nn.Embedding):
            return "embedding: rounded to nearest (a lookup has no inputs to compensate over)"
        if not supports(module):
            return f"{type(module).__name__} with groups: rounded to nearest"
        users = shared_users(self.bundle.model, name)
        if users:
            return f"weight shared with {', '.join(sorted(users))}: rounded to nearest"
        return ""

    # --- per layer, per width (full-precision inputs) ----------------------------

    def __call__(self, name: str, choice: Choice, keep: bool = True) -> torch.Tensor:
        """Q_b(W_l) in the module's storage layout and dtype (16 bits: its fp16 storage).

        With `keep=False` a weight not kept yet is computed and returned without being
        kept (a pass over every layer and width, such as `interlayer`'s pair terms, then
        holds one at a time, not the whole model at every width); one already kept is
        returned as it is. The values are the same either way; a calibrated
        algorithm's codes (`quantized`) are kept in both cases."""
        key = (name, choice)
        weight = self._weights.get(key)
        if weight is None:
            module = self.modules[name]
            config = self.scheme.for_choice(choice)
            if config.quantized and self.calibrated(name):
                w = self.quantized(name, config.bits).dequantize(module.weight.dtype)
                weight = from_quantizer_view(module, w)
            else:
                weight = fake_quantize_weight(module, config)
            if keep:
                self._weights[key] = weight
        return weight

    def delta(self, name: str, choice: Choice, keep: bool = True) -> torch.Tensor:
        """ΔW_l(b) = Q_b(W_l) − W_l, in the storage layout (`keep` as in `__call__`)."""
        return self(name, choice, keep) - self.modules[name].weight.detach()

    def error(self, name: str, choice: Choice) -> float:
        """‖ΔW_l(b)‖² (float64 accumulation)."""
        key = (name, choice)
        if key not in self._errors:
            module = self.modules[name]
            config = self.scheme.for_choice(choice)
            if config.quantized and self.calibrated(name):
                w = quantizer_view(module).detach()
                q = self.quantized(name, config.bits).dequantize(torch.float64)
                self._errors[key] = float((q - w.double()).pow(2).sum())
            else:
                self._errors[key] = weight_quantization_error(module, config)
        return self._errors[key]

    def errors(self, names: Sequence[str], choices: Sequence[Choice]) -> dict[str, dict[Choice, float]]:
        """‖ΔW_l(b)‖² for every layer and choice."""
        if self.bundle.streamed is not None:  # round to nearest, one block read at a time
            return self.bundle.streamed.errors(names, self.scheme, choices)
        self.prepare(names, [c[0] for c in choices])
        return {n: {c: self.error(n, c) for c in choices} for n in names}

    def bias(self, name: str, choice: Choice) -> torch.Tensor | None:
        """The layer's bias as its quantized form uses it (AdaQuant moves it by ΔW μ)."""
        module = self.modules[name]
        bias = getattr(module, "bias", None)
        config = self.scheme.for_choice(choice)
        if bias is None or not config.quantized or not self.calibrated(name):
            return bias
        self.quantized(name, config.bits)
        shift = self._bias_shift.get((name, config.bits))
        return bias if shift is None else (bias.detach() + shift.to(bias.dtype))

    def quantized(self, name: str, bits: int) -> QuantizedWeight:
        """The codes of layer `name` at `bits` (GPTQ / AdaQuant from full-precision inputs,
        or RTN for the layers the algorithm does not calibrate)."""
        key = (name, bits)
        if key not in self._codes:
            module = self.modules[name]
            config = self.scheme.config(bits)
            if self.calibrated(name):
                hessian = self.hessian(name)
                start = time.perf_counter()
                self._codes[key], self._bias_shift[key] = self._calibrate(name, module, hessian, config)
                self.seconds["layers"] += time.perf_counter() - start
            else:
                self._codes[key] = quantize(quantizer_view(module), config)
        return self._codes[key]

    def prepare(self, names: Sequence[str], bits: Sequence[int]) -> None:
        """Quantize every named layer at every width now, reporting progress per layer and
        width (the tables need all of them; later calls are lookups)."""
        todo = [(n, b) for n in names for b in sorted(set(bits))
                if b < 16 and self.calibrated(n) and (n, b) not in self._codes]
        if todo:
            self.hessian(todo[0][0])  # the inputs first, reported as such
        for i, (name, b) in enumerate(todo):
            self.progress(self.stage, i / len(todo),
                          f"{self.scheme.algorithm}: {name} at {b} bits ({i + 1}/{len(todo)})")
            self.quantized(name, b)

    def hessian(self, name: str) -> LayerHessian:
        """The XᵀX of layer `name` over the quantizer calibration, the model at full
        precision (collected for every calibrated layer in one pass, on first use)."""
        if self._hessians is None:
            start = time.perf_counter()
            names = [n for n in quantizable_modules(self.bundle.model) if self.calibrated(n)]
            self.progress(self.stage, 0.0, f"{self.scheme.algorithm}: collecting the inputs of "
                                           f"{len(names)} layers")
            self._hessians = collect_hessians(self.bundle.model, names, quantizer_runs(self.bundle))
            self.seconds["hessians"] += time.perf_counter() - start
        return self._hessians[name]

    def _calibrate(self, name: str, module: nn.Module, hessian: LayerHessian,
                   config: QuantConfig) -> tuple[QuantizedWeight, torch.Tensor | None]:
        s = self.scheme
        view = quantizer_view(module)
        q = gptq_quantize(view, hessian, config, damping=s.damping, act_order=s.act_order,
                          block_size=s.block_size, name=name)
        if s.algorithm != "adaquant":
            return q, None
        has_bias = getattr(module, "bias", None) is not None
        result = adaquant_quantize(view, hessian, q, steps=s.adaquant_steps, lr=s.adaquant_lr,
                                   has_bias=has_bias)
        return result.quantized, result.bias_shift

    # --- an applied allocation (sequential inputs) ----------------------------------

    def apply(self, choices: Mapping[str, Choice]) -> AppliedAllocation:
        """The allocation `choices` ({layer: choice}) applied with the job's quantizer; the
        inputs of layers at a_bits < 16 are fake-quantized by forward pre-hooks on a copy
        of the weight-quantized model (`sensitivity.activations`)."""
        a_bits = {name: c[1] for name, c in choices.items() if c[1] < ACTIVATION_BITS}
        if not a_bits:
            return self._apply_weights(choices)
        applied = self._apply_weights({name: (c[0], ACTIVATION_BITS) for name, c in choices.items()})
        model = applied.model if not self.scheme.calibrated else copy.deepcopy(applied.model)
        self.activations.attach(model, a_bits)
        return dataclasses.replace(applied, model=model)

    def _apply_weights(self, choices: Mapping[str, Choice]) -> AppliedAllocation:
        key = tuple(sorted(choices.items()))
        if key in self._applied:
            self._applied.move_to_end(key)
            return self._applied[key]
        configs = {name: self.scheme.for_choice(c) for name, c in choices.items()}
        if not self.scheme.calibrated:  # cheap to redo: nothing kept
            return AppliedAllocation(model=fake_quantize_model(self.bundle.model, configs))
        applied = self._apply_calibrated(configs)
        self._applied[key] = applied
        while len(self._applied) > APPLIED_KEPT:
            self._applied.popitem(last=False)
        return applied

    @torch.no_grad()
    def _apply_calibrated(self, configs: Mapping[str, QuantConfig]) -> AppliedAllocation:
        start = time.perf_counter()
        model = copy.deepcopy(self.bundle.model)
        modules = dict(model.named_modules())
        quantized: dict[str, QuantizedWeight] = {}
        pending = [n for n, cfg in configs.items() if cfg.quantized and self.calibrated(n)]
        for name, cfg in configs.items():  # RTN and 16-bit layers need no inputs: first
            if name in pending:
                continue
            module = modules[name]
            if cfg.quantized:
                quantized[name] = self.quantized(name, cfg.bits)
                w = quantized[name].dequantize(module.weight.dtype)
                module.weight.copy_(from_quantizer_view(module, w))
            else:
                module.weight.copy_(fake_quantize_weight(module, cfg))

        def quantize_layer(name: str, hessian: LayerHessian) -> None:
            module = modules[name]
            q, shift = self._calibrate(name, module, hessian, configs[name])
            quantized[name] = q
            module.weight.copy_(from_quantizer_view(module, q.dequantize(module.weight.dtype)))
            if shift is not None:
                module.bias.add_(shift.to(module.bias.dtype))

        done = [0]

        def report(name: str) -> None:
            done[0] += 1
            self.progress(self.stage, done[0] / max(len(pending), 1),
                          f"{self.scheme.algorithm}: {name} at {configs[name].bits} bits "
                          f"({done[0]}/{len(pending)}, sequential)")

        runs = quantizer_runs(self.bundle)
        order = quantize_sequentially(model, pending, runs, quantize_layer, report)
        if self.scheme.algorithm == "adaquant":
            reestimate_batchnorm(model, lambda m: [run(m) for run in runs])
        seconds = time.perf_counter() - start
        self.seconds["applied"] = self.seconds.get("applied", 0.0) + seconds
        return AppliedAllocation(model=model, quantized=quantized, order=order, seconds=seconds)

    def meta(self) -> dict:
        """What the result reports about the quantizer: its settings, the seconds spent
        collecting inputs and quantizing layers (per-layer tables and applied
        allocations), and the layers it rounded to nearest, with the reason."""
        return {"settings": self.scheme.as_dict(),
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "rtn_layers": self.rtn_notes()}
