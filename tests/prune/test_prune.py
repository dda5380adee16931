"""dd.prune: read-confirmed dead units removed, duplicates merged, outputs unchanged."""

import math

import pytest
import torch
from detector_models import UnitMLP, activation
from torch import nn

import dead_directions as dd
from dead_directions.core.direction import Direction
from dead_directions.nn.models import ViT
from dead_directions.prune import load_pruned, save_pruned

DTYPE = torch.float64
D_IN, HIDDEN, D_OUT = 4, 8, 3


def gaussian(n, *shape, seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


def planted_mlp() -> UnitMLP:
    """ReLU MLP 4 → 8 → 3: unit 0 silent, unit 3 zero outgoing, unit 5 = unit 2,
    unit 6 = 2.5 × unit 4 (incoming row and bias); units 1 and 7 live and distinct."""
    m = UnitMLP(activation("relu"), d_in=D_IN, hidden=HIDDEN, d_out=D_OUT)
    with torch.no_grad():
        m.fc1.bias[0] = -100.0
        m.fc2.weight[:, 3] = 0.0
        m.fc1.weight[5], m.fc1.bias[5] = m.fc1.weight[2], m.fc1.bias[2]
        m.fc1.weight[6], m.fc1.bias[6] = 2.5 * m.fc1.weight[4], 2.5 * m.fc1.bias[4]
    return m


@pytest.fixture(scope="module")
def pruned_mlp():
    model, x, xh = planted_mlp(), gaussian(256, D_IN), gaussian(512, D_IN, seed=1)
    dirs = dd.detect(model, x, detectors=["dead_unit", "duplicate_units"])
    reads = dd.read_many(model, x, dirs)
    # a live unit posing as node death, read at the checkpoint itself: it reads regular
    w, q = model.fc1.weight.detach(), model.fc2.weight.detach()
    vec = {"fc1.weight": torch.zeros_like(w), "fc2.weight": torch.zeros_like(q)}
    vec["fc1.weight"][1], vec["fc2.weight"][:, 1] = w[1], q[:, 1]
    live = Direction(
        "dead_unit:fc1:live", "fc1", vec, detector="dead_unit", predicted_kind="singular",
        predicted_order=2.0, meta={"unit": 1, "consumer": "fc2", "reason": "weak"},
    )  # fmt: skip
    reads.append(dd.read(model, x, live))
    pruned, report = dd.prune(
        model, reads, [*dirs, live], inputs=x, held_out=xh, labels=model(xh).detach() + 0.1
    )
    return model, x, xh, pruned, report


def test_prune_removes_exactly_the_planted_units(pruned_mlp):
    model, _, xh, pruned, report = pruned_mlp
    (layer,) = report.layers
    assert (layer.layer, layer.consumer) == ("fc1", "fc2")
    assert layer.removed == (0, 3)
    assert layer.merged == ((5, 2), (6, 4))
    assert {a.unit: a.ratio for a in report.actions if a.action == "merge"} == pytest.approx(
        {5: 1.0, 6: 2.5}, rel=1e-12
    )
    assert (layer.width_before, layer.width_after) == (8, 4)
    assert pruned.fc1.weight.shape == (4, D_IN) and pruned.fc2.weight.shape == (D_OUT, 4)
    assert type(pruned.fc1) is nn.Linear and type(pruned) is type(model)
    # kept units are the original 1, 2, 4, 7 (incoming rows unchanged)
    assert torch.equal(pruned.fc1.weight, model.fc1.weight[[1, 2, 4, 7]])
    with torch.no_grad():
        y0, y1 = model(xh), pruned(xh)
    rel = float((y1 - y0).norm() / y0.norm())
    assert rel <= 1e-9 and report.output_change <= 1e-9
    assert abs(report.metric_change) <= 1e-9 and report.metric == "loss"


def test_unit_that_reads_regular_is_never_removed(pruned_mlp):
    model, _, _, pruned, report = pruned_mlp
    skipped = [s for s in report.skipped if s.direction == "dead_unit:fc1:live"]
    assert len(skipped) == 1 and "regular" in skipped[0].why
    assert 1 not in report.layers[0].removed
    assert any(torch.equal(row, model.fc1.weight[1]) for row in pruned.fc1.weight)


def test_parameters_and_flops_saved_are_the_closed_counts(pruned_mlp):
    model, _, _, pruned, report = pruned_mlp
    gone = 4
    assert report.params_saved == gone * (D_IN + 1 + D_OUT) == 32
    assert report.params_after == sum(p.numel() for p in pruned.parameters())
    assert report.layers[0].params_saved == 32
    batch = 64  # default flop_batch: 2·N·in·out per Linear
    assert report.layers[0].flops_saved == 2 * batch * gone * (D_IN + D_OUT) == 3584
    assert report.flops_saved == 3584
    assert report.removed_fraction == pytest.approx(32 / 67)


def test_second_detect_finds_no_node_death_and_checkpoint_round_trips(pruned_mlp, tmp_path):
    _, x, xh, pruned, report = pruned_mlp
    again = dd.detect(pruned, x, detectors=["dead_unit", "duplicate_units"])
    assert again == []
    path = save_pruned(pruned, report, tmp_path / "p.safetensors", {"size": "h8"})
    loaded, meta = load_pruned(path, builder=lambda size: planted_mlp())
    assert meta["pruned"]["widths"] == {"fc1": 4}
    assert torch.equal(loaded(xh), pruned(xh))


class DeadBNConv(nn.Module):
    """conv → BatchNorm → ReLU → max-pool → flatten → linear; channel 1 dead (γ = 0, β < 0)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1, dtype=DTYPE)
        self.bn = nn.BatchNorm2d(4, dtype=DTYPE)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4, 2, dtype=DTYPE)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
            self.bn.running_var.copy_(torch.tensor([1.5, 0.7, 1.0, 2.0]))
            self.bn.weight[1], self.bn.bias[1] = 0.0, -1.0
        self.eval()

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_dead_batchnorm_channel_removed_from_conv_bn_and_linear():
    model, x, xh = DeadBNConv(), gaussian(64, 1, 4, 4), gaussian(128, 1, 4, 4, seed=1)
    pruned, report = dd.prune(model, inputs=x, held_out=xh)
    (layer,) = report.layers
    assert layer.removed == (1,) and set(layer.modules) == {"conv", "bn", "fc"}
    assert pruned.conv.weight.shape[0] == 3 and pruned.bn.running_mean.shape == (3,)
    assert pruned.fc.weight.shape == (2, 12)
    assert report.params_saved == (9 + 1) + 2 + 2 * 4  # conv filter+bias, γβ, fc block
    assert float((pruned(xh) - model(xh)).norm() / model(xh).norm()) <= 1e-9


def test_transformer_mlp_hidden_unit_removed():
    torch.manual_seed(0)
    model = ViT(dim=8, depth=1, heads=1, hidden=6, image=4, patch=2, classes=3).eval()
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight[2] = 0.0
        model.blocks[0].mlp.fc1.bias[2] = 0.0  # GELU(0) = 0: silent
    x, xh = gaussian(32, 1, 4, 4), gaussian(64, 1, 4, 4, seed=1)
    dirs = [d for d in dd.detect(model, x, detectors=["dead_unit"]) if d.layer.endswith("mlp.fc1")]
    reads = dd.read_many(model, x, dirs, likelihood="categorical")
    pruned, report = dd.prune(model, reads, dirs, inputs=x, held_out=xh)
    assert [(lp.layer, lp.removed) for lp in report.layers] == [("blocks.0.mlp.fc1", (2,))]
    assert pruned.blocks[0].mlp.fc1.out_features == 5
    assert pruned.blocks[0].mlp.fc2.in_features == 5
    assert report.params_saved == 8 + 1 + 8
    assert float((pruned(xh) - model(xh)).norm() / model(xh).norm()) <= 1e-9
    assert math.isfinite(report.output_change)


def test_a_block_whose_every_unit_died_prunes_to_width_zero(tmp_path):
    """All hidden units of a ViT MLP silent: the block becomes Linear(d, 0) → Linear(0, d)
    (its output is fc2's bias), the outputs do not change, the checkpoint round-trips, and
    every detector runs on the pruned model without finding a node death."""
    from dead_directions import detectors
    from dead_directions.io import checkpoints

    torch.manual_seed(0)
    model = ViT(dim=8, depth=1, heads=1, hidden=3, image=4, patch=2, classes=3).eval()
    with torch.no_grad():
        model.blocks[0].mlp.fc1.weight.zero_()
        model.blocks[0].mlp.fc1.bias.zero_()  # GELU(0) = 0: every unit silent
    x, xh = gaussian(32, 1, 4, 4), gaussian(64, 1, 4, 4, seed=1)
    dirs = dd.detect(model, x, detectors=["dead_unit"], layers=["blocks.0.mlp.fc1"])
    reads = dd.read_many(model, x, dirs, likelihood="categorical")
    assert [r.kind for r in reads] == ["singular"] * 3
    pruned, report = dd.prune(model, reads, dirs, inputs=x, held_out=xh)
    assert pruned.blocks[0].mlp.fc1.out_features == 0 == pruned.blocks[0].mlp.fc2.in_features
    assert report.params_saved == 3 * 8 + 3 + 8 * 3
    assert float((pruned(xh) - model(xh)).norm() / model(xh).norm()) <= 1e-12
    path = save_pruned(pruned, report, tmp_path / "p.safetensors", {"family": "test"})

    def build(size):
        return ViT(8, 1, 1, int(size), image=4, patch=2, classes=3)

    loaded, _ = checkpoints.load(path, builder=build, size="3")
    assert torch.equal(loaded(xh), pruned(xh))
    for name in detectors.available():
        found = dd.detect(loaded, x, detectors=[name])
        assert all(d.layer not in ("blocks.0.mlp.fc1", "blocks.0.mlp.fc2") for d in found)
        assert not [d for d in found if d.detector == "dead_unit"]


def test_cli_prune_writes_a_checkpoint_that_loads_narrower(tmp_path):
    from dead_directions import zoo
    from dead_directions.cli import main
    from dead_directions.io import checkpoints

    model = zoo.build_mlp("h8")
    with torch.no_grad():
        model.fc1.weight[3], model.fc1.bias[3] = 0.0, 0.0  # tanh(0) = 0: silent
    src = checkpoints.save(
        model, tmp_path / "step0000010.safetensors", {"family": "mlp", "size": "h8"}
    )
    assert main(["prune", str(src), "--family", "mlp", "--out", str(tmp_path / "out")]) == 0
    loaded, meta = load_pruned(tmp_path / "out" / "step0000010.safetensors")
    assert loaded.fc1.out_features == 7 and meta["pruned"]["widths"] == {"fc1": 7}
    x = zoo.get_family("mlp").task().x_test
    y0, y1 = model(x).detach(), loaded(x).detach()
    assert float((y1 - y0).norm() / y0.norm()) <= 1e-9


def test_removable_records_and_tables_are_the_closed_counts(tmp_path):
    """`removable` over a size's steps, then `prune-tables`: fractions are the closed counts."""
    import json

    import pandas as pd

    from dead_directions import zoo
    from dead_directions.cli import main
    from dead_directions.io import checkpoints

    items, planted = [], {0: [3], 10: [3, 6]}
    for step, dead in planted.items():
        model = zoo.build_mlp("h8", seed=1)
        with torch.no_grad():
            for u in dead:
                model.fc1.weight[u], model.fc1.bias[u] = 0.0, 0.0  # tanh(0) = 0: silent
        meta = {"family": "mlp", "size": "h8", "step": step}
        src = checkpoints.save(model, tmp_path / f"ckpt{step}.safetensors", meta)
        items.append(f"{step}={src}" if step else str(src))  # step 0 from the sidecar
    out = tmp_path / "prune" / "h8.json"
    argv = ["removable", *items, "--family", "mlp", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    records = json.loads(out.read_text())
    assert [r["step"] for r in records] == [0, 10]
    for rec in records:
        dead = planted[rec["step"]]
        n = len(dead)
        # mlp h8: 4 → 8 → 2; a unit is a row of fc1 (4 + 1 bias) and a column of fc2 (2)
        assert (rec["size"], rec["units_removed"]) == ("h8", n)
        assert (rec["params_before"], rec["params_after"]) == (58, 58 - 7 * n)
        assert rec["fraction"] == pytest.approx(7 * n / 58, rel=1e-15)
        layers = {r["layer"]: r for r in rec["layers"]}
        assert layers["fc1"]["fraction"] == pytest.approx(5 * n / 40, rel=1e-15)
        assert layers["fc2"]["fraction"] == pytest.approx(2 * n / 18, rel=1e-15)
        assert layers["fc1"]["removed"] == dead and layers["fc1"]["width_after"] == 8 - n
        assert rec["metric"] == "loss" and abs(rec["metric_change"]) <= 1e-9
    paths = {k: tmp_path / "t" / f"mlp.{k}" for k in ("csv", "md", "png")}
    argv = ["prune-tables", str(out), "--family", "mlp", "--csv", str(paths["csv"])]
    argv += ["--markdown", str(paths["md"]), "--figure", str(paths["png"])]
    assert main(argv) == 0
    frame = pd.read_csv(paths["csv"], dtype={"size": str})
    pooled = frame[frame["layer"] == "all"].set_index("step")["fraction"]
    assert pooled.to_dict() == pytest.approx({0: 7 / 58, 10: 14 / 58}, rel=1e-12)
    fc1 = frame[frame["layer"] == "fc1"].set_index("step")["fraction"]
    assert fc1.to_dict() == pytest.approx({0: 5 / 40, 10: 10 / 40}, rel=1e-12)
    text = paths["md"].read_text()
    assert f"| 10            | {100 * 14 / 58:.2f} % |" in text and "**fc1**" in text
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    # the report picks the table up beside its own tables folder
    from dead_directions.analysis.prune_tables import report_section

    md, parts = report_section("mlp", paths["csv"], paths["png"], tmp_path / "report.md")
    assert f"{100 * 7 / 58:.2f} %" in "\n".join(md) and "data:image/png;base64," in parts[-1]


def test_bad_removable_inputs_name_the_problem(tmp_path, capsys):
    from dead_directions.analysis.prune_tables import load_records
    from dead_directions.cli import main

    missing = tmp_path / "missing.safetensors"
    argv = ["removable", f"5={missing}", "--family", "mlp", "--out", str(tmp_path / "r.json")]
    assert main(argv) == 2
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_records([tmp_path / "bad.json"])
    with pytest.raises(ValueError, match="no removable records of family 'cnn'"):
        from dead_directions.analysis.prune_tables import write_prune_tables

        write_prune_tables([], "cnn", *(tmp_path / f"x.{e}" for e in ("csv", "md", "png")))
