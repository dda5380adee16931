# Helpers shared by the rules: paths, config checks beyond the schema, the target list.
# Plain Python only: the package (and torch) is imported by the jobs, never here.
import json
from pathlib import Path

RESULTS = config["results"]
STORE = config["store"] or f"{RESULTS}/store.zarr"
# Completion markers of measured cells live in the store's ledger (dead_directions.store).
DONE = f"{STORE}.ledger/done"
STORE_READY = f"{RESULTS}/store.init.json"
FAMILIES = config["families"]
# Keep in step with dead_directions.aggregate.METRICS (tests/test_workflow.py checks it).
METRICS = [
    "n_dead",
    "n_singular",
    "n_gauge",
    "n_regular",
    "n_undetermined",
    "n_unresolved",
    "order_median",
    "order_q25",
    "order_q75",
    "order_min",
    "order_max",
    "recovery",
    "lam_sum",
]
FIGURES = ["order_heatmap", "counts_lambda", "rate_curves"]
CELL = "{family}/{size}/step{step}/{layer}"


wildcard_constraints:
    family=r"[A-Za-z0-9_-]+",
    size=r"[A-Za-z0-9_.-]+",
    step=r"\d{7}",
    layer=r"[A-Za-z0-9_.-]+",


def _fail(key, message):
    raise ValueError(f"config: {key}: {message}")


def check_families():
    """Checks the schema cannot express: read steps among the saved ones, one source."""
    for name, spec in FAMILIES.items():
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


check_families()


def pad(step):
    return f"{int(step):07d}"


def is_external(family):
    return bool(FAMILIES[family].get("checkpoints"))


def manifest(wildcards):
    """The checkpoint manifest of a (family, size) (the train rule's output)."""
    return f"{RESULTS}/checkpoints/{wildcards.family}/{wildcards.size}/manifest.json"


def checkpoint_path(wildcards):
    """The checkpoint file of a cell (read by the job, not an input: a missing file fails
    that job with its name, instead of the whole DAG)."""
    family, size, step = wildcards.family, wildcards.size, int(wildcards.step)
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
            for layer in layers_of(family, size):
                for step in spec["steps"]:
                    yield family, size, pad(step), layer


def markers(wildcards):
    return [
        f"{DONE}/{family}/{size}/step{step}/{layer}.json"
        for family, size, step, layer in cells()
    ]


def detector_args(wildcards):
    spec = FAMILIES[wildcards.family]
    out = []
    chosen = spec.get("detectors")
    if isinstance(chosen, dict):  # per layer type: Linear=dead_unit,kfac ...
        out.append(
            "--detectors "
            + " ".join(f"{kind}={','.join(names)}" for kind, names in chosen.items())
        )
    elif chosen:
        out.append("--detectors " + " ".join(chosen))
    if spec.get("max_per_layer"):
        out.append(f"--max-per-layer {spec['max_per_layer']}")
    return " ".join(out)


def layer_args(wildcards):
    layers = FAMILIES[wildcards.family].get("layers", "auto")
    return "" if layers == "auto" else "--only " + " ".join(layers)


def probe_args(wildcards):
    n = FAMILIES[wildcards.family].get("probe", {}).get("n")
    return f"--n {n}" if n else ""


def train_args(wildcards):
    """`--save …` for the zoo, or `--external STEP=PATH …` for checkpoints the user brings."""
    spec = FAMILIES[wildcards.family]
    if is_external(wildcards.family):
        given = spec["checkpoints"][wildcards.size]
        pairs = sorted(given.items(), key=lambda kv: int(kv[0]))
        return "--external " + " ".join(f"{k}={v}" for k, v in pairs)
    train = spec["train"]
    args = "--save " + " ".join(str(s) for s in sorted(train["save"]))
    args += f" --seed {train.get('seed', 0)}"
    return args + (" --tiny" if train.get("tiny") else "")


def dask_args(wildcards):
    """`--dask JSON`: where the aggregate job's dask graph runs (`dask:` of the config)."""
    return f"--dask '{json.dumps(config.get('dask', {}), sort_keys=True)}'"


def rate_curves_args(wildcards):
    chosen = FAMILIES[wildcards.family].get("rate_curves")
    return f"--checkpoint {chosen}" if chosen else ""


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


def folder_of(wildcards, output):
    """The folder a rule's first output lies in."""
    return str(Path(output[0]).parent)


def figure_args(wildcards):
    return " ".join(f"{family}={RESULTS}/figures/{family}" for family in FAMILIES)


def layer_lists(wildcards):
    """The layers file of every (family, size): targets themselves, so that a new size's
    checkpoint runs even when the tables downstream already exist (Snakemake does not
    re-check a finished job whose inputs wait on an unfinished checkpoint)."""
    return [
        f"{RESULTS}/layers/{family}/{size}.json"
        for family, spec in FAMILIES.items()
        for size in spec["sizes"]
    ]


def final_targets(wildcards):
    return [
        *layer_lists(wildcards),
        *all_tables(wildcards),
        *all_figures(wildcards),
        f"{RESULTS}/report.md",
        f"{RESULTS}/report.html",
    ]
