"""The zoo: builders, the tiny zoo's training (task accuracy, determinism, layout) and the CLI."""

import json
import math
import subprocess
import sys
import time

import pytest
import torch
from torch import nn
from torch.func import jvp

import dead_directions as dd
from dead_directions import zoo
from dead_directions.io import checkpoints
from dead_directions.nn.models import Monomial, SelfAttention

TRAINABLE = zoo.trainable()


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """Every trainable family at its smallest size, tiny recipe: {family: [sidecar dicts]}."""
    root = tmp_path_factory.mktemp("zoo")
    started, cpu = time.perf_counter(), time.process_time()
    runs = {}
    for name in TRAINABLE:
        fam = zoo.get_family(name)
        paths = fam.train(fam.sizes[0], None, root, seed=0, tiny=True)
        runs[name] = [json.loads(checkpoints.sidecar_path(p).read_text()) for p in paths]
    return root, runs, (time.perf_counter() - started, time.process_time() - cpu)


def test_registry():
    assert set(TRAINABLE) == {"mlp", "mlp-z2", "cnn", "vit", "vit-compressed", "transformer"}
    assert "minilm" in zoo.FAMILIES and not zoo.get_family("minilm").trainable
    for name in TRAINABLE:
        fam = zoo.get_family(name)
        assert len(fam.sizes) == 3 and all(isinstance(s, str) for s in fam.sizes)
        assert len(fam.default_steps()) >= 6 and fam.default_steps()[0] == 0
        assert len(fam.default_steps(tiny=True)) >= 6
    assert zoo.get_family("mlp").likelihood == "gaussian"
    assert zoo.get_family("cnn").likelihood == "categorical"
    assert zoo.get_family("mlp").activation_order == 1
    assert zoo.get_family("mlp-z2").activation_order == 2
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        zoo.get_family("nope")
    with pytest.raises(ValueError, match="size 'x9'"):
        zoo.get_family("cnn").build("x9")


def test_log_steps():
    assert zoo.log_steps(1000, 4) == (0, 10, 100, 1000)
    assert zoo.log_steps(600, 8) == (0, 2, 6, 16, 39, 96, 241, 600)
    assert zoo.log_steps(3, 8) == (0, 1, 2, 3)
    assert zoo.log_steps(0) == (0,)


@pytest.mark.parametrize("name", TRAINABLE)
def test_builds_every_size_float64_with_probe(name):
    fam = zoo.get_family(name)
    probe = fam.probe(n=5)
    for size in fam.sizes:
        model = fam.build(size).eval()
        assert all(p.dtype == torch.float64 for p in model.parameters())
        out = model(probe)
        classes = 2 if fam.likelihood == "gaussian" else (23 if name == "transformer" else 10)
        assert out.shape == (5, classes) and out.dtype == torch.float64
    # seeded builds are reproducible, different seeds differ
    a, b, c = fam.build(fam.sizes[0]), fam.build(fam.sizes[0]), fam.build(fam.sizes[0], seed=1)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_named_structure():
    """Linear → activation module → Linear chains and explicit attention modules by name."""
    vit = zoo.get_family("vit").build("d16")
    attn = vit.blocks[0].attn
    assert isinstance(attn, SelfAttention) and attn.heads == 2
    assert all(isinstance(getattr(attn, n), nn.Linear) for n in "qkvo")
    assert isinstance(vit.blocks[0].mlp.act, nn.GELU)
    assert vit.blocks[0].mlp.fc1.out_features == 32
    comp = zoo.get_family("vit-compressed").build("d16")
    assert comp.blocks[1].mlp.fc1.out_features == zoo.VIT_COMPRESSED_HIDDEN == 4
    z2 = zoo.get_family("mlp-z2").build("h8")
    assert isinstance(z2.act, Monomial) and z2.act.order == 2 and z2.fc1.out_features == 8
    x = torch.linspace(-2, 2, 5, dtype=torch.float64)
    assert torch.equal(Monomial(3)(x), x**3)
    tr = zoo.get_family("transformer").build("d32")
    assert tr.blocks[0].attn.causal and isinstance(tr.blocks[0].mlp.act, nn.ReLU)
    cnn = zoo.get_family("cnn").build("c4")
    assert isinstance(cnn.bn1, nn.BatchNorm2d) and cnn.conv2.out_channels == 8


def test_causal_last_position_matches_full_stack():
    """The decoder's last-position shortcut equals the full causal computation."""
    model = zoo.get_family("transformer").build("d32")
    tokens = zoo.get_family("transformer").probe(n=16)
    x = model.embed(tokens) + model.pos[:3]
    for block in model.blocks:
        x = block(x)
    full = model.unembed(model.ln(x[:, -1]))
    torch.testing.assert_close(model(tokens), full, rtol=0, atol=1e-12)
    # causality: the first position's output ignores later tokens
    attn = model.blocks[0].attn
    h = torch.randn(2, 3, 32, dtype=torch.float64)
    h2 = h.clone()
    h2[:, 1:] += 1.0
    assert torch.allclose(attn(h)[:, 0], attn(h2)[:, 0]) and not torch.allclose(attn(h), attn(h2))


@pytest.mark.parametrize("name", ["vit", "transformer"])
def test_forward_mode_ad_through_attention(name):
    """Explicit attention has a forward-mode derivative equal to a central difference."""
    fam = zoo.get_family(name)
    model = fam.build(fam.sizes[0]).eval()
    probe = fam.probe(n=4)
    params = {k: v.detach() for k, v in model.named_parameters()}
    key = "blocks.0.attn.q.weight"
    u = torch.randn(
        params[key].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )

    def f(w):
        return torch.func.functional_call(model, {**params, key: w}, (probe,))

    _, tangent = jvp(f, (params[key],), (u,))
    eps = 1e-6
    fd = (f(params[key] + eps * u) - f(params[key] - eps * u)) / (2 * eps)
    assert tangent.abs().max() > 1e-3
    torch.testing.assert_close(tangent, fd, rtol=1e-6, atol=1e-8)


def test_tasks():
    ma = zoo.modular_addition()
    assert ma.x_train.shape[1] == 3 and len(ma.x_train) + len(ma.x_test) == zoo.MOD_P**2
    a, b = ma.x_train[:, 0], ma.x_train[:, 1]
    assert torch.equal(ma.y_train, (a + b) % zoo.MOD_P) and bool((ma.x_train[:, 2] == 23).all())
    dg = zoo.digits()
    assert dg.x_train.shape == (1397, 1, 8, 8) and dg.x_test.shape == (400, 1, 8, 8)
    assert float(dg.x_train.max()) == 1.0 and float(dg.x_train.min()) == 0.0
    ts = zoo.teacher_task("tanh")
    assert ts.x_train.shape == (512, 4) and ts.y_train.shape == (512, 2)
    assert dg.digest() == zoo.digits().digest() != ma.digest()


def test_dead_units_counts_zeroed_units():
    model = zoo.get_family("vit-compressed").build("d16")
    assert zoo.dead_units(model) == {"blocks.0.mlp": 0, "blocks.1.mlp": 0}
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight[:, 2] = 0.0
        model.blocks[1].mlp.fc1.weight[0] *= 1e-6
        model.blocks[1].mlp.fc1.bias[0] = 0.0
    assert zoo.dead_units(model) == {"blocks.0.mlp": 0, "blocks.1.mlp": 2}


def test_tiny_zoo_budget_and_layout(tiny_zoo):
    root, runs, (wall, cpu) = tiny_zoo
    # CPU time (wall time inflates when other jobs share the machine's cores)
    assert cpu < 60.0, f"tiny zoo took {cpu:.1f} s of CPU ({wall:.1f} s wall)"
    for name, metas in runs.items():
        fam = zoo.get_family(name)
        size = fam.sizes[0]
        assert [m["step"] for m in metas] == list(fam.default_steps(tiny=True))
        for m in metas:
            path = root / name / size / f"step{m['step']:07d}.safetensors"
            assert path.is_file() and checkpoints.sidecar_path(path).is_file()
            assert (m["family"], m["size"], m["seed"], m["tiny"]) == (name, size, 0, True)
            assert m["version"] == dd.__version__ and len(m["data_hash"]) == 64
            assert math.isfinite(m["train_loss"]) and math.isfinite(m["test_loss"])
            assert checkpoints.read_meta(path)["step"] == m["step"]


def test_tiny_zoo_does_its_tasks(tiny_zoo):
    """Measured task numbers that an untrained or broken model cannot reach."""
    _, runs, _ = tiny_zoo
    first = {k: v[0] for k, v in runs.items()}
    last = {k: v[-1] for k, v in runs.items()}
    # regression: the student fits the teacher (the untrained loss is > 1)
    for name in ("mlp", "mlp-z2"):
        assert first[name]["test_loss"] > 1.0 and first[name]["test_accuracy"] is None
        assert last[name]["test_loss"] < 0.05 * min(1.0, first[name]["test_loss"])
    assert last["mlp"]["test_loss"] < 0.005
    # classification on held-out digits (chance 0.1)
    assert first["cnn"]["test_accuracy"] < 0.3
    assert last["cnn"]["test_accuracy"] >= 0.88
    assert last["vit"]["test_accuracy"] >= 0.6
    assert last["vit-compressed"]["test_accuracy"] >= 0.6
    # modular addition: memorised (train) and above chance on held-out pairs (chance 1/23)
    assert last["transformer"]["train_accuracy"] >= 0.9
    assert last["transformer"]["test_accuracy"] >= 0.4
    assert isinstance(last["transformer"]["generalised"], bool)
    for name in ("cnn", "vit", "vit-compressed"):
        assert last[name]["test_loss"] < 0.5 * first[name]["test_loss"]


def test_training_is_deterministic_and_schedule_free(tiny_zoo):
    """Two runs (one in another process, via the CLI) give byte-identical safetensors;
    stopping early does not change a step."""
    root, _, _ = tiny_zoo
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    steps = zoo.get_family("cnn").default_steps(tiny=True)[:3]
    cmd = [sys.executable, "-m", "dead_directions.cli", "train", "--family", "cnn"]
    cmd += ["--size", "c4", "--steps", ",".join(map(str, steps)), "--tiny", "--out"]
    subprocess.run([*cmd, str(root / "again")], check=True, capture_output=True)
    again = {"cnn": sorted((root / "again" / "cnn" / "c4").glob("*.safetensors"))}
    steps = zoo.get_family("transformer").default_steps(tiny=True)[:3]
    again["transformer"] = zoo.train("transformer", "d32", steps, root / "again", tiny=True)
    for name, paths in again.items():
        assert len(paths) == 3
        for path in paths:
            original = root / name / zoo.get_family(name).sizes[0] / path.name
            assert path.read_bytes() == original.read_bytes(), path
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    # a different seed gives different weights
    other = zoo.train("mlp", "h4", [0], root / "seed1", seed=1, tiny=True)[0]
    assert other.read_bytes() != (root / "mlp" / "h4" / "step0000000.safetensors").read_bytes()


def test_read_on_trained_checkpoint_matches_explicit_fisher(tiny_zoo):
    """dd.read on a trained mlp: g(θ; u) equals mean ‖J u‖² by central differences."""
    root, runs, _ = tiny_zoo
    path = root / "mlp" / "h4" / f"step{runs['mlp'][-1]['step']:07d}.safetensors"
    model, meta = checkpoints.load(path)
    assert meta["family"] == "mlp" and meta["format"] == "safetensors"
    fam = zoo.get_family("mlp")
    x = fam.probe(n=64)
    gen = torch.Generator().manual_seed(5)
    u = {
        k: torch.randn(p.shape, generator=gen, dtype=torch.float64)
        for k, p in model.named_parameters()
        if k.startswith("fc1")
    }
    norm = math.sqrt(sum(float((v**2).sum()) for v in u.values()))
    u = {k: v / norm for k, v in u.items()}
    r = dd.read(model, x, u, likelihood=fam.likelihood)
    params = dict(model.named_parameters())
    eps = 1e-6
    with torch.no_grad():

        def at(t):
            state = {k: p + t * u[k] if k in u else p for k, p in params.items()}
            return torch.func.functional_call(model, state, (dd.split_probe(x)[0],))

        ju = (at(eps) - at(-eps)) / (2 * eps)
    g = float((ju**2).sum(dim=1).mean())
    assert g > 1e-3
    assert r.fisher_base == pytest.approx(g, rel=1e-7)
    assert r.kind == "regular" and abs(r.order - 1.0) < 0.05


def test_cli_train(tmp_path, capsys):
    from dead_directions.cli import main

    rc = main(
        [
            "train",
            "--family",
            "mlp",
            "--size",
            "h4",
            "--steps",
            "0,5,20",
            "--out",
            str(tmp_path),
            "--tiny",
        ]
    )
    assert rc == 0
    files = sorted(p.name for p in (tmp_path / "mlp" / "h4").glob("*.safetensors"))
    assert files == [
        "step0000000.safetensors",
        "step0000005.safetensors",
        "step0000020.safetensors",
    ]
    out = capsys.readouterr().out
    assert "mlp" in out and "3 checkpoints" in out
    assert main(["train", "--family", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown family" in capsys.readouterr().err
    assert main(["train", "--family", "cnn", "--steps", "0,x", "--out", str(tmp_path)]) == 2
