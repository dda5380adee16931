"""Families declared in the sweep config: checkpoints users bring (Hugging Face Trainer
folders, a local hub cache, a module:function builder), their probe data, the sweep over
them (kill and resume, a missing checkpoint), and bad declarations."""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from test_workflow import ENV, jobs_run, kill_during_measure, snakemake, stores_equal

from dead_directions import zoo
from dead_directions.io import store
from dead_directions.zoo import declared
from dead_directions.zoo.declared import DeclarationError, DeclaredFamily

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "example_training_run.py"
_spec = importlib.util.spec_from_file_location("example_training_run", SCRIPT)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)
TEXT, SIZES, STEPS = example.TEXT, example.SIZES, example.STEPS


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory):
    """The example training run (scripts/example_training_run.py), every layout."""
    root = tmp_path_factory.mktemp("declared")
    example.main([str(root)])
    return root


def _example(name: str, root: Path) -> dict:
    """A shipped example config (config/declared-*.yaml) pointed at ``root``."""
    text = (ROOT / "config" / f"declared-{name}.yaml").read_text()
    config = yaml.safe_load(text.replace("example-run/", f"{root}/"))
    config["results"] = "results"
    config["device"], config["dtype"] = "cpu", "float64"
    return config


# ------------------------------------------------------------------------- library level
def test_a_declared_hf_family_loads_trainer_checkpoints_and_tokenises_text(trainer_runs):
    spec = _example("trainer", trainer_runs)["families"]["neox"]
    spec["layers"] = ["gpt_neox.layers.*.mlp.dense_4h_to_h"]
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


def test_a_local_hub_cache_is_read_by_revision(trainer_runs):
    spec = _example("hf-cache", trainer_runs)["families"]["pythia-like"]
    fam = DeclaredFamily.from_config("pythia-like", spec)
    assert fam.steps_on_disk("s2") == list(STEPS)
    path = fam.checkpoint("s2", 2)
    assert path.parent.name == "snapshots" and path.name == f"s2{2:038d}"
    model, _ = fam.load(path, "s2")
    assert model.config.hidden_size == SIZES["s2"]
    assert fam.probe(tokenizer_from=path)["input_ids"].shape == (len(TEXT), 8)
    # the same weights as the Trainer-layout copy of that step
    twin, _ = fam.load(trainer_runs / "runs" / "s2" / "checkpoint-2", "s2")
    for (name, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_module_function_builder_with_safetensors_state_dicts(trainer_runs):
    spec = _example("module", trainer_runs)["families"]["my-mlp"]
    fam = DeclaredFamily.from_config("my-mlp", spec)
    assert fam.steps_on_disk("h4") == [0, 5] and fam.output is None
    model, _ = fam.load(fam.checkpoint("h4", 5), "h4")
    want = zoo.build_mlp("h4", seed=5)
    x = fam.probe()
    assert x.shape == (64, 4) and torch.equal(model(x), want(x))


def test_read_one_hugging_face_folder_without_a_zoo_family(trainer_runs):
    folder = trainer_runs / "runs" / "s1" / "checkpoint-4"
    layer = "gpt_neox.layers.0.mlp.dense_4h_to_h"
    out = subprocess.run(
        [
            "dead-directions",
            "read",
            str(folder),
            *("--builder", "hf", "--task", "causal-lm", "--likelihood", "categorical"),
            *("--probe-file", str(trainer_runs / "probe.txt"), "--probe-kind", "text"),
            *("--probe-length", "8", "--output", "logits", "--layers", layer),
            *("--detectors", "random", "--max-per-layer", "2"),
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith(f"| {layer}")]
    assert len(rows) == 2 and all("| regular " in row for row in rows)
    assert "layers" not in out.stderr  # no progress bar off a terminal


def test_the_example_configs_sweep_a_hub_cache_and_a_module_builder(trainer_runs, tmp_path):
    for name, family, sizes, steps in (
        ("hf-cache", "pythia-like", ("s1", "s2"), STEPS),
        ("module", "my-mlp", ("h4",), (0, 5)),
    ):
        config = _example(name, trainer_runs)
        if name == "hf-cache":
            config["families"][family]["sizes"] = ["s1"]
            sizes = ("s1",)
        work = tmp_path / name
        rc, text = snakemake(work, config)
        assert rc == 0, text[-4000:]
        path = work / "results" / "store.zarr"
        done = store.done_cells(path)
        assert {(k.family, k.size, k.step) for k in done} == {
            (family, s, t) for s in sizes for t in steps
        }
        ds = store.open(path, chunks=None).load()
        assert (ds["n_directions"].values[ds["n_directions"].values >= 0] > 0).any()
        assert (work / "results" / "report.html").exists()


def test_bad_declarations_name_the_key(trainer_runs, tmp_path):
    good = _example("trainer", trainer_runs)["families"]["neox"]
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
    config = _example("trainer", trainer_runs)
    config["families"]["neox"]["layers"] = ["gpt_neox.layers.*.mlp.dense_4h_to_h"]
    config["families"]["neox"]["detectors"] = ["random", "kfac"]
    config["families"]["neox"]["steps"] = list(STEPS)  # listed: a missing one is reported
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
    kinds = set(cells["kind"].values.ravel()) - {""}
    assert kinds and kinds <= {"regular", "singular", "gauge", "undetermined", "unresolved"}
    # killed during measure, rerun with the same command: the same store
    killed = tmp_path / "killed"
    killed.mkdir()
    kill_during_measure(killed, config, settle=1.0)
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
    base = _example("trainer", trainer_runs)
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
