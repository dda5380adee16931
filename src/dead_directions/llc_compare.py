"""Closed-form vs assembled (λ, m) vs devinterp's SGLD LLC: `dead-directions compare-llc`."""

from __future__ import annotations

import math
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass

import torch

# devinterp's LLC is nβ·(E_chain[L_n] − L_n(w*)), L_n the mean per-sample NLL on n data.
N_DATA = 1024  # 32 batches of 32: devinterp's init loss (32 batches) is then exactly L_n(w*)
BATCH = 32

#: The two devinterp settings of the table. devinterp 2.0.1 requires ``lr`` and ``n_beta``
#: (no defaults); "defaults" keeps every other argument at devinterp's default (4 chains,
#: 200 draws, batch 32, no localization, no burn-in). "tuned" is the best of a small grid
#: (lr ∈ {1e-4, 1e-3, 3e-3} × localization ∈ {0, 1, 30}, 1024 draws) on four cells.
SETTINGS: dict[str, dict] = {
    "defaults": dict(lr=1e-3),
    "tuned": dict(lr=1e-3, localization=1.0, num_draws=1024),
}


@dataclass(frozen=True)
class LLCEstimate:
    """devinterp's estimate: mean and std over chains, wall seconds, the arguments used."""

    mean: float
    std: float
    seconds: float
    setting: str


def true_point(cell) -> dict[str, torch.Tensor]:
    """The deepest point of the cell's true set (where the global (λ, m) is attained).

    Monomial, power-sum and regular cells: the model's own parameters. Reduced-rank
    cells: ``A* = [S^½ Vᵣᵀ; 0]``, ``B* = [Uᵣ S^½, 0]`` from the SVD of the true matrix
    ``C = B A`` (rank r): the intersection of all (s, t) components.
    """
    params = {k: v.detach().clone() for k, v in cell.model.named_parameters()}
    if not cell.name.startswith("rrr"):
        return params
    r = int(cell.name.rsplit("-r", 1)[1])
    a, b = params["A"], params["B"]
    u, s, vh = torch.linalg.svd(b @ a)
    root = torch.sqrt(s[:r])
    a_star, b_star = torch.zeros_like(a), torch.zeros_like(b)
    a_star[:r] = root[:, None] * vh[:r]
    b_star[:, :r] = u[:, :r] * root[None, :]
    return {"A": a_star, "B": b_star}


def _dataset(cell, point, n: int, seed: int):
    """devinterp adapter: rows ``input_ids = [x, y]`` (float64) drawn from the true model.

    Gaussian head: ``y = f(x; w*) + N(0, I)``; categorical: ``y ~ softmax(f(x; w*))``
    (stored as a float class index). Inputs ``x ~ N(0, I)`` of the cell's input width.
    """
    from datasets import Dataset
    from torch.func import functional_call

    gen = torch.Generator().manual_seed(seed)
    width = cell.inputs.shape[1]
    x = torch.randn(n, width, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        f = functional_call(cell.model, point, (x,)).reshape(n, -1)
    if cell.likelihood == "categorical":
        y = torch.multinomial(torch.softmax(f, -1), 1, generator=gen).to(torch.float64)
    else:
        y = f + torch.randn(f.shape, generator=gen, dtype=torch.float64)
    rows = torch.cat([x, y], dim=1)
    ds = Dataset.from_dict({"input_ids": rows.tolist()})
    return ds.with_format("torch", dtype=torch.float64), width


def _loss_fn(likelihood: str, width: int):
    """Per-"token" loss for devinterp: the per-sample NLL broadcast to ``(batch, L − 1)``."""

    def loss_fn(model, ids):
        ids = ids.to(torch.float64)
        x, y = ids[:, :width], ids[:, width:]
        out = model(x).reshape(len(x), -1)
        if likelihood == "categorical":
            nll = torch.nn.functional.cross_entropy(out, y[:, 0].long(), reduction="none")
        else:
            nll = 0.5 * ((out - y) ** 2).sum(-1)
        return nll[:, None].expand(len(x), ids.shape[1] - 1)

    return loss_fn


def devinterp_llc(cell, setting: str, *, n: int = N_DATA, seed: int = 0) -> LLCEstimate:
    """devinterp 2.0.1's ``llc`` at the cell's true point, nβ = n / log n (β = 1/log n)."""
    try:
        from devinterp.slt.llc import llc
    except ImportError as err:  # pragma: no cover - optional benchmark dependency
        raise ValueError(
            "compare-llc needs devinterp (optional): `pip install --no-deps devinterp==2.0.1` "
            "then `pip install datasets` (never let it replace torch)."
        ) from err
    import copy

    point = true_point(cell)
    model = copy.deepcopy(cell.model)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(point[k])
    ds, width = _dataset(cell, point, n, seed)
    kwargs = dict(SETTINGS[setting])
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = llc(
            model,
            ds,
            {},
            n_beta=n / math.log(n),
            loss_fn=_loss_fn(cell.likelihood, width),
            device="cpu",
            batch_size=BATCH,
            init_seed=100 + seed,
            output_path=f"{tmp}/samples.zarr",
            **kwargs,
        )
    seconds = time.perf_counter() - start
    return LLCEstimate(float(res.llc_mean), float(res.llc_std), seconds, setting)


def _rel(value: float, reference: float) -> str:
    if not math.isfinite(value):
        return "nan"
    return f"{(value - reference) / reference:+.1%}"


def compare(cells, settings=("defaults", "tuned"), *, devinterp: bool = True, seed: int = 0):
    """Rows of the comparison table, one per cell (see ``cmd_compare``)."""
    from .assembly import nu

    for k in range(1, 7):  # ν(k) quadrature is cached: keep it out of the read times
        nu(k)
    if cells:
        cells[0].assemble()  # first-call overheads (torch.func setup) out of the times too
    rows = []
    for cell in cells:
        lam_cf, m_cf = cell.closed_form
        start = time.perf_counter()
        a = cell.assemble()
        read_s = time.perf_counter() - start
        row = [
            cell.name,
            f"{float(lam_cf):g} ({m_cf})",
            f"{a.lam:g} ({a.m})",
            _rel(a.lam, float(lam_cf)),
            f"{read_s:.2f}",
        ]
        if devinterp:
            for setting in settings:
                est = devinterp_llc(cell, setting, seed=seed)
                row += [
                    f"{est.mean:.3f} ± {est.std:.3f}",
                    _rel(est.mean, float(lam_cf)),
                    f"{est.seconds:.1f}",
                ]
        rows.append(row)
        print(" | ".join(row), flush=True)
    return rows


def default_cells(all_cells: bool = False, pattern: str | None = None):
    """The assembly cells of the table: all with ``all_cells``, else those with M, N, H ≤ 2."""
    from .cells import assembly_cells

    cells = assembly_cells()
    if pattern:
        return [c for c in cells if pattern in c.name]
    if all_cells:
        return cells
    small = []
    for c in cells:
        if c.name.startswith("rrr"):
            dims = [int(p[1:]) for p in c.name.split("-")[1:4]]
            if max(dims) > 2:
                continue
        small.append(c)
    return small


def machine() -> str:
    """Platform, CPU, thread count and package versions, for the table's caption."""
    from importlib.metadata import version

    return (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU core(s), "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
        f"devinterp {version('devinterp')}, Python {platform.python_version()}"
    )


def cmd_compare(args) -> int:
    """Closed form vs assembled (from reads) vs devinterp's SGLD LLC, with wall times."""
    from tabulate import tabulate

    torch.set_num_threads(args.threads)
    cells = default_cells(args.all, args.cells)
    settings = tuple(args.settings.split(","))
    for s in settings:
        if s not in SETTINGS:
            raise ValueError(f"--settings: unknown setting {s!r}; choose from {sorted(SETTINGS)}.")
    headers = ["cell", "closed λ (m)", "assembled λ (m)", "rel. err", "read s"]
    if not args.no_devinterp:
        for s in settings:
            headers += [f"devinterp {s} λ̂ ± sd", "rel. err", "s"]
    rows = compare(cells, settings, devinterp=not args.no_devinterp, seed=args.seed)
    table = tabulate(rows, headers=headers, tablefmt=args.format)
    lines = [table, ""]
    if not args.no_devinterp:
        lines.append(f"Machine: {machine()}.")
        lines.append(
            f"devinterp: n = {N_DATA} samples, nβ = n/log n = {N_DATA / math.log(N_DATA):.1f}, "
            f"batch {BATCH}, chains start at the true (deepest) point; settings: "
            + "; ".join(f"{k} = {SETTINGS[k]}" for k in settings)
            + " (others devinterp 2.0.1 defaults: 4 chains, 200 draws, localization 0)."
        )
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare-llc",
        help="assembly cells: closed-form (λ, m) vs assembled from reads vs devinterp's LLC",
    )
    p.add_argument("--all", action="store_true", help="every assembly cell (default M,N,H ≤ 2)")
    p.add_argument("--cells", default=None, help="only cells whose name contains this")
    p.add_argument("--settings", default="defaults,tuned", help="devinterp settings to run")
    p.add_argument("--no-devinterp", action="store_true", help="closed form vs assembled only")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="github", help="tabulate table format")
    p.add_argument("--out", default=None, help="also write the table (and machine) here")
    p.set_defaults(func=cmd_compare)
