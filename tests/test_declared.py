"""Families declared in the sweep config: checkpoints users bring (Hugging Face Trainer
folders, a local hub cache, a module:function builder), their probe data, the sweep over
them (kill and resume, a missing checkpoint), and bad declarations."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_workflow import ENV, _command, jobs_run, snakemake, stores_equal

from dead_directions import declared, store, zoo
from dead_directions.declared import DeclarationError, DeclaredFamily

TEXT = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the bird sang in the tree",
    "a fish swam in the sea",
    "the sun rose over the hill",
    "a child read a small book",
    "the wind blew across the field",
    "a man walked to the town",
]
SIZES = {"s1": 16, "s2": 24}  # hidden width per size
STEPS = (2, 4)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in TEXT for w in line.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def _neox(hidden: int, vocab: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=16,
        attn_implementation="eager",
    )
    torch.manual_seed(hidden)
    return GPTNeoXForCausalLM(config)


def _train_and_save(root: Path, layout: str) -> None:
    """A tiny GPT-NeoX (the Pythia architecture) per size, trained a few steps on TEXT, saved
    as the Trainer lays checkpoints out (`checkpoint-{step}` with the tokenizer), or as a
    local hub cache (`models--ORG--NAME/snapshots/<commit>`, `refs/step{step}`)."""
    tok = _tokenizer()
    enc = tok(TEXT, padding="max_length", max_length=8, return_tensors="pt")
    for size, hidden in SIZES.items():
        model = _neox(hidden, len(tok))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(1, max(STEPS) + 1):
            out = model(**enc, labels=enc["input_ids"])
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            if step not in STEPS:
                continue
            if layout == "trainer":
                folder = root / "runs" / size / f"checkpoint-{step}"
            else:
                repo = root / "hub" / f"models--toy--neox-{size}"
                commit = f"{size}{step:038d}"
                folder = repo / "snapshots" / commit
                (repo / "refs").mkdir(parents=True, exist_ok=True)
                (repo / "refs" / f"step{step}").write_text(commit)
            model.save_pretrained(folder)
            tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("declared")
    _train_and_save(root, "trainer")
    (root / "probe.txt").write_text("\n".join(TEXT) + "\n")
    return root


def _config(root: Path, **family) -> dict:
    spec = {
        "builder": "hf",
        "task": "causal-lm",
        "sizes": list(SIZES),
        "steps": list(STEPS),
        "checkpoints": str(root / "runs" / "{size}" / "checkpoint-{step}"),
        "probe": {"path": str(root / "probe.txt"), "kind": "text", "length": 8},
        "likelihood": "categorical",
        "output": "logits",
        "layers": ["gpt_neox.layers.*.mlp.dense_4h_to_h"],
        "detectors": ["random", "kfac"],
        "max_per_layer": 2,
        **family,
    }
    return {
        "results": "results",
        "seed": 0,
        "device": "cpu",
        "dtype": "float64",
        "store_layout": {"max_directions": 8, "n_radii": 13},
        "families": {"neox": spec},
        "dask": {"kind": "threads"},
    }


# ------------------------------------------------------------------------- library level
def test_a_declared_hf_family_loads_trainer_checkpoints_and_tokenises_text(trainer_runs):
    spec = _config(trainer_runs)["families"]["neox"]
    fam = DeclaredFamily.from_config("neox", spec)
    assert fam.steps_on_disk("s1") == list(STEPS)
    path = fam.checkpoint("s1", 4)
    model, meta = fam.load(path, "s1")
    assert meta["format"] == "hf" and next(model.parameters()).dtype == torch.float64
    from transformers import GPTNeoXForCausalLM

    reference = GPTNeoXForCausalLM.from_pretrained(path, attn_implementation="eager").double()
    probe = fam.probe(tokenizer_from=path)
    assert probe["input_ids"].shape == (len(TEXT), 8)
    assert probe["attention_mask"].sum(1).tolist() == [len(line.split()) for line in TEXT]
    with torch.no_grad():
        ours = fam.output(model(**probe))
        theirs = reference.eval()(**probe).logits
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)
    assert fam.select_layers(model) == ["gpt_neox.layers.0.mlp.dense_4h_to_h"]


def test_a_local_hub_cache_is_read_by_revision(tmp_path):
    _train_and_save(tmp_path, "cache")
    (tmp_path / "probe.txt").write_text("\n".join(TEXT) + "\n")
    spec = _config(tmp_path)["families"]["neox"]
    spec["checkpoints"] = {"hf_cache": str(tmp_path / "hub"), "repo": "toy/neox-{size}"}
    spec["probe"]["tokenizer"] = str(
        next((tmp_path / "hub" / "models--toy--neox-s1" / "snapshots").iterdir())
    )
    fam = DeclaredFamily.from_config("neox", spec)
    assert fam.steps_on_disk("s2") == list(STEPS)
    path = fam.checkpoint("s2", 2)
    assert path.parent.name == "snapshots" and path.name == f"s2{2:038d}"
    model, _ = fam.load(path, "s2")
    assert model.config.hidden_size == SIZES["s2"]
    assert fam.probe()["input_ids"].shape == (len(TEXT), 8)


def test_a_module_function_builder_with_safetensors_state_dicts(tmp_path):
    from dead_directions import checkpoints

    for step in (0, 5):
        model = zoo.build_mlp("h4", seed=step)
        checkpoints.save(model, tmp_path / "h4" / f"w-{step}.safetensors", {})
    torch.save({"input": zoo.get_family("mlp").probe(n=16)}, tmp_path / "x.pt")
    spec = {
        "builder": "dead_directions.zoo:build_mlp",
        "sizes": ["h4"],
        "checkpoints": str(tmp_path / "{size}" / "w-{step}.safetensors"),
        "probe": {"path": str(tmp_path / "x.pt"), "kind": "tensor"},
        "output": "tensor",
    }
    fam = DeclaredFamily.from_config("mine", spec)
    assert fam.steps_on_disk("h4") == [0, 5] and fam.output is None
    model, _ = fam.load(fam.checkpoint("h4", 5), "h4")
    want = zoo.build_mlp("h4", seed=5)
    x = fam.probe()["input"]
    assert torch.equal(model(x), want(x))


def test_bad_declarations_name_the_key(trainer_runs, tmp_path):
    good = _config(trainer_runs)["families"]["neox"]
    cases = {
        "builder": {**good, "builder": "nope"},
        "checkpoints": {**good, "checkpoints": str(trainer_runs / "runs" / "{size}" / "last")},
        "probe.path": {**good, "probe": {"path": str(tmp_path / "none.txt"), "kind": "text"}},
        "task": {**good, "task": "translation"},
    }
    for key, spec in cases.items():
        with pytest.raises(DeclarationError, match=rf"families\.neox\.{key}"):
            DeclaredFamily.from_config("neox", spec)
    fam = DeclaredFamily.from_config("neox", {**good, "layers": ["gpt_neox.nothing.*"]})
    model, _ = fam.load(fam.checkpoint("s1", 2), "s1")
    with pytest.raises(DeclarationError, match="families.neox.layers: 'gpt_neox.nothing"):
        fam.select_layers(model)
    fam = DeclaredFamily.from_config("neox", {**good, "output": "pooler_output"})
    with pytest.raises(ValueError, match="output 'pooler_output'"):
        fam.output(model(input_ids=torch.zeros(1, 4, dtype=torch.long)))
    assert declared.is_declared(good) and not declared.is_declared({"sizes": ["h4"]})


# ------------------------------------------------------------------------------ the sweep
def test_sweeping_a_trainer_run_kill_resume_and_a_missing_checkpoint(trainer_runs, tmp_path):
    config = _config(trainer_runs)
    # one checkpoint deleted before the run: reported missing, the rest completes
    runs = tmp_path / "runs"
    shutil.copytree(trainer_runs / "runs", runs)
    config["families"]["neox"]["checkpoints"] = str(runs / "{size}" / "checkpoint-{step}")
    aside = tmp_path / "aside"
    shutil.move(runs / "s2" / "checkpoint-4", aside)
    work = tmp_path / "run"
    rc, text = snakemake(work, config)
    assert rc == 0, text[-4000:]
    path = work / "results" / "store.zarr"
    layer = "gpt_neox.layers.0.mlp.dense_4h_to_h"
    want = [store.CellKey("neox", s, t, layer) for s in SIZES for t in STEPS]
    assert sorted(store.done_cells(path)) == sorted(
        k for k in want if (k.size, k.step) != ("s2", 4)
    )
    missing = (work / "results" / "tables" / "missing.csv").read_text()
    assert "neox,s2,4," in missing and "checkpoint-4" in missing
    report = (work / "results" / "report.md").read_text()
    assert "## Missing checkpoints" in report and "checkpoint-4" in report
    cells = store.open(path, chunks=None).load()
    assert set(cells["kind"].values.ravel()) - {""} <= {
        "regular",
        "singular",
        "gauge",
        "unresolved",
    }
    # killed during measure, rerun with the same command: the same store
    killed = tmp_path / "killed"
    cfg = killed / "run.yaml"
    killed.mkdir()
    cfg.write_text(yaml.safe_dump(config))
    with open(killed / "killed.log", "w") as fh:
        proc = subprocess.Popen(
            _command(killed, cfg, ()),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )
        deadline = time.monotonic() + 900
        while not list((killed / "logs" / "measure").rglob("*.log")):
            assert proc.poll() is None, (killed / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.0)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    rc, text = snakemake(killed, config, log="rerun")
    assert rc == 0, text[-4000:]
    stores_equal(killed / "results" / "store.zarr", path)
    # the checkpoint appears: the next run reads it, and only it
    shutil.move(aside, runs / "s2" / "checkpoint-4")
    rc, text = snakemake(work, config, log="appeared")
    assert rc == 0, text[-4000:]
    assert sorted(store.done_cells(path)) == sorted(want)
    w = f"family=neox, size=s2, step=0000004, layer={layer}"
    ran = jobs_run(text)
    assert {("detect", w), ("measure", w)} <= ran
    assert not {r for r in ran if r[0] in ("detect", "measure") and r[1] != w}
    assert (work / "results" / "tables" / "missing.csv").read_text().strip().count("\n") == 0


def test_bad_declared_configs_fail_before_any_job(trainer_runs, tmp_path):
    base = _config(trainer_runs)
    cases = {
        "builder": {"builder": "nope"},
        "checkpoints": {"checkpoints": str(trainer_runs / "runs" / "{size}" / "final")},
        "probe.path": {"probe": {"path": str(tmp_path / "none.txt"), "kind": "text"}},
        "output": {"output": "pooler_output"},
        "layers": {"layers": ["gpt_neox.nothing.*"]},
    }
    for key, change in cases.items():
        config = json.loads(json.dumps(base))
        config["families"]["neox"].update(change)
        work = tmp_path / key
        rc, text = snakemake(work, config)
        assert rc != 0 and f"config: families.neox.{key}" in text, text[-3000:]
        assert not (work / "logs").exists() and not jobs_run(text), key
