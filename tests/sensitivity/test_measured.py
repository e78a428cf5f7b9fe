"""empirical and interlayer: measured values against direct evaluation, second-order
pair terms against the dense Hessian's cross blocks."""

import pytest
import torch
from sens_dense import Dense
from sens_models import tiny_cnn, tiny_mlp
from sens_run import CHOICES, run_method
from sens_run import used_layers as _layers

from kernels.fake_quant import fake_quantize_model
from kernels.quantizer import fake_quantize
from kernels.scheme import QuantConfig, QuantScheme
from sensitivity.estimators.interlayer import neighbour_pairs


def _loss(bundle, model) -> float:
    total = sum(bundle.batch_size(b) for b in bundle.calibration)
    with torch.no_grad():
        return sum(float(bundle.loss(model, b)) * bundle.batch_size(b) / total for b in bundle.calibration)


def test_empirical_equals_direct_evaluation():
    bundle = tiny_mlp()
    layers = _layers(bundle)
    table = run_method("empirical", bundle, scheme=QuantScheme(group_size=4), layers=layers)
    base = _loss(bundle, bundle.model)
    for layer in layers:
        for bits, a in CHOICES:
            q = fake_quantize_model(bundle.model, {layer.name: QuantConfig(bits, group_size=4)})
            assert table.omega[layer.name][(bits, a)] == pytest.approx(_loss(bundle, q) - base, abs=1e-7)
    assert _loss(bundle, bundle.model) == base  # weights restored


def test_interlayer_hessian_pairs_match_dense_cross_blocks():
    bundle = tiny_cnn()
    layers = _layers(bundle)
    names = [layer.name for layer in layers]
    quant = QuantScheme(group_size=8)
    table = run_method("interlayer", bundle, {"window": 1, "max_probes": 8}, scheme=quant, layers=layers)
    dense = Dense(bundle, names)
    h = dense.hessian()
    modules = dict(bundle.model.named_modules())

    def delta(name, bits):
        w = modules[name].weight
        return (fake_quantize(w, QuantConfig(bits, quant.group_size)) - w).detach().double().reshape(-1)

    assert set(table.pairs) == {(names[i], names[j]) for i, j in neighbour_pairs(len(names), 1)}
    for (a, b), vals in table.pairs.items():
        i, j = names.index(a), names.index(b)
        for ca in CHOICES:
            for cb in CHOICES:
                ref = float(delta(a, ca[0]) @ dense.block(h, i, j) @ delta(b, cb[0]))
                assert vals[(ca, cb)] == pytest.approx(ref, rel=1e-4, abs=1e-12), (a, b, ca, cb)
    assert table.omega[names[0]][(2, 16)] > 0 and table.meta["pair_hvps"] > 0


def test_interlayer_measured_pairs_equal_direct_evaluation():
    bundle = tiny_mlp()
    layers = _layers(bundle)
    names = [layer.name for layer in layers]
    quant = QuantScheme(group_size=4)
    table = run_method("interlayer", bundle, {"window": 2, "pairs": "measured"}, scheme=quant, layers=layers)
    assert len(table.pairs) == 3  # (0,2), (0,4), (2,4)
    base = _loss(bundle, bundle.model)

    def loss_at(assign):
        cfg = {n: QuantConfig(b, group_size=4) for n, b in assign.items()}
        return _loss(bundle, fake_quantize_model(bundle.model, cfg))

    a, b = names[0], names[2]
    for ca, cb in [((2, 16), (4, 16)), ((4, 16), (2, 16))]:
        ref = loss_at({a: ca[0], b: cb[0]}) - loss_at({a: ca[0]}) - loss_at({b: cb[0]}) + base
        assert table.pairs[(a, b)][(ca, cb)] == pytest.approx(ref, abs=1e-7)
        # per-layer terms are measured too: Ω_a + Ω_b + G_ab is the loss change of both
        both = table.omega[a][ca] + table.omega[b][cb] + table.pairs[(a, b)][(ca, cb)]
        assert both == pytest.approx(loss_at({a: ca[0], b: cb[0]}) - base, abs=1e-7)
    with pytest.raises(ValueError, match="max_probes do not apply"):
        run_method("interlayer", bundle, {"pairs": "measured", "max_probes": 8}, scheme=quant, layers=layers)


class _TinyLM(torch.nn.Module):
    """Embedding (tied to the head or not), two mixing layers, head: logits per token."""

    def __init__(self, tied: bool, vocab=30, d=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d, padding_idx=0)
        self.a, self.b = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)
        self.head = torch.nn.Linear(d, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        x = self.emb(ids)
        out = self.head(x + self.b(torch.tanh(self.a(x))))
        return out.reshape(-1, out.shape[-1])  # one row per token


def _tiny_lm(tied: bool, batches: int):
    from sens_models import _bundle

    from sensitivity.output_loss import CrossEntropyOutput

    torch.manual_seed(3)
    model = _TinyLM(tied).eval()
    data = []
    for _ in range(batches):
        ids = torch.randint(0, 20, (3, 5))  # rows 20..29 never looked up
        data.append({"x": ids, "y": torch.randint(0, 30, (15,))})
    return _bundle("tiny-lm", model, data, CrossEntropyOutput("y"))


def _pairs_precomputed(ctx, window):
    """The pair terms as they were computed before memory was bounded: every ΔW_l(c) made up
    front (and kept by the provider), one graph over every layer per (j, batch)."""
    from sensitivity.hvp import LossGraph
    from sensitivity.perturb import Perturbation, frozen

    names, choices = ctx.names, ctx.choices
    pert = Perturbation(ctx.bundle, names)
    qw = ctx.weights
    deltas = {(i, c): pert.restrict(i, qw.delta(n, c)) for i, n in enumerate(names) for c in choices}
    pairs = {(names[i], names[j]): {(ca, cb): 0.0 for ca in choices for cb in choices}
             for i, j in neighbour_pairs(len(names), window)}
    graph = None
    with frozen(ctx.bundle.model):
        for j in range(1, len(names)):
            targets = list(range(max(0, j - window), j))
            for wb in ctx.batches:
                graph = graph if ctx.single_batch and graph is not None else LossGraph(pert, wb.batch)
                for cj in choices:
                    vs = [None] * len(names)
                    vs[j] = deltas[(j, cj)]
                    for i, h in zip(targets, graph.hvp(vs, targets)):
                        h = h.double()
                        for ci in choices:
                            val = float((deltas[(i, ci)].double() * h).sum())
                            pairs[(names[i], names[j])][(ci, cj)] += wb.share * val
    return pairs


@pytest.mark.parametrize("model, window, algorithm", [
    ("mlp", 2, "rtn"),            # two calibration batches: a graph per (j, batch), only j and its targets
    ("cnn", 1, "rtn"),            # one batch: one graph kept for every j
    ("lm", 2, "rtn"),             # an embedding's used rows, two batches
    ("lm-tied", 1, "gptq"),       # a tied embedding / head perturbed whole; calibrated codes
])
def test_interlayer_hessian_pairs_bounded_memory_gives_the_same_numbers(model, window, algorithm):
    from sensitivity.estimators.context import EstimatorContext
    from sensitivity.estimators.interlayer import hessian_pairs

    bundle = {"mlp": tiny_mlp, "cnn": tiny_cnn, "lm": lambda: _tiny_lm(False, 2),
              "lm-tied": lambda: _tiny_lm(True, 2)}[model]()
    layers = _layers(bundle)
    scheme = QuantScheme(group_size=4, algorithm=algorithm)
    choices = [(2, 16), (3, 16), (8, 16), (16, 16)]
    ctx = EstimatorContext(bundle, layers, choices, scheme)
    pairs, hvps = hessian_pairs(ctx, window)
    assert ctx.weights._weights == {}  # the pair loop keeps no Q_b(W) in the provider
    assert hvps == (len(layers) - 1) * len(bundle.calibration) * len(choices)
    reference = _pairs_precomputed(EstimatorContext(bundle, layers, choices, scheme), window)
    assert pairs == reference  # exactly: the same products, summed in the same order
    assert any(v != 0.0 for vals in pairs.values() for v in vals.values())
