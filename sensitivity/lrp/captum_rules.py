"""captum's LRP on a canonized copy of a convolutional/MLP model.

captum needs every module to carry a rule and every addition to be a module, and
its backward hooks break on BatchNorm. Canonization (on a `torch.fx` trace of a
deep copy): BatchNorm folded into the preceding convolution
(`torch.fx.experimental.optimization.fuse`), each `+` replaced by captum's
`Addition_Module`, a module called more than once split into copies (captum keeps
per-module state), and `Flatten` given an identity rule that reshapes (captum's
`IdentityRule` returns the output's shape and breaks the backward); `nn.Identity`
calls are dropped. captum keeps
its layer and hook lists on the class, so each run starts them empty. Module
names of the quantizable layers are kept, so relevance is reported under the
bundle's names.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from sensitivity.bundle import Batch, ModelBundle
from sensitivity.lrp.relevance import LayerRelevance, totals


def _flatten_rule():
    from captum.attr._utils.lrp_rules import IdentityRule

    class FlattenRule(IdentityRule):
        """Relevance passes through unchanged, reshaped back to the input's shape."""

        def _create_backward_hook_input(self, inputs):
            def _backward_hook_input(grad):
                return self.relevance_output[grad.device].reshape(inputs.shape)

            return _backward_hook_input

    return FlattenRule()


def canonize(model: nn.Module) -> fx.GraphModule:
    from captum.attr._utils.custom_modules import Addition_Module

    try:
        gm = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as exc:  # fx raises many kinds of errors on untraceable code
        raise ValueError(f"lrp: captum rules need an fx-traceable model ({exc}); "
                         "use rules='modified_gradient'") from exc
    gm = fuse(gm)
    seen: dict[str, int] = {}
    adds = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in (operator.add, torch.add) and all(
                isinstance(a, fx.Node) for a in node.args[:2]):
            name = f"lrp_add_{adds}"
            adds += 1
            gm.add_submodule(name, Addition_Module())
            with gm.graph.inserting_before(node):
                new = gm.graph.call_module(name, args=tuple(node.args[:2]))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        elif node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif node.op == "call_module":
            seen[node.target] = seen.get(node.target, 0) + 1
            if seen[node.target] > 1:
                copy_name = f"{node.target.replace('.', '_')}_lrp_copy{seen[node.target]}"
                gm.add_submodule(copy_name, copy.deepcopy(gm.get_submodule(node.target)))
                node.target = copy_name
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    for m in gm.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            raise ValueError("lrp: a BatchNorm that does not follow a convolution cannot be folded; "
                             "use rules='modified_gradient'")
    return gm


def batch_relevance(bundle: ModelBundle, gm: fx.GraphModule, batch: Batch,
                    names: Sequence[str]) -> LayerRelevance:
    """Relevance totals at the output of each named layer (captum `LayerLRP`),
    starting from the bundle's output relevance (the true class logit)."""
    from captum.attr import LayerLRP

    if bundle.inputs is None:
        raise ValueError(f"lrp: captum rules need `inputs` on the bundle; {bundle.name} has none")
    labels = _targets(bundle, batch)
    inputs = tuple(x.detach().clone().requires_grad_(x.is_floating_point()) for x in bundle.inputs(batch))
    layers = [gm.get_submodule(n) for n in names]
    for m in gm.modules():
        if isinstance(m, nn.Flatten):
            m.rule = _flatten_rule()  # captum deletes rules after every run
    lrp = LayerLRP(gm, layers)
    lrp.layers, lrp.backward_handles, lrp.forward_handles = [], [], []
    attributions = lrp.attribute(inputs if len(inputs) > 1 else inputs[0], target=labels)
    rel = {n: a.detach() for n, a in zip(names, attributions)}
    with torch.no_grad():
        out = gm(*inputs)
    f = float(out.gather(-1, labels.unsqueeze(-1)).sum())
    signed, absolute = totals(rel)
    return LayerRelevance(f, signed, absolute)


def _targets(bundle: ModelBundle, batch: Batch) -> torch.Tensor:
    loss = bundle.output_loss
    key = getattr(loss, "label_key", None)
    if key is None:
        raise ValueError("lrp: captum rules need a classification output loss with labels")
    return batch[key]
