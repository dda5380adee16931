# Helpers shared by the rules: paths, config checks beyond the schema, the target list.
# Plain Python only: the package (and torch) is imported by the jobs, never here.
# Every value that reaches a shell command is quoted by the rules ({params.x:q}, given
# as a list of arguments) and restricted by the schema (workflow/schemas/config.schema.yaml).
import importlib.util
import json
import math
import sys
from pathlib import Path

# Checkpoint layouts of declared families (the package's standard-library module, loaded by
# path: importing the package would import torch whenever the workflow is parsed). Where the
# installed package is (find_spec of a top-level package does not import it), else the
# checkout beside this workflow.
_package = importlib.util.find_spec("dead_directions")
_LAYOUT_FILE = (
    Path(_package.submodule_search_locations[0]) / "io" / "layout.py"
    if _package and _package.submodule_search_locations
    else Path(workflow.basedir) / "src" / "dead_directions" / "io" / "layout.py"
)
_spec = importlib.util.spec_from_file_location("dead_directions_layout", _LAYOUT_FILE)
layout_module = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = layout_module  # dataclasses look their module up there
_spec.loader.exec_module(layout_module)

RESULTS = config["results"]
STORE = config["store"] or f"{RESULTS}/store.zarr"
# Completion markers of measured cells live in the store's ledger (dead_directions.io.store).
DONE = f"{STORE}.ledger/done"
# Markers of checkpoints read whole (`unit: checkpoint`), in the ledger too.
CHECKPOINT_DONE = f"{STORE}.ledger/checkpoints"
STORE_READY = f"{RESULTS}/store.init.json"
SUMMARY = f"{RESULTS}/summary/cells.csv"
MISSING_TABLE = f"{RESULTS}/tables/missing.csv"
# Counts rebuilds of a deleted or replaced store (guards.smk).
GENERATION = f"{RESULTS}/.store-generation"
FAMILIES = config["families"]
# The tables (one per metric) and figures the package writes, named once in the package's
# data/outputs.json (read here by path, beside layout.py).
OUTPUTS = json.loads((_LAYOUT_FILE.parents[1] / "data" / "outputs.json").read_text())
METRICS = list(OUTPUTS["metrics"])
FIGURES = list(OUTPUTS["figures"])
PRUNE_FIGURE = next(iter(OUTPUTS["prune_figure"]))
CELL = "{family}/{size}/step{step}/{layer}"


# `prune` is not a family: results/tables/prune/ holds the prune tables beside the
# families' table folders (the schema refuses a family of that name).
wildcard_constraints:
    family=r"(?!prune$)[A-Za-z0-9_-]+",
    size=r"[A-Za-z0-9_.-]+",
    step=r"\d{7}",
    layer=r"[A-Za-z0-9_.-]+",


def _fail(key, message):
    raise ValueError(f"config: {key}: {message}")


def is_declared(family):
    """Whether the family is declared in the config (its own builder), not a zoo family."""
    return "builder" in FAMILIES[family]


def check_declared(name, spec):
    """A declared family's layout and probe file; returns its checkpoint layout."""
    try:
        lay = layout_module.parse_layout(spec.get("checkpoints"))
    except layout_module.LayoutError as err:
        _fail(f"families.{name}.{err.key}", err.message)
    probe = spec.get("probe", {}).get("path")
    if not probe:
        _fail(
            f"families.{name}.probe.path",
            "required: the probe data of a declared family",
        )
    if not Path(probe).expanduser().exists():
        _fail(f"families.{name}.probe.path", f"{probe} does not exist")
    tokenizer = spec.get("probe", {}).get("tokenizer")
    if tokenizer and not Path(tokenizer).expanduser().exists():
        _fail(f"families.{name}.probe.tokenizer", f"{tokenizer} does not exist")
    return lay


def check_families():
    """Checks the schema cannot express: read steps among the saved ones, one source, the
    rate-curve checkpoint among the swept ones, declared families' layouts and probes.
    """
    for name, spec in FAMILIES.items():
        if is_declared(name):
            LAYOUTS[name] = check_declared(name, spec)
            continue
        if not spec.get("steps"):
            _fail(f"families.{name}.steps", "required for a zoo family")
        chosen = spec.get("rate_curves")
        if chosen:
            size, _, step = chosen.rpartition(":")
            if size not in spec["sizes"] or int(step) not in spec["steps"]:
                _fail(
                    f"families.{name}.rate_curves",
                    f"{chosen} is not a swept checkpoint: use SIZE:STEP with SIZE in "
                    f"{spec['sizes']} and STEP in {spec['steps']}",
                )
        external = spec.get("checkpoints")
        if external:
            for size in spec["sizes"]:
                given = {str(k) for k in external.get(size, {})}
                for step in spec["steps"]:
                    if str(step) not in given:
                        _fail(
                            f"families.{name}.checkpoints.{size}",
                            f"no checkpoint for step {step}",
                        )
            continue
        save = spec.get("train", {}).get("save")
        if not save:
            _fail(
                f"families.{name}.train.save",
                "required: the steps the training run saves",
            )
        missing = sorted(set(spec["steps"]) - set(save))
        if missing:
            _fail(
                f"families.{name}.steps",
                f"steps {missing} are not saved by training (families.{name}.train.save)",
            )


def config_radii():
    """The store's unit radius grid the config asks for (as `dead-directions init-store`)."""
    lay = config["store_layout"]
    r_min, r_max, n = lay["r_min"], lay["r_max"], lay["n_radii"]
    if not r_min < r_max:
        _fail(
            "store_layout.r_min",
            f"{r_min} must be below store_layout.r_max = {r_max}",
        )
    lo, hi = math.log10(r_min), math.log10(r_max)
    return [10 ** (lo + (hi - lo) * i / (n - 1)) for i in range(n)]


LAYOUTS = {}
check_families()
RADII = config_radii()


def _steps():
    """(family, size) → the steps read; and the checkpoints listed but not on disk or not
    readable (with the reason), which the sweep reports and skips."""
    present, missing = {}, []
    for family, spec in FAMILIES.items():
        for size in spec["sizes"]:
            if not is_declared(family):
                present[family, size] = list(spec["steps"])
                continue
            lay = LAYOUTS[family]
            on_disk = lay.steps_on_disk(size)
            wanted = spec.get("steps") or on_disk
            present[family, size] = []
            for s in wanted:
                path = lay.path(size, s)
                why = (
                    "not on disk"
                    if s not in on_disk
                    else layout_module.unreadable(path)
                )
                if why is None:
                    present[family, size].append(s)
                else:
                    missing.append(
                        {
                            "family": family,
                            "size": size,
                            "step": s,
                            "path": str(path),
                            "reason": why,
                        }
                    )
    return present, missing


# Steps whose checkpoints exist and look readable (declared families: found on disk when
# the workflow is parsed, so a checkpoint that appears or is repaired later is read by the
# next run) and those missing or unreadable.
STEPS, MISSING = _steps()


def pad(step):
    return f"{int(step):07d}"


def is_external(family):
    return bool(FAMILIES[family].get("checkpoints"))


def manifest(wildcards):
    """The checkpoint manifest of a (family, size) (the train rule's output). A declared
    family's is ancient: its cells follow the checkpoints on disk (found when the workflow
    is parsed), and a rewritten manifest must rerun no cell already read."""
    path = f"{RESULTS}/checkpoints/{wildcards.family}/{wildcards.size}/manifest.json"
    return ancient(path) if is_declared(wildcards.family) else path


def checkpoint_path(wildcards):
    """The checkpoint file of a cell (read by the job, not an input: a missing file fails
    that job with its name, instead of the whole DAG)."""
    family, size, step = wildcards.family, wildcards.size, int(wildcards.step)
    if is_declared(family):
        return str(LAYOUTS[family].path(size, step))
    if is_external(family):
        given = {str(k): v for k, v in FAMILIES[family]["checkpoints"][size].items()}
        return given[str(step)]
    return f"{RESULTS}/checkpoints/{family}/{size}/step{pad(step)}.safetensors"


def layers_of(family, size):
    """The layers of a (family, size), from the `layers` checkpoint rule's output."""
    path = checkpoints.layers.get(family=family, size=size).output[0]
    return json.loads(Path(path).read_text())


def cells():
    """Every (family, size, step, layer) cell of the config."""
    for family, spec in FAMILIES.items():
        for size in spec["sizes"]:
            if not STEPS[family, size]:
                continue  # no checkpoint of this size yet
            for layer in layers_of(family, size):
                for step in STEPS[family, size]:
                    yield family, size, pad(step), layer


def markers(wildcards):
    """What the aggregation waits for: one marker per cell (`unit: layer`, a detect and a
    measure job per layer), or per checkpoint (`unit: checkpoint`, one job per checkpoint
    reading all its layers)."""
    if config["unit"] == "checkpoint":
        return [
            f"{CHECKPOINT_DONE}/{family}/{size}/step{pad(step)}.json"
            for (family, size), steps in STEPS.items()
            for step in steps
        ]
    return [
        f"{DONE}/{family}/{size}/step{step}/{layer}.json"
        for family, size, step, layer in cells()
    ]


def detector_args(wildcards):
    """`--detectors …` and `--max-per-layer N`, as separate (quoted) arguments."""
    spec = FAMILIES[wildcards.family]
    out = []
    chosen = spec.get("detectors")
    if isinstance(chosen, dict):  # per layer type: Linear=dead_unit,kfac ...
        out.append("--detectors")
        out += [f"{kind}={','.join(names)}" for kind, names in chosen.items()]
    elif chosen:
        out += ["--detectors", *chosen]
    if spec.get("max_per_layer"):
        out += ["--max-per-layer", str(spec["max_per_layer"])]
    return out


def layer_args(wildcards):
    """`--only PATTERN …` (zoo families), or a declared family's spec and the checkpoint
    its model is read from (the first one of the size)."""
    family, size = wildcards.family, wildcards.size
    if is_declared(family):
        step = STEPS[family, size][0]
        path = str(LAYOUTS[family].path(size, step))
        return [*spec_args(wildcards), "--checkpoint", path]
    layers = FAMILIES[family].get("layers", "auto")
    return [] if layers == "auto" else ["--only", *layers]


def spec_args(wildcards):
    """`--spec JSON` of a declared family (its config entry), none for a zoo family."""
    if not is_declared(wildcards.family):
        return []
    return ["--spec", json.dumps(FAMILIES[wildcards.family], sort_keys=True)]


def probe_source_args(wildcards):
    """A declared family's spec, and for a text probe the first checkpoint folder (its
    tokenizer) unless `probe.tokenizer` names one."""
    family = wildcards.family
    if not is_declared(family):
        return []
    args = spec_args(wildcards)
    first = [
        (size, s) for (f, size), steps in STEPS.items() if f == family for s in steps
    ]
    if first and not FAMILIES[family].get("probe", {}).get("tokenizer"):
        args += ["--tokenizer-from", str(LAYOUTS[family].path(*first[0]))]
    return args


def probe_args(wildcards):
    n = FAMILIES[wildcards.family].get("probe", {}).get("n")
    return ["--n", str(n)] if n else []


def train_args(wildcards):
    """`--save …` for the zoo, or `--external STEP=PATH …` for checkpoints the user brings."""
    spec = FAMILIES[wildcards.family]
    if is_declared(wildcards.family):
        # the steps on disk when the job runs (not those seen at parse time: a parameter
        # that changed with every new checkpoint would rerun this job each time)
        listed = [str(s) for s in spec.get("steps", [])]
        return [*spec_args(wildcards), *(["--save", *listed] if listed else [])]
    if is_external(wildcards.family):
        given = spec["checkpoints"][wildcards.size]
        pairs = sorted(given.items(), key=lambda kv: int(kv[0]))
        return ["--external", *(f"{k}={v}" for k, v in pairs)]
    train = spec["train"]
    args = ["--save", *(str(s) for s in sorted(train["save"]))]
    args += ["--seed", str(train.get("seed", 0))]
    return args + (["--tiny"] if train.get("tiny") else [])


def dask_spec(wildcards):
    """The `dask:` mapping of the config as JSON (one argument of `--dask`)."""
    return json.dumps(config.get("dask", {}), sort_keys=True)


def rate_curves_args(wildcards):
    chosen = FAMILIES[wildcards.family].get("rate_curves")
    return ["--checkpoint", chosen] if chosen else []


def tables(family):
    csv = [f"{RESULTS}/tables/{family}/{metric}.csv" for metric in METRICS]
    return [f"{RESULTS}/tables/{family}.md", *csv]


def figures(family):
    return [f"{RESULTS}/figures/{family}/{name}.png" for name in FIGURES]


def all_tables(wildcards):
    return [path for family in FAMILIES for path in tables(family)]


def all_figures(wildcards):
    return [path for family in FAMILIES for path in figures(family)]


def root_of(wildcards, output):
    """The checkpoint root of a manifest ``{root}/{family}/{size}/manifest.json``."""
    return str(Path(output[0]).parents[2])


def store_of(wildcards, output):
    """The store of a cell marker ``{store}.ledger/done/…``."""
    return output[0].split(".ledger/done/")[0]


def store_of_checkpoint(wildcards, output):
    """The store of a checkpoint marker ``{store}.ledger/checkpoints/…``."""
    return output.marker.split(".ledger/checkpoints/")[0]


def folder_of(wildcards, output):
    """The folder a rule's first output lies in."""
    return str(Path(output[0]).parent)


def figure_args(wildcards):
    return [f"{family}={RESULTS}/figures/{family}" for family in FAMILIES]


def layer_lists(wildcards):
    """The layers file of every (family, size): targets themselves, so that a new size's
    checkpoint runs even when the tables downstream already exist (Snakemake does not
    re-check a finished job whose inputs wait on an unfinished checkpoint)."""
    return [
        f"{RESULTS}/layers/{family}/{size}.json"
        for family, spec in FAMILIES.items()
        for size in spec["sizes"]
        if STEPS[family, size]
    ]


def missing_records(wildcards):
    """The checkpoints listed in the config but not on disk, as JSON."""
    return json.dumps(MISSING)


def final_targets(wildcards):
    return [
        *layer_lists(wildcards),
        *all_tables(wildcards),
        *all_figures(wildcards),
        f"{RESULTS}/report.md",
        f"{RESULTS}/report.html",
        MISSING_TABLE,
    ]
