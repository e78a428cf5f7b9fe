"""`lrp` (LRP-QViT): Ω_l(b) = R_l · ‖ΔW_l(b)‖² / ‖W_l‖², R_l the layer's relevance
from layer-wise relevance propagation over the calibration data, Σ|R| at the
layer's output normalised so Σ_l R_l = 1.

Params (`sensitivity.methods.LRPConfig`): rules ("auto": captum for models without
LayerNorm/RMSNorm/attention that give their inputs, modified_gradient otherwise;
"captum"; "modified_gradient": the AttnLRP rules of `sensitivity.lrp.modified_gradient`),
eps (epsilon rule, default 1e-6), attention (modified_gradient's softmax: "attnlrp",
AttnLRP's rule, so the query and key projections get relevance; "constant", the
attention weights held constant as in CP-LRP). layer_stats carry R_l and
`conservation` = Σ R at the layer / output relevance.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from torch import nn

from sensitivity.bundle import ModelBundle
from sensitivity.estimators.context import EstimatorContext, StageProgress
from sensitivity.lrp.relevance import LayerRelevance
from sensitivity.methods import LRPConfig
from sensitivity.omega import weight_norms
from sensitivity.table import SensitivityTable


def resolve_rules(bundle: ModelBundle, rules: str) -> str:
    if rules != "auto":
        return rules
    transformer = any(isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.MultiheadAttention))
                      or type(m).__name__.endswith("RMSNorm") for m in bundle.model.modules())
    return "modified_gradient" if transformer or bundle.inputs is None else "captum"


def layer_relevance(bundle: ModelBundle, names: Sequence[str], config: LRPConfig,
                    progress: StageProgress) -> tuple[LayerRelevance, str]:
    bundle.require_output_loss("lrp")
    rules = resolve_rules(bundle, config.rules)
    total: LayerRelevance | None = None
    if rules == "captum":
        from sensitivity.lrp import captum_rules

        gm = captum_rules.canonize(bundle.model)
        run = lambda batch: captum_rules.batch_relevance(bundle, gm, batch, names)  # noqa: E731
    else:
        from sensitivity.lrp import modified_gradient

        run = lambda batch: modified_gradient.batch_relevance(  # noqa: E731
            bundle, batch, names, config.eps, config.attention)
    for k, batch in enumerate(bundle.calibration):
        r = run(batch)
        total = r if total is None else total.add(r)
        progress((k + 1) / len(bundle.calibration), f"LRP ({rules}) batch {k + 1}")
    return total, rules


def estimate(ctx: EstimatorContext, config: LRPConfig) -> SensitivityTable:
    start = time.perf_counter()
    names = ctx.names
    rel, rules = layer_relevance(ctx.bundle, names, config, ctx.progress)
    r = rel.normalised()
    errors = ctx.quant_errors()
    norms = weight_norms(ctx.bundle.model, names)
    omega = {n: {c: r[n] * e / norms[n] if norms[n] > 0 else 0.0 for c, e in errors[n].items()}
             for n in names}
    return SensitivityTable(
        method="lrp",
        omega=omega,
        layer_stats={n: {"relevance": r[n], "conservation": rel.signed[n] / rel.output if rel.output else 0.0}
                     for n in names},
        meta={"params": config.meta_params(), "rules": rules, "output_relevance": rel.output,
              "seconds": time.perf_counter() - start},
    )
