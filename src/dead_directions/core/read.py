"""The read: order k, learning coefficient and kind of each direction at a frozen checkpoint."""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dead_directions.core.allocator import retain_freed_memory
from dead_directions.core.assembly import nu_of_read
from dead_directions.core.correctability import CORRECTION_FRACTION, RhoFit, heldout_rho, rho_fits
from dead_directions.core.direction import (
    BASE_TOL,
    ORDER_TOLERANCE,
    Direction,
    as_direction,
    normalise,
    validate_offsets,
)
from dead_directions.core.fisher import (
    Batch,
    FunctionalModel,
    LayerSuffix,
    _split,
    check_output,
    directional_fisher_sums,
    eval_mode,
    iter_batches,
    layer_fisher_sums,
    local_layer,
    prepare_batch,
)
from dead_directions.core.likelihood import get_likelihood
from dead_directions.core.rate import (
    RateOptions,
    default_eps_flat,
    default_floor,
    flat_rate,
    read_rate,
)

DEFAULT_RADII = tuple(np.logspace(-4, 0, 25).tolist())


@dataclass(frozen=True, eq=False)
class Read:
    """The read of one direction.

    ``order`` is the measured KL order k̂ (``math.inf`` for a gauge; NaN when
    unresolved); ``lam = 1/(2k̂)`` (0 for a gauge). ``ray_order`` is what the slope of
    the straight ray alone says (a curved gauge reads 2 there). ``slope`` is the
    log–log slope over ``window`` (radii, in parameter units); ``spread`` the largest
    deviation of a local order from k̂ inside it. ``magnitude`` is ``g(θ_base; u)/g_ref``
    with ``g_ref`` the median directional Fisher of random unit directions in the same
    tensors (units of g: squared output units per squared parameter unit, divided by
    σ² for the Gaussian head). ``correctability`` is ρ of METHOD §3 (NaN where not
    computed), fitted on the fit part of the probe. ``radii`` (shape ``(R,)``) and
    ``fisher`` (shape ``(R,)``) are the rate curve on the fit part; ``fisher_base`` is
    ``g`` at ``t = 0``.

    ``kind`` is ``regular``, ``singular``, ``gauge``, ``undetermined`` (the data cannot
    decide: ``note`` says why) or ``unresolved`` (no scaling window). ``heldout`` is the
    held-out check of a gauge candidate (METHOD §3 rule 1): for a flat one the largest
    ``g`` on the held-out inputs over their own ``g_ref``; for a curved one ρ on the
    held-out inputs with the correction fitted on the fit part (NaN where not checked).
    ``rho_status`` is :class:`~dead_directions.core.correctability.RhoFit`'s status (``""``
    where ρ was not computed); ``support_magnitude`` is ``g(θ_base; u)`` against the
    largest directional Fisher of a unit vector in ρ's correction space
    (:attr:`RhoFit.support_magnitude`, NaN where ρ was not solved): a curved gauge is
    tangent to its orbit, so this is at most ``ReadOptions.rate.near_dead``.
    ``lower_slope``, ``upper_slope`` and ``crossover`` (r*, parameter units) describe a
    two-regime curve (:class:`~dead_directions.core.rate.RateRead`; NaN for one regime).

    Recovery is measured at the checkpoint (METHOD §5): a direction with its own ``base``
    (a detector's projection onto the locus) is read at the base (the fields above) and
    at the checkpoint itself (``checkpoint_kind``, ``checkpoint_order``,
    ``checkpoint_magnitude``); ``base_distance`` is ‖base offset‖ / ‖checkpoint's values of
    the tensors the base moves‖ (NaN without a base). A direction without a base is read
    at the checkpoint only, and its ``checkpoint_*`` fields repeat its read.
    """

    name: str
    layer: str
    detector: str
    order: float
    kind: str
    lam: float
    slope: float
    spread: float
    window: tuple[float, float] | None
    magnitude: float
    correctability: float
    radii: np.ndarray
    fisher: np.ndarray
    fisher_base: float
    g_ref: float
    ray_order: float
    predicted_kind: str | None = None
    predicted_order: float | None = None
    note: str = ""
    seconds: float = math.nan
    heldout: float = math.nan
    rho_status: str = ""
    lower_slope: float = math.nan
    upper_slope: float = math.nan
    crossover: float = math.nan
    support_magnitude: float = math.nan
    base_distance: float = math.nan
    checkpoint_kind: str = ""
    checkpoint_order: float = math.nan
    checkpoint_magnitude: float = math.nan

    @property
    def has_base(self) -> bool:
        """Whether the read is at a detector's base projection (``base_distance`` set)."""
        return not math.isnan(self.base_distance)

    def on_locus(self, base_tol: float = BASE_TOL) -> bool | None:
        """Whether the base lies within ``base_tol`` (relative) of the checkpoint; None
        without a base."""
        return self.base_distance <= base_tol if self.has_base else None

    @property
    def matches_at_checkpoint(self) -> bool | None:
        """:attr:`matches_prediction` of the read at the checkpoint (for a direction without
        a base, the read itself)."""
        if not self.has_base:
            return self.matches_prediction
        if not self.checkpoint_kind:
            return None  # read with ReadOptions(read_at_checkpoint=False)
        return _matches(self.checkpoint_kind, self.checkpoint_order, self)

    def recovered_at_base(self, base_tol: float = BASE_TOL) -> bool | None:
        """The base read matches the prediction and the base lies within ``base_tol`` of the
        checkpoint (a farther base is off-locus: its match holds by construction); None
        without a base or a prediction."""
        if not self.has_base or self.predicted_kind is None:
            return None
        return bool(self.matches_prediction) and bool(self.on_locus(base_tol))

    @property
    def nu(self) -> float:
        """Singular fluctuation ν(k) of the direction (METHOD §6): regular ½, gauge 0,
        singular ν(k) for the integer k within 0.1 of k̂ (k ≤ 6), else NaN."""

        return nu_of_read(self.kind, self.order)[0]

    @property
    def matches_prediction(self) -> bool | None:
        """Kind equal to the prediction and, for a finite predicted order, |k̂ − k| ≤
        ``ORDER_TOLERANCE`` (0.05)."""
        return _matches(self.kind, self.order, self)


def _matches(kind: str, order: float, read: Read) -> bool | None:
    """``kind``/``order`` against ``read``'s prediction (:func:`matches_prediction`); None
    without a prediction."""
    if read.predicted_kind is None:
        return None
    return matches_prediction(kind, order, read.predicted_kind, read.predicted_order)


def matches_prediction(
    kind: str,
    order: float,
    predicted_kind: str | None,
    predicted_order: float | None,
    tolerance: float = ORDER_TOLERANCE,
) -> bool:
    """A measured ``kind``/``order`` against a prediction: kind equal and, for a finite
    predicted order, |k̂ − k| ≤ ``tolerance``."""
    if kind != predicted_kind:
        return False
    if predicted_order is None or math.isinf(predicted_order):
        return True
    return abs(order - predicted_order) <= tolerance


@dataclass(frozen=True)
class ReadOptions:
    """Options of the read beyond the rate tolerances.

    ``n_reference``: random unit directions per tensor set for ``g_ref``.
    ``rho_gauge``: ρ at or below this classifies a k̂ ≈ 2 ray as a curved gauge. It sits
    in the measured gap between exact gauges (ρ at solver precision, ≤ 1e-12 by the exact
    solve) and genuine singularities of wide networks (ρ ≥ 1e-3):
    ``benchmarks/bench_rho.py`` prints both distributions.
    ``rho_stop``: CGLS for ρ stops once ρ falls to this (its residual never rises again,
    so the decision against ``rho_gauge`` is made); a curved gauge's stored ρ is then an
    upper bound, between 0 and ``rho_stop``, well below ``rho_gauge``.
    ``correctability``: compute ρ for rays that read ``|k̂ − 2| ≤ curved_gauge_band``.
    ``support_fraction``: ρ's correction space is the entries a direction moves by more
    than this fraction of its largest entry (:data:`~dead_directions.core.correctability.
    CORRECTION_FRACTION`, METHOD §3 rule 2).
    ``min_constraints_ratio``: ρ is fitted only where the fit data give at least this many
    output equations per correction parameter; otherwise the read is ``undetermined``.
    ``heldout_fraction``: without explicit held-out inputs, the last ``⌊f·n⌋`` samples
    (at least one) of every probe batch of ``n ≥ 2`` samples are held out: the rate
    curves and ρ's fit use the rest, and every gauge verdict must hold on them too
    (METHOD §3 rule 1). 0 holds nothing out, and gauges then read ``undetermined``.
    ``heldout_flat_margin``: a flat gauge is confirmed where ``g ≤ margin · eps_flat ·
    g_ref`` on the held-out inputs (their own ``g_ref``), see :func:`_confirm_gauges`.
    ``memory_budget``: bytes per vmapped chunk of (direction, radius) pairs; ``None`` takes
    64 MiB on CPU (cache-sized working sets are faster there; raised to 24 pairs while
    under 512 MiB, as a call's fixed cost outweighs the cache) and a quarter of the free
    memory on a GPU; a budget given here is kept to.
    ``retain_freed_memory``: on CPU with glibc, keep freed activation memory in the process
    (:func:`dead_directions.core.allocator.retain_freed_memory`, process-wide) instead of
    page-faulting it in again for every chunk.
    ``read_at_checkpoint``: a direction with its own ``base`` is also read at the
    checkpoint (``Read.checkpoint_*``; METHOD §5: recovery is measured, not constructed).
    """

    rate: RateOptions = RateOptions()
    n_reference: int = 8
    rho_gauge: float = 1e-6
    rho_stop: float = 1e-8
    correctability: bool = True
    curved_gauge_band: float = 0.5
    support_fraction: float = CORRECTION_FRACTION
    min_constraints_ratio: float = 2.0
    heldout_fraction: float = 0.25
    heldout_flat_margin: float = 100.0
    memory_budget: int | None = None
    retain_freed_memory: bool = True
    read_at_checkpoint: bool = True


@dataclass
class _Group:
    """Directions sharing a base point and a set of tensors: one vmap stream."""

    base_key: int
    support: tuple[str, ...]
    base: dict[str, torch.Tensor]
    indices: list[int]
    vectors: list[dict[str, torch.Tensor]]
    radii: list[np.ndarray]
    refs: list[dict[str, torch.Tensor]]
    ref_radius: float
    layer: str | None = None
    activation_numel: int | None = None
    base_theta: dict[str, torch.Tensor] | None = None
    ts: torch.Tensor | None = None
    which: torch.Tensor | None = None
    points: dict[str, torch.Tensor] | None = None
    tangents: dict[str, torch.Tensor] | None = None
    sums: torch.Tensor | None = None

    @property
    def pair_vectors(self) -> list[dict[str, torch.Tensor]]:
        """The unit vectors that ``which`` indexes: the directions, then the references."""
        return [*self.vectors, *self.refs]

    def materialise(self) -> None:
        """Per-pair points ``θ + t u`` and tangents ``u`` for the full-model path."""
        if self.points is not None:
            return
        vectors = self.pair_vectors
        self.tangents = {
            k: torch.stack([vectors[j][k] for j in self.which.tolist()]) for k in self.support
        }
        self.points = {
            k: self.base_theta[k].unsqueeze(0)
            + self.ts.reshape(-1, *([1] * self.base_theta[k].ndim)) * self.tangents[k]
            for k in self.support
        }


def check_finite_parameters(model: nn.Module, source: str) -> None:
    """Refuse a model with NaN or infinite parameters: ``ValueError`` naming ``source`` (the
    model or its checkpoint file), the parameter and how many of its entries are bad."""
    for name, value in model.named_parameters():
        bad = int((~value.detach().isfinite()).sum())
        if bad:
            raise ValueError(
                f"{source}: parameter {name!r} has {bad} NaN or infinite entries of "
                f"{value.numel()}; the checkpoint is corrupt or training diverged."
            )


def read(model, inputs, direction, **options) -> Read:
    """Read one direction; see :func:`read_many` for the arguments."""
    return read_many(model, inputs, [direction], **options)[0]


def on_terminal() -> bool:
    """Whether standard error is a terminal: progress bars (tqdm) are shown only there,
    never written into logs. The one test of it for every progress bar of the package."""

    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def read_many(
    model: torch.nn.Module,
    inputs,
    directions: Sequence,
    *,
    likelihood="gaussian",
    output: Callable | None = None,
    base: Mapping[str, torch.Tensor] | None = None,
    radii: Iterable[float] | None = None,
    dtype: torch.dtype = torch.float64,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    sigma: float = 1.0,
    device: torch.device | str | None = None,
    seed: int = 0,
    options: ReadOptions | None = None,
    heldout=None,
    _confirm: bool = True,
) -> list[Read]:
    """Read many directions at one checkpoint, batched over (direction, radius) pairs.

    ``model``: any module, evaluated by ``functional_call`` in eval mode at its named
    parameters plus ``base`` (plus each direction's own ``base``). ``inputs``: a tensor,
    a dict of keyword tensors, or an iterable of such batches (streamed once; ρ uses the
    first batch). ``heldout``: inputs of the same form that neither the detectors nor the
    fit saw, on which every gauge verdict is confirmed (METHOD §3 rule 1); ``None`` holds
    out ``options.heldout_fraction`` of every probe batch instead (:func:`split_probe`
    gives the same split of a single tensor or dict, for the detectors). ``output`` maps
    the module's return value to the output tensor ``(batch, ..., out)``. ``radii``
    (default 1e-4 … 1, 25 log-spaced points) multiply each direction's ``scale``.
    ``batch_size`` splits a single tensor input into probe batches (after the held-out
    split); ``chunk_size`` bounds the (direction, radius) pairs per vmapped call.
    """
    started = time.perf_counter()
    options = options or ReadOptions()
    lik = get_likelihood(likelihood, sigma)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}.")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}.")
    params = {k: v.detach() for k, v in model.named_parameters()}
    if not params:
        raise ValueError("model has no parameters to read directions in.")
    device = torch.device(device) if device is not None else next(iter(params.values())).device
    check_finite_parameters(model, "the model")
    params = {k: v.to(device=device, dtype=dtype) for k, v in params.items()}
    buffers = {
        k: (v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device))
        for k, v in model.named_buffers()
    }
    grid = _radius_grid(radii)
    directions = [as_direction(d, i) for i, d in enumerate(directions)]
    if not directions:
        return []
    shared_base = validate_offsets("base", base, params, allow_zero=True) if base else {}
    # Recovery is measured at the checkpoint (METHOD §5): a direction with its own base is
    # read there too, as a twin without the base, in the same pass over the probe.
    n_asked = len(directions)
    twins = (
        [i for i, d in enumerate(directions) if d.base]
        if _confirm and options.read_at_checkpoint
        else []
    )
    directions = directions + [replace(directions[i], base=None) for i in twins]
    eps = torch.finfo(dtype).eps
    bits = torch.finfo(dtype).bits
    eps_flat = options.rate.eps_flat or default_eps_flat(bits)
    floor = options.rate.floor or default_floor(eps)

    budget = options.memory_budget or _default_budget(device)
    min_pairs = 0 if options.memory_budget else MIN_CHUNK_PAIRS
    if options.retain_freed_memory and device.type == "cpu":
        retain_freed_memory()
    groups = _make_groups(directions, params, shared_base, grid, options.n_reference, seed)
    for group in groups:
        group.layer = local_layer(model, group.support)

    held: list[Batch] = []
    if heldout is not None:
        held = list(iter_batches(heldout))
        fit_batches = iter_batches(inputs, batch_size)
    elif _confirm and options.heldout_fraction > 0:
        fit_batches = _holding_out(inputs, options.heldout_fraction, batch_size, held)
    else:
        fit_batches = iter_batches(inputs, batch_size)
    first_batch = None
    n_samples = 0
    fits: dict[int, RhoFit] = {}
    fmodels: dict[int, tuple[FunctionalModel, dict[str, torch.Tensor]]] = {}

    # a long read shows its batches on a terminal; nothing is printed into logs
    progress = tqdm(
        fit_batches,
        desc="read: probe batches",
        unit="batch",
        leave=False,
        disable=not on_terminal(),
    )
    with eval_mode(model), torch.no_grad():
        for index, raw in enumerate(progress):
            batch = prepare_batch(raw, dtype, device, index)
            if first_batch is None:
                first_batch = batch
            for group in groups:
                fmodel = FunctionalModel(model, {**params, **group.base}, buffers, output)
                suffix = None
                if group.layer is not None:
                    suffix = LayerSuffix.trace(fmodel, batch, group.layer)
                if suffix is not None:
                    y = suffix.output
                elif group.activation_numel is None:
                    y, group.activation_numel = _forward_measuring(fmodel, batch)
                else:
                    y = fmodel({}, batch)
                y = check_output(y, index)
                if not torch.isfinite(y).all():
                    raise ValueError(
                        f"the model's output on batch {index} contains NaN or infinite values "
                        "at the base point; check the checkpoint and the base offsets."
                    )
                if suffix is not None:
                    # Only the suffix is batched. Its activations are freed as the pass
                    # goes: take primal and tangent of a quarter of them as live per pair
                    # (measured on the zoo's vit and transformer: chunks of 4-16 pairs).
                    per_pair = y.element_size() * suffix.suffix_numel // 2
                    chunk = chunk_size or _chunk_for(per_pair, len(group.ts), budget, min_pairs)
                    sums = layer_fisher_sums(
                        suffix, lik, group.ts, group.which, group.pair_vectors, chunk
                    )
                else:
                    group.materialise()
                    chunk = chunk_size or _auto_chunk(group, y, budget, min_pairs)
                    sums = directional_fisher_sums(
                        fmodel, lik, batch, group.points, group.tangents, chunk
                    )
                group.sums = sums if group.sums is None else group.sums + sums
            n_samples += y.shape[0]

        reads: list[Read | None] = [None] * len(directions)
        for group in groups:
            fmodel = FunctionalModel(model, {**params, **group.base}, buffers, output)
            g_all = (group.sums / n_samples).cpu().numpy()
            n_dir = len(group.indices)
            per_dir = [len(r) + 1 for r in group.radii]
            ref_vals = g_all[sum(per_dir) :].reshape(len(group.refs), 2)
            g_ref = float(np.median(ref_vals.max(axis=1))) if len(group.refs) else math.nan
            # Every reference exactly 0: the tensors carry no Fisher at all on this probe
            # (e.g. a zero output head), and a curve that is 0 too is flat (METHOD §3 rule 5).
            dark = len(group.refs) > 0 and float(np.max(ref_vals)) == 0.0
            curves, rates, offset = [], [], 0
            for j in range(n_dir):
                curve = g_all[offset : offset + per_dir[j]]
                offset += per_dir[j]
                curves.append(curve)
                if dark and float(np.max(np.abs(curve))) == 0.0:
                    rates.append(flat_rate(group.radii[j]))
                    continue
                rates.append(
                    read_rate(
                        group.radii[j],
                        np.asarray(curve[1:], dtype=float),
                        g_ref,
                        eps_flat=eps_flat,
                        floor=floor,
                        options=options.rate,
                    )
                )
            group_fits = _rhos(group, rates, g_ref, fmodel, lik, first_batch, eps_flat, options)
            for j in range(n_dir):
                i = group.indices[j]
                if j in group_fits:
                    fits[i], fmodels[i] = group_fits[j], (fmodel, group.vectors[j])
                reads[i] = _classify(
                    directions[i],
                    group.radii[j],
                    curves[j],
                    g_ref,
                    rates[j],
                    group_fits.get(j),
                    options,
                    dark=dark,
                )
        if _confirm:
            reads = _confirm_gauges(
                reads,
                directions,
                held,
                fits,
                fmodels,
                lik,
                eps_flat,
                dict(
                    model=model,
                    likelihood=lik,
                    output=output,
                    base=base,
                    radii=grid,
                    dtype=dtype,
                    batch_size=batch_size,
                    chunk_size=chunk_size,
                    device=device,
                    seed=seed,
                    options=options,
                    _confirm=False,
                ),
                options,
            )
    reads = _at_checkpoint(reads, directions, n_asked, twins, params, shared_base)
    elapsed = (time.perf_counter() - started) / len(directions)
    return [replace(r, seconds=elapsed) for r in reads]


def base_distance(base, params, shared_base=None) -> float:
    """‖base offset‖ / ‖the checkpoint's values of the tensors it moves‖ (METHOD §5): how far
    a detector's projection moved the checkpoint, relative to what it moved."""
    shared_base = shared_base or {}
    num = sum(float((torch.as_tensor(v).detach().double() ** 2).sum()) for v in base.values())
    den = sum(
        float(((params[k] + shared_base.get(k, 0)).detach().double() ** 2).sum()) for k in base
    )
    if den > 0:
        return math.sqrt(num / den)
    return 0.0 if num == 0 else math.inf


def _at_checkpoint(reads, directions, n_asked, twins, params, shared_base) -> list[Read]:
    """The asked-for reads with their base distance and their read at the checkpoint: the
    twin read (without the base) of a direction with a base, the read itself otherwise."""
    at = dict(zip(twins, reads[n_asked:], strict=True))
    out = []
    for i, r in enumerate(reads[:n_asked]):
        d = directions[i]
        if not d.base:
            out.append(
                replace(
                    r,
                    checkpoint_kind=r.kind,
                    checkpoint_order=r.order,
                    checkpoint_magnitude=r.magnitude,
                )
            )
            continue
        r = replace(r, base_distance=base_distance(d.base, params, shared_base))
        if i in at:
            c = at[i]
            r = replace(
                r,
                checkpoint_kind=c.kind,
                checkpoint_order=c.order,
                checkpoint_magnitude=c.magnitude,
                note=f"{r.note}; at the checkpoint (base {r.base_distance:.2g} away, relative): "
                f"{c.kind} k̂ = {c.order:.3g}".lstrip("; "),
            )
        out.append(r)
    return out


def split_probe(inputs, fraction: float = ReadOptions.heldout_fraction):
    """``(fit, heldout)`` parts of one probe batch (a tensor, a dict of keyword tensors or
    a tuple of positional tensors, samples along the first axis): the last ``⌊f·n⌋``
    samples (at least one) are held out when ``n ≥ 2``, none otherwise (``heldout`` is then
    ``None``). This is the split :func:`read_many` makes of every probe batch; give the fit
    part to the detectors, so that neither they nor ρ's fit see the held-out inputs.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction!r}.")
    if isinstance(inputs, torch.Tensor):
        fit, held = _split_rows(((inputs,), {}), fraction)
        return fit[0][0], (held[0][0] if held else None)
    if isinstance(inputs, Mapping):
        fit, held = _split_rows(((), dict(inputs)), fraction)
        return fit[1], (held[1] if held else None)
    if isinstance(inputs, tuple):
        fit, held = _split_rows((inputs, {}), fraction)
        return fit[0], (held[0] if held else None)
    raise ValueError(
        f"split_probe: expected a tensor, a dict or a tuple of tensors, got "
        f"{type(inputs).__name__}; split an iterable of batches batch by batch."
    )


def _split_rows(batch: Batch, fraction: float) -> tuple[Batch, Batch | None]:
    """A batch's fit rows and held-out rows (the last ``⌊f·n⌋``, at least one; ``None``
    when ``n < 2`` or ``f = 0``). Every tensor argument is cut along its first axis."""
    args, kwargs = batch
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.ndim]
    n = tensors[0].shape[0] if tensors else 0
    if fraction <= 0 or n < 2:
        return batch, None
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(
            "inputs: the tensors of a probe batch disagree on the number of samples (first "
            f"axis: {sorted({t.shape[0] for t in tensors})}); the held-out split needs one."
        )
    cut = n - min(n - 1, max(1, math.floor(fraction * n)))

    def part(sl):
        return (
            tuple(a[sl] if isinstance(a, torch.Tensor) and a.ndim else a for a in args),
            {
                k: (v[sl] if isinstance(v, torch.Tensor) and v.ndim else v)
                for k, v in kwargs.items()
            },
        )

    return part(slice(0, cut)), part(slice(cut, n))


def _holding_out(inputs, fraction: float, batch_size: int | None, held: list[Batch]):
    """Fit batches of ``inputs``, the held-out rows of each raw batch appended to ``held``
    (before ``batch_size`` splits it, so the split does not depend on the batching)."""
    for raw in iter_batches(inputs):
        fit, out = _split_rows(raw, fraction)
        if out is not None:
            held.append(out)
        yield from _split(fit, batch_size)


def _confirm_gauges(
    reads, directions, held, fits, fmodels, lik, eps_flat, again, options
) -> list[Read]:
    """Every gauge verdict confirmed on held-out inputs (METHOD §3 rule 1), else
    ``undetermined`` with the reason.

    A flat gauge must read a gauge on the held-out inputs too (a read of the same
    directions there, with their own ``g_ref``): flat within ``heldout_flat_margin`` of
    ``eps_flat`` (the held-out part is a smaller sample, so a direction at the threshold on
    the fit part falls on either side of it there by sampling alone, while a probe artefact
    is excited at a magnitude comparable to ``g_ref``, decades above), or a curved gauge
    (a ReLU unit silent on the fit part but firing on held-out inputs: its rescaling is
    flat on the one and a curved orbit on the other; ρ is then fitted on the held-out
    part, the only data where the direction departs at second order). A curved gauge's
    correction, fitted on the fit part, must leave ρ ≤ ``rho_gauge`` on the held-out inputs
    (:func:`heldout_rho`).
    """
    out = list(reads)
    gauges = [i for i, r in enumerate(reads) if r.kind == "gauge"]
    if not gauges:
        return out
    if not held:
        for i in gauges:
            out[i] = replace(
                reads[i],
                kind="undetermined",
                order=math.nan,
                lam=math.nan,
                note=f"{reads[i].note}; no held-out inputs to confirm the gauge (a probe "
                "batch of one sample, heldout_fraction = 0, or no heldout inputs given)",
            )
        return out
    flat = [i for i in gauges if math.isinf(reads[i].ray_order) or i not in fits]
    for i in gauges:
        if i in flat:
            continue
        fit = fits[i]
        fmodel, u = fmodels[i]
        batches = [prepare_batch(b, again["dtype"], again["device"], j) for j, b in enumerate(held)]
        rho_h = heldout_rho(fmodel, lik, batches, u, fit.correction)
        if not math.isfinite(rho_h):
            # No second-order departure on the held-out inputs (a ReLU unit that fires on
            # the fit part only): nothing to correct there, so read it there instead.
            flat.append(i)
        elif rho_h <= options.rho_gauge:
            out[i] = replace(reads[i], heldout=rho_h)
        else:
            out[i] = _undetermined(
                reads[i],
                rho_h,
                f"ρ = {fit.rho:.2g} on the probe, but the correction fitted there leaves "
                f"ρ = {rho_h:.2g} on held-out inputs: the fit absorbed the probe, not an orbit",
            )
    if flat:
        # iter_batches takes a tuple as positional arguments and a dict as keywords.
        as_inputs = [tuple(args) if not kwargs else kwargs for args, kwargs in held]
        checks = read_many(inputs=as_inputs, directions=[directions[i] for i in flat], **again)
        for i, check in zip(flat, checks, strict=True):
            g_max = max(float(np.max(check.fisher)), check.fisher_base)
            ratio = g_max / check.g_ref if check.g_ref > 0 else (0.0 if g_max == 0 else math.inf)
            if check.kind == "gauge" or ratio <= options.heldout_flat_margin * eps_flat:
                out[i] = replace(reads[i], heldout=ratio)
                if check.kind == "gauge" and math.isfinite(check.ray_order):
                    out[i] = replace(
                        out[i],
                        note=f"{reads[i].note}; on held-out inputs a curved gauge (ρ = "
                        f"{check.correctability:.2g} fitted there)",
                    )
            else:
                out[i] = _undetermined(
                    reads[i],
                    ratio,
                    f"{reads[i].note}, but not on held-out inputs (g ≤ {ratio:.2g}·g_ref "
                    f"there, reads {check.kind} k̂ = {check.order:.3g}): a probe artefact",
                )
    return out


def _undetermined(read: Read, heldout: float, note: str) -> Read:
    """``read`` turned ``undetermined`` by its held-out check (no order, no λ), keeping the
    held-out number and saying why."""
    return replace(
        read, kind="undetermined", order=math.nan, lam=math.nan, heldout=heldout, note=note
    )


def _radius_grid(radii) -> np.ndarray:
    grid = np.asarray(DEFAULT_RADII if radii is None else list(radii), dtype=float)
    if grid.ndim != 1 or len(grid) < 4:
        raise ValueError("radii: give a 1-d sequence of at least 4 positive radii.")
    if not np.all(np.isfinite(grid)) or np.any(grid <= 0) or np.any(np.diff(grid) <= 0):
        raise ValueError("radii must be finite, positive and strictly increasing.")
    return grid


def _seed_for(support: tuple[str, ...], seed: int) -> int:
    digest = hashlib.sha256(("|".join(support) + f"#{seed}").encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_directions(
    params: Mapping[str, torch.Tensor], support: Sequence[str], n: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """``n`` Gaussian unit directions over the tensors ``support``, seeded per tensor set."""
    gen = torch.Generator().manual_seed(_seed_for(tuple(support), seed))
    out = []
    for _ in range(n):
        vec = {
            k: torch.randn(params[k].shape, generator=gen, dtype=torch.float64).to(
                device=params[k].device, dtype=params[k].dtype
            )
            for k in support
        }
        out.append(normalise(vec))
    return out


def _make_groups(directions, params, shared_base, grid, n_reference, seed) -> list[_Group]:
    groups: dict[tuple, _Group] = {}
    for i, d in enumerate(directions):
        vector = normalise(
            validate_offsets(f"direction {d.name!r}", d.vector, params, allow_zero=False)
        )
        own_base = (
            validate_offsets(f"base of direction {d.name!r}", d.base, params, allow_zero=True)
            if d.base
            else {}
        )
        key = (id(d.base) if d.base else 0, d.support)
        if key not in groups:
            merged = dict(shared_base)
            for k, v in own_base.items():
                merged[k] = merged.get(k, 0) + v
            base = {k: params[k] + v for k, v in merged.items()}
            groups[key] = _Group(key[0], d.support, base, [], [], [], [], 0.0)
        group = groups[key]
        group.indices.append(i)
        group.vectors.append(vector)
        group.radii.append(grid * d.scale)
        group.ref_radius = max(group.ref_radius, float(grid[-1] * d.scale))
    for group in groups.values():
        theta = {k: group.base.get(k, params[k]) for k in group.support}
        group.refs = random_directions(theta, group.support, n_reference, seed)
        # Rate curves are stored as (base, radii...) per direction: t = 0 first.
        ts, which = [], []
        for j, rad in enumerate(group.radii):
            ts += [0.0, *rad]
            which += [j] * (len(rad) + 1)
        for j in range(len(group.refs)):
            ts += [0.0, group.ref_radius]
            which += [len(group.vectors) + j] * 2
        first = theta[group.support[0]]
        group.ts = torch.tensor(ts, dtype=first.dtype, device=first.device)
        group.which = torch.tensor(which, dtype=torch.long, device=first.device)
        group.base_theta = theta
    return list(groups.values())


def _default_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(free // 4, 1 << 28)
    return 1 << 26


def _forward_measuring(fmodel: FunctionalModel, batch) -> tuple[torch.Tensor, int]:
    """Forward at the base, also counting the elements of every leaf module's output."""
    count = [0]

    def hook(_module, _args, out):
        if isinstance(out, torch.Tensor):
            count[0] += out.numel()

    handles = [
        m.register_forward_hook(hook)
        for m in fmodel.module.modules()
        if next(m.children(), None) is None
    ]
    try:
        y = fmodel({}, batch)
    finally:
        for h in handles:
            h.remove()
    return y, count[0]


def _auto_chunk(group: _Group, y: torch.Tensor, budget: int, min_pairs: int) -> int:
    """Pairs per vmapped call so that one call's working set stays near ``budget`` bytes.

    Per pair: the batched parameter point and tangent, plus primal and tangent copies of
    the activations (measured once per group from leaf-module outputs; at least the
    output) and temporaries.
    """
    numel = sum(v[0].numel() for v in group.points.values())
    activations = max(group.activation_numel or 0, y.numel())
    per_pair = y.element_size() * (2 * numel + 4 * activations)
    return _chunk_for(per_pair, len(group.ts), budget, min_pairs)


# Fewer pairs per vmapped call than this pay functorch's per-op cost (tens of ms per call
# on the zoo's vit) more than they gain from a cache-sized working set.
MIN_CHUNK_PAIRS = 24
MAX_CHUNK_BYTES = 1 << 29


def _chunk_for(per_pair: int, n_pairs: int, budget: int, min_pairs: int = 0) -> int:
    """Pairs per vmapped call: ``budget // per_pair``, raised to ``min_pairs`` while a
    call's working set stays under ``MAX_CHUNK_BYTES``."""
    per_pair = max(per_pair, 1)
    chunk = max(budget // per_pair, min(min_pairs, MAX_CHUNK_BYTES // per_pair))
    return int(max(1, min(n_pairs, chunk)))


def _needs_rho(rate, options: ReadOptions) -> bool:
    """A straight ray leaves a curved orbit at second order, so only k̂ ≈ 2 can be a curved
    gauge; higher orders are genuine (METHOD §3)."""
    return (
        options.correctability
        and not rate.flat
        and math.isfinite(rate.order)
        and rate.order >= 1.5
        and abs(rate.order - 2.0) <= options.curved_gauge_band
    )


def _rhos(group, rates, g_ref, fmodel, lik, batch, eps_flat, options) -> dict[int, RhoFit]:
    """ρ fits of the group's directions that need one, by index; CGLS runs of directions
    over the same tensors vmapped together."""
    by_tensors: dict[tuple[str, ...], list[int]] = {}
    for j, rate in enumerate(rates):
        if _needs_rho(rate, options):
            by_tensors.setdefault(tuple(group.vectors[j]), []).append(j)
    out: dict[int, RhoFit] = {}
    for indices in by_tensors.values():
        values = rho_fits(
            fmodel,
            lik,
            batch,
            [group.vectors[j] for j in indices],
            g_ref=g_ref,
            eps_flat=eps_flat,
            rho_tiny=options.rho_stop,
            confirm_above=options.rho_gauge,
            rho_gauge=options.rho_gauge,
            support_fraction=options.support_fraction,
            min_constraints_ratio=options.min_constraints_ratio,
        )
        out.update(zip(indices, values, strict=True))
    return out


def _classify(
    d: Direction,
    radii,
    curve,
    g_ref: float,
    rate,
    fit: RhoFit | None,
    options: ReadOptions,
    dark: bool = False,
) -> Read:
    g_base = float(curve[0])
    g = np.asarray(curve[1:], dtype=float)
    magnitude = g_base / g_ref if g_ref > 0 else math.nan
    rho = fit.rho if fit is not None else math.nan
    support = fit.support_magnitude if fit is not None else math.nan
    # ρ presumes a ray tangent to an orbit (J u = 0). Against its own correction space a
    # tangent is dead: the same near-dead level as the two-regime read's, taken against the
    # largest g there instead of g_ref. A unit δ from its node death, read along its own
    # weights, is as live as its parameters allow (≥ 2e-3) and ρ ≈ 0 only because near the
    # locus the activation is linear: no gauge.
    tangent = not (math.isfinite(support) and support > options.rate.near_dead)
    correctable = math.isfinite(rho) and rho <= options.rho_gauge
    note = ""
    if rate.flat:
        kind, order, lam = "gauge", math.inf, 0.0
        note = (
            "flat: g ≡ 0 and every random reference in the same tensors is 0"
            if dark
            else "flat: g ≤ eps_flat·g_ref on the whole grid"
        )
    elif not math.isfinite(rate.order):
        kind, order, lam = "unresolved", math.nan, math.nan
        note = "no scaling window of minimum width"
    elif rate.order < 1.5:
        kind, order, lam = "regular", rate.order, 1.0 / (2.0 * rate.order)
        if magnitude < options.rate.dead_magnitude:
            note = "numerically dead, regular at this scale"
    elif fit is not None and fit.status not in ("solved", "no-departure"):
        kind, order, lam = "undetermined", math.nan, math.nan
        note = f"k̂ = {rate.order:.3g} on the ray, gauge or genuine undecided: {fit.detail}"
    elif correctable and tangent:
        kind, order, lam = "gauge", math.inf, 0.0
        note = "curved gauge: the ray's second-order departure is correctable"
    else:
        kind, order, lam = "singular", rate.order, 1.0 / (2.0 * rate.order)
        if correctable:  # but no tangent
            note = (
                f"not a curved gauge: ρ = {rho:.2g}, but u is not tangent to an orbit (its "
                f"g is {support:.2g} of the largest in its correction space > near_dead = "
                f"{options.rate.near_dead:g}): its parameters are nearly dead together, "
                "near a singular set (a unit near its node death)"
            )
    return Read(
        name=d.name,
        layer=d.layer,
        detector=d.detector,
        order=order,
        kind=kind,
        lam=lam,
        slope=rate.slope,
        spread=rate.spread,
        window=rate.window,
        magnitude=magnitude,
        correctability=rho,
        radii=np.asarray(radii, dtype=float),
        fisher=g,
        fisher_base=g_base,
        g_ref=g_ref,
        ray_order=rate.order,
        predicted_kind=d.predicted_kind,
        predicted_order=d.predicted_order,
        note=note,
        rho_status=fit.status if fit is not None else "",
        lower_slope=rate.lower_slope,
        upper_slope=rate.upper_slope,
        crossover=rate.crossover,
        support_magnitude=support,
    )


def _decide_near_flat_in_float64(model, inputs, directions, reads, device, options) -> list:
    """Re-read in float64 the low-precision reads within 100× of their flat threshold."""
    read_options = options.get("options") or ReadOptions()
    bits = torch.finfo(torch.float32).bits
    threshold = read_options.rate.eps_flat or default_eps_flat(bits)
    near = []
    for i, r in enumerate(reads):
        if not r.g_ref > 0:
            continue
        level = max(float(np.max(r.fisher)), r.fisher_base) / r.g_ref
        if threshold / 100 <= level <= threshold * 100:
            near.append(i)
    if not near:
        return reads
    exact = read_many(
        model, inputs, [directions[i] for i in near], device=device, dtype=torch.float64, **options
    )
    out = list(reads)
    for i, e in zip(near, exact, strict=True):
        level = max(float(np.max(reads[i].fisher)), reads[i].fisher_base) / reads[i].g_ref
        out[i] = replace(
            e,
            note=f"{e.note}; decided by float64 (float32 max g/g_ref = {level:.2g}, within "
            f"100× of its flat threshold {threshold:g})".lstrip("; "),
        )
    return out


@dataclass(frozen=True)
class SpotCheck:
    """Float64 re-read of a subset of directions read in a lower precision.

    ``indices``: which directions were re-read; ``max_order_diff``: largest |k̂₃₂ − k̂₆₄|
    over finite orders; ``kind_agreement``: fraction of re-read directions with equal kind.
    """

    dtype: str
    indices: tuple[int, ...]
    max_order_diff: float
    kind_agreement: float


def read_on_device(
    model: torch.nn.Module,
    inputs,
    directions: Sequence,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    spot_check: int = 4,
    tf32: bool = False,
    **options,
) -> tuple[list[Read], SpotCheck | None, str, str]:
    """Read on the best device: CUDA in float32 (checked), else CPU in float64.

    ``device=None`` picks CUDA when available. In float32, ``spot_check`` directions
    (evenly spaced) are re-read in float64 and the disagreement is returned, so a store
    can record it. float32 cannot decide near its flat threshold (METHOD §3 rule 6): a
    direction whose largest ``g / g_ref`` on the grid is within 100× of it (either side)
    is re-read in float64, and that read replaces its float32 one (its note says so).
    Returns ``(reads, spot check or None, device name, dtype name)``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cuda" else torch.float64
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        reads = read_many(model, inputs, directions, device=device, dtype=dtype, **options)
        if dtype != torch.float64 and directions:
            reads = _decide_near_flat_in_float64(model, inputs, directions, reads, device, options)
        check = None
        if dtype != torch.float64 and spot_check > 0 and directions:
            n = len(directions)
            picks = tuple(
                sorted(
                    {round(i * (n - 1) / max(spot_check - 1, 1)) for i in range(min(spot_check, n))}
                )
            )
            exact = read_many(
                model,
                inputs,
                [directions[i] for i in picks],
                device=device,
                dtype=torch.float64,
                **options,
            )
            diffs = [
                abs(reads[i].order - e.order)
                for i, e in zip(picks, exact, strict=True)
                if math.isfinite(reads[i].order) and math.isfinite(e.order)
            ]
            same = sum(reads[i].kind == e.kind for i, e in zip(picks, exact, strict=True))
            check = SpotCheck(
                dtype=str(dtype).replace("torch.", ""),
                indices=picks,
                max_order_diff=max(diffs) if diffs else 0.0,
                kind_agreement=same / len(picks),
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    label = str(dtype).replace("torch.", "") + ("+tf32" if tf32 and dtype == torch.float32 else "")
    return reads, check, str(device), label
