"""Families declared in the sweep config: checkpoints users bring (Hugging Face Trainer
folders, a local hub cache, a module:function builder), their probe data, the sweep over
them (kill and resume, a missing checkpoint), and bad declarations."""

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_workflow import ENV, jobs_run, kill_during_measure, snakemake, stores_equal
from torch import nn

from dead_directions import cli, zoo
from dead_directions.io import checkpoints, store
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


def _sha256(tensors: dict) -> str:
    """The probe hash the store's provenance should hold, computed here from the arrays the
    test wrote: sha256 over each tensor's ``name|dtype|shape|`` and bytes, names sorted."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        h.update(f"{name}|torch.{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def tiny_rgb_cnn(size: str) -> nn.Module:
    """A ``module:function`` builder for RGB images of 4 × 5 pixels (``test_declared:…``)."""
    torch.manual_seed(int(size[1:]))
    return nn.Sequential(
        nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 2 * 3, 2)
    ).double()


def _read_in_process(tmp_path: Path, name: str, spec: dict, size: str, step: int) -> Path:
    """``dead-directions probe``, ``layers`` and ``measure-checkpoint`` of one declared
    checkpoint, called in this process (as the workflow's jobs call them); the store."""
    text = json.dumps(spec)
    ckpt = str(DeclaredFamily.from_config(name, spec).checkpoint(size, step))
    probe, layers, path = tmp_path / "probe.safetensors", tmp_path / "layers.json", tmp_path / "s"
    assert cli.main(["probe", "--family", name, "--spec", text, "--out", str(probe)]) == 0
    args = ["--family", name, "--size", size, "--spec", text, "--checkpoint", ckpt]
    assert cli.main(["layers", *args, "--out", str(layers)]) == 0
    store.init(path, max_directions=4)
    assert (
        cli.main(
            [
                "measure-checkpoint",
                *args,
                *("--step", str(step), "--probe", str(probe), "--layers", str(layers)),
                *("--detectors", "random", "--max-per-layer", "1", "--store", str(path)),
                *("--directions-dir", str(tmp_path / "dirs"), "--marker", str(tmp_path / "m")),
                *("--device", "cpu", "--dtype", "float64"),
            ]
        )
        == 0
    )
    return path


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


def test_an_image_folder_probe_is_the_pixels_written_and_its_hash_goes_into_provenance(
    tmp_path,
):
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    folder = tmp_path / "images"
    (folder / "b").mkdir(parents=True)
    from PIL import Image

    # sorted by path: a0.png, b/a1.png, c2.PNG (a subfolder; any case of the suffix)
    for name, image in zip(("c2.PNG", "a0.png", "b/a1.png"), pixels[[2, 0, 1]], strict=True):
        Image.fromarray(image, "RGB").save(folder / name, format="PNG")
    (folder / "notes.txt").write_text("not an image")
    want = np.ascontiguousarray((pixels.astype(np.float64) / 255.0).transpose(0, 3, 1, 2))
    spec = {
        "builder": "test_declared:tiny_rgb_cnn",
        "sizes": ["c2"],
        "checkpoints": str(tmp_path / "ckpt" / "{size}" / "w-{step}.safetensors"),
        "probe": {"path": str(folder), "kind": "images"},
        "output": "tensor",
    }
    fam = DeclaredFamily.from_config("rgb", spec)
    x = fam.probe()
    assert x.dtype == torch.float64 and x.shape == (3, 3, 4, 5)
    assert torch.equal(x, torch.from_numpy(want))  # pixel / 255, channels first
    assert torch.equal(fam.probe(n=2), torch.from_numpy(want[:2]))
    # an image array file (N, C, H, W) is taken as it is
    np.save(tmp_path / "images.npy", want[::-1])
    arrays = DeclaredFamily.from_config(
        "rgb", {**spec, "probe": {"path": str(tmp_path / "images.npy"), "kind": "images"}}
    )
    assert torch.equal(arrays.probe(), torch.from_numpy(want[::-1].copy()))
    # raw pixels in an array file (uint8, N×H×W×C) are refused, not guessed at
    np.save(tmp_path / "raw.npy", pixels)
    raw = DeclaredFamily.from_config(
        "rgb", {**spec, "probe": {"path": str(tmp_path / "raw.npy"), "kind": "images"}}
    )
    with pytest.raises(ValueError, match=r"image array of torch.uint8 \(3, 4, 5, 3\).*x / 255"):
        raw.probe()
    Image.fromarray(pixels[0, :3], "RGB").save(folder / "d3.png")
    with pytest.raises(ValueError, match=r"images of different sizes \[\(3, 5, 3\), \(4, 5, 3\)\]"):
        fam.probe()
    (folder / "d3.png").unlink()
    # the sweep's jobs: every cell's provenance holds the hash of these pixels
    checkpoints.save(tiny_rgb_cnn("c2"), tmp_path / "ckpt" / "c2" / "w-3.safetensors")
    path = _read_in_process(tmp_path, "rgb", spec, "c2", 3)
    done = store.done_cells(path)
    assert sorted(k.layer for k in done) == ["0", "3"]
    digest = _sha256({"input": want})
    for key in done:
        assert store.cell_dataset(path, key)["probe_hash"].item() == digest


def test_a_datasets_folder_probe_is_the_token_ids_written_and_its_hash_goes_into_provenance(
    trainer_runs, tmp_path
):
    import datasets

    ids = [[3, 4, 5, 0], [6, 7, 0, 0], [8, 9, 10, 11], [12, 2, 0, 0]]
    mask = [[int(t > 0) for t in row] for row in ids]
    data = datasets.Dataset.from_dict(
        {"input_ids": ids, "attention_mask": mask, "text": ["a", "b", "c", "d"]}
    )
    data.save_to_disk(str(tmp_path / "ds"))
    other = datasets.Dataset.from_dict({"input_ids": [[1, 1, 1, 1]], "attention_mask": [[1] * 4]})
    datasets.DatasetDict({"validation": other, "train": data}).save_to_disk(str(tmp_path / "dd"))
    spec = _example("trainer", trainer_runs)["families"]["neox"]
    spec["layers"] = ["gpt_neox.layers.*.mlp.dense_4h_to_h"]
    spec["probe"] = {"path": str(tmp_path / "ds"), "kind": "datasets"}
    want = {"input_ids": np.array(ids, np.int64), "attention_mask": np.array(mask, np.int64)}
    for folder in ("ds", "dd"):  # a DatasetDict: its first split by name (train)
        spec["probe"]["path"] = str(tmp_path / folder)
        probe = DeclaredFamily.from_config("neox", spec).probe()
        assert sorted(probe) == ["attention_mask", "input_ids"]  # the text column is no tensor
        for name, value in want.items():
            assert probe[name].dtype == torch.int64 and torch.equal(
                probe[name], torch.from_numpy(value)
            )
    datasets.Dataset.from_dict({"input_ids": [[3, 4], [5]]}).save_to_disk(str(tmp_path / "r"))
    ragged = {**spec, "probe": {"path": str(tmp_path / "r"), "kind": "datasets"}}
    ragged = DeclaredFamily.from_config("neox", ragged)
    with pytest.raises(ValueError, match=r"columns \['input_ids'\] have rows of different"):
        ragged.probe()
    spec["probe"]["path"] = str(tmp_path / "ds")
    path = _read_in_process(tmp_path, "neox", spec, "s1", 2)
    done = store.done_cells(path)
    assert [k.layer for k in done] == ["gpt_neox.layers.0.mlp.dense_4h_to_h"]
    for key in done:
        assert store.cell_dataset(path, key)["probe_hash"].item() == _sha256(want)


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


def _sweep_with_one_missing(work: Path, config: dict) -> Path:
    """The uninterrupted sweep of ``config`` in ``work`` (one listed checkpoint deleted)."""
    rc, text = snakemake(work, config)
    assert rc == 0, text[-4000:]
    return work


@pytest.fixture(scope="module")
def hub_sweep(trainer_runs, tmp_path_factory):
    """A local hub cache (``models--toy--neox-{size}``, ``refs/step{step}`` naming the
    snapshot) with the snapshot of s2 step 4 deleted (its ref kept); the uninterrupted sweep
    of config/declared-hf-cache.yaml over it, both steps listed."""
    root = tmp_path_factory.mktemp("hub-sweep")
    shutil.copytree(trainer_runs / "hub", root / "hub")
    shutil.copy(trainer_runs / "probe.txt", root / "probe.txt")
    config = _example("hf-cache", root)
    config["families"]["pythia-like"]["steps"] = list(STEPS)
    repo = root / "hub" / "models--toy--neox-s2"
    gone = repo / "snapshots" / (repo / "refs" / "step4").read_text()
    shutil.rmtree(gone)
    return config, gone, _sweep_with_one_missing(root / "run", config)


@pytest.fixture(scope="module")
def module_sweep(trainer_runs, tmp_path_factory):
    """``dead_directions.zoo:build_mlp`` over safetensors state dicts ``w-{step}``, w-5
    deleted; the uninterrupted sweep of config/declared-module.yaml, steps 0 and 5 listed."""
    root = tmp_path_factory.mktemp("module-sweep")
    shutil.copytree(trainer_runs / "state", root / "state")
    shutil.copy(trainer_runs / "mlp-probe.safetensors", root / "mlp-probe.safetensors")
    config = _example("module", root)
    config["families"]["my-mlp"]["steps"] = [0, 5]
    gone = root / "state" / "h4" / "w-5.safetensors"
    gone.unlink()
    return config, gone, _sweep_with_one_missing(root / "run", config)


def _kill_resume_and_missing(config, gone: Path, reference: Path, want, tmp_path) -> None:
    """The uninterrupted run ``reference`` read the cells ``want`` and reported ``gone``
    missing; a run killed during measure and rerun with the same command ends with the
    same store."""
    path = reference / "results" / "store.zarr"
    assert sorted(store.done_cells(path)) == sorted(want)
    ds = store.open(path, chunks=None).load()
    assert (ds["n_directions"].values[ds["n_directions"].values >= 0] > 0).all()
    (family,) = config["families"]
    step = 4 if family == "pythia-like" else 5
    size = "s2" if family == "pythia-like" else "h4"
    missing = pd.read_csv(reference / "results" / "tables" / "missing.csv", dtype=str)
    assert missing.to_dict("records") == [
        {
            "family": family,
            "size": size,
            "step": str(step),
            "path": str(gone),
            "reason": "not on disk",
        }
    ]
    report = (reference / "results" / "report.md").read_text()
    assert "## Missing checkpoints" in report and str(gone) in report
    assert (reference / "results" / "report.html").exists()
    killed = tmp_path / "killed"
    killed.mkdir()
    kill_during_measure(killed, config, settle=1.0)
    done = store.done_cells(killed / "results" / "store.zarr")
    assert len(done) < len(want)  # killed before the end
    rc, text = snakemake(killed, config, log="rerun")
    assert rc == 0, text[-4000:]
    stores_equal(killed / "results" / "store.zarr", path)
    assert sorted(store.registry(killed / "results" / "store.zarr").values()) == list(
        range(len(want))
    )  # each cell written to one index: no duplicates
    measured = {w for rule, w in jobs_run(text) if rule == "measure"}
    unfinished = {
        f"family={k.family}, size={k.size}, step={k.step:07d}, layer={k.layer}"
        for k in want
        if k not in done
    }
    assert unfinished <= measured  # what the killed run had not finished is measured now


def test_sweeping_a_local_hub_cache_kill_resume_and_a_missing_revision(hub_sweep, tmp_path):
    config, gone, reference = hub_sweep
    layer = "gpt_neox.layers.0.mlp.dense_4h_to_h"
    want = [
        store.CellKey("pythia-like", s, t, layer)
        for s in SIZES
        for t in STEPS
        if (s, t) != ("s2", 4)
    ]
    _kill_resume_and_missing(config, gone, reference, want, tmp_path)
    # every cell read the snapshot its ref names, with the probe the test's text makes:
    # word ids (sorted vocabulary after [PAD] and [UNK]), padded to 8 tokens
    vocab = {w: i + 2 for i, w in enumerate(sorted({w for line in TEXT for w in line.split()}))}
    ids = np.array(
        [[vocab[w] for w in line.split()] + [0] * (8 - len(line.split())) for line in TEXT]
    )
    digest = _sha256({"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)})
    path = reference / "results" / "store.zarr"
    for key in want:
        cell = store.cell_dataset(path, key)
        assert cell["probe_hash"].item() == digest
        repo = reference.parent / "hub" / f"models--toy--neox-{key.size}"
        commit = (repo / "refs" / f"step{key.step}").read_text()
        assert cell["checkpoint"].item() == str(repo / "snapshots" / commit)
        assert cell["checkpoint_hash"].item() == store.file_hash(repo / "snapshots" / commit)


def test_sweeping_a_module_builder_kill_resume_and_a_missing_state_dict(module_sweep, tmp_path):
    config, gone, reference = module_sweep
    want = [store.CellKey("my-mlp", "h4", 0, layer) for layer in ("fc1", "fc2")]
    _kill_resume_and_missing(config, gone, reference, want, tmp_path)
    from safetensors.numpy import load_file

    probe = load_file(str(reference.parent / "mlp-probe.safetensors"))  # as written
    path = reference / "results" / "store.zarr"
    for key in want:
        cell = store.cell_dataset(path, key)
        assert cell["probe_hash"].item() == _sha256(probe)
        assert cell["checkpoint"].item() == str(
            reference.parent / "state" / "h4" / "w-0.safetensors"
        )


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


# ------------------------------------------------------------------- unreadable checkpoints
def test_unreadable_checkpoints_are_named_with_the_reason(tmp_path):
    """``layout.unreadable`` (standard library, run when the workflow is parsed) against
    files damaged in known ways; a sound file of each format passes."""
    from safetensors.torch import save_file

    from dead_directions.io.layout import unreadable

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(good))
    assert unreadable(good) is None
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-8])  # 8 of the 6 × 4 = 24 float32 data bytes gone
    assert "truncated (16 data bytes, the header needs 24)" in unreadable(truncated)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x05\x00")
    assert "2 bytes, shorter than a safetensors header" in unreadable(short)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 8 + b"{}")
    assert "header claims" in unreadable(garbage)
    state = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(2)}, state)
    assert unreadable(state) is None
    broken = tmp_path / "broken.pt"
    broken.write_bytes(state.read_bytes()[:40])
    assert "not a torch zip archive" in unreadable(broken)
    folder = tmp_path / "hf"
    folder.mkdir()
    assert "config.json unreadable" in unreadable(folder)
    (folder / "config.json").write_text("{}")
    assert unreadable(folder).startswith("no weights")
    (folder / "model.safetensors").write_bytes(truncated.read_bytes())
    assert "truncated" in unreadable(folder)
    assert unreadable(tmp_path / "absent.safetensors") == "not on disk"


def test_an_unreadable_checkpoint_is_reported_and_the_rest_is_planned(trainer_runs, tmp_path):
    """A truncated state dict of a declared family: the plan reads the other checkpoints,
    the `missing` table lists it with the reason, and once repaired it is planned again."""
    root = tmp_path / "m"
    shutil.copytree(trainer_runs / "state", root / "state")
    shutil.copy(trainer_runs / "mlp-probe.safetensors", root / "mlp-probe.safetensors")
    config = _example("module", root)
    config["families"]["my-mlp"]["steps"] = [0, 5]
    bad = root / "state" / "h4" / "w-5.safetensors"
    sound = bad.read_bytes()
    bad.write_bytes(sound[: len(sound) // 2])
    rc, text = snakemake(tmp_path / "run", config, "-n", "--printshellcmds")
    assert rc == 0, text[-3000:]
    (records,) = re.findall(r"dead-directions missing --records '(.*?)' --out", text)
    (row,) = json.loads(records)  # step 0 is read; step 5 is reported, with the reason
    assert (row["step"], row["path"]) == (5, str(bad))
    assert row["reason"].startswith("w-5.safetensors: its header claims")
    assert "layers:" in text  # the sweep goes on with the readable checkpoint
    bad.write_bytes(sound)  # repaired: the next run reads it
    rc, text = snakemake(tmp_path / "run", config, "-n", "--printshellcmds", log="repaired")
    assert rc == 0, text[-3000:]
    assert "dead-directions missing --records '[]'" in text
