"""Held-out confirmation on a real architecture (issue 16, acceptance 4): a tiny GPT-NeoX
(the Pythia architecture, eager attention) built from a transformers config, probed with
fewer tokens than its MLP output layer's fan-in. K-FAC directions in that layer's
data-induced kernel are flat on the probe; only those flat on held-out inputs too may read
`gauge`. The structural gauges (LayerNorm kernel, softmax shift) still read `gauge`."""

import statistics

import pytest
import torch

import dead_directions as dd

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN, FFN = 256, 64, 256


def _model():
    cfg = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=FFN,
        max_position_embeddings=64,
        rotary_pct=0.25,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    return model.to(torch.float64).eval()


def _logits(out):
    return out.logits


def _heldout_fisher(model, inputs, vector, t: float = 0.0) -> float:
    """Independently of the read: mean over held-out sequences of Σ_positions
    (J u)ᵀ (diag π − π πᵀ) (J u) at θ + t u, by one jvp of the logits."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    norm = sum(float((v * v).sum()) for v in vector.values()) ** 0.5
    u = {k: v / norm for k, v in vector.items()}
    point = {k: params[k] + t * u[k] for k in u}

    def logits(p):
        return torch.func.functional_call(model, {**params, **p}, (), inputs).logits

    with torch.no_grad():
        y, ju = torch.func.jvp(logits, (point,), (u,))
    pi = torch.softmax(y, -1)
    quad = (pi * ju * ju).sum(-1) - (pi * ju).sum(-1) ** 2
    return float(quad.sum(-1).mean())


def test_neox_gauges_hold_on_held_out_inputs():
    model = _model()
    ids = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(1))
    fit, held = dd.split_probe({"input_ids": ids})
    assert fit["input_ids"].numel() == 96 < FFN  # fewer probe tokens than the fan-in
    layers = [f"gpt_neox.layers.{i}.mlp.dense_4h_to_h" for i in range(2)]
    kw = dict(output=_logits, likelihood="categorical")
    dirs = dd.detect(model, fit, detectors=["kfac"], max_per_layer=3, layers=layers, **kw)
    dirs += dd.detect(
        model, fit, detectors=["layernorm_kernel", "softmax_shift"], max_per_layer=1, **kw
    )
    reads = dd.read_many(model, fit, dirs, heldout=held, **kw)
    by_detector = {}
    for i, (d, r) in enumerate(zip(dirs, reads, strict=True)):
        by_detector.setdefault(d.detector, []).append(r)
        gen = torch.Generator().manual_seed(i)
        refs = [
            _heldout_fisher(
                model,
                held,
                {
                    k: torch.randn(v.shape, generator=gen, dtype=v.dtype)
                    for k, v in d.vector.items()
                },
            )
            for _ in range(4)
        ]
        g_ref = statistics.median(refs)
        g_held = max(_heldout_fisher(model, held, d.vector, t) for t in (0.0, 1.0))
        if r.kind == "gauge":  # a gauge verdict is flat on the held-out inputs too
            assert g_held <= 1e-6 * g_ref, (r.name, g_held / g_ref)
        else:  # what the read declined to call a gauge is excited off the probe
            assert r.kind == "undetermined" and "probe artefact" in r.note, (r.name, r.kind)
            assert g_held >= 1e-4 * g_ref, (r.name, g_held / g_ref)
    assert {r.kind for r in by_detector["layernorm_kernel"]} == {"gauge"}
    assert {r.kind for r in by_detector["softmax_shift"]} == {"gauge"}
    # The probe artefacts exist: flat on the 96 fit tokens, regular on the held-out ones.
    assert sum(r.kind == "undetermined" for r in by_detector["kfac"]) >= 2
