# Helpers of the prune rules (workflow/rules/prune.smk): paths, targets, command options.
PRUNE = config["prune"]


def prune_records(family):
    """The removable records of a family: one file per size, all its steps."""
    return [
        f"{RESULTS}/prune/{family}/{size}.json" for size in FAMILIES[family]["sizes"]
    ]


def prune_checkpoints(wildcards):
    """`STEP=PATH` of every configured step of a (family, size): one job prunes them all
    (the imports cost more than pruning a small model)."""
    from types import SimpleNamespace

    items = []
    for step in sorted(FAMILIES[wildcards.family]["steps"]):
        cell = SimpleNamespace(
            family=wildcards.family, size=wildcards.size, step=pad(step)
        )
        items.append(f"{step}={checkpoint_path(cell)}")
    return items


def prune_outputs(family):
    return [
        f"{RESULTS}/tables/prune/{family}.csv",
        f"{RESULTS}/tables/prune/{family}.md",
        f"{RESULTS}/figures/{family}/{PRUNE_FIGURE}.png",
    ]


def prune_table_inputs(wildcards):
    return prune_records(wildcards.family)


def all_prune(wildcards):
    """The prune tables and figures of every family (none when `prune.enabled` is false)."""
    if not PRUNE["enabled"]:
        return []
    # declared families bring their own architectures: the surgery knows the zoo's
    return [
        path
        for family in FAMILIES
        if not is_declared(family)
        for path in prune_outputs(family)
    ]


def report_prune_args(wildcards):
    """The report's `--prune-table FAMILY=CSV` and `--prune-figure FAMILY=PNG` options."""
    if not PRUNE["enabled"]:
        return []
    families = [family for family in FAMILIES if not is_declared(family)]
    if not families:
        return []
    tables = [f"{family}={prune_outputs(family)[0]}" for family in families]
    pngs = [f"{family}={prune_outputs(family)[2]}" for family in families]
    return ["--prune-table", *tables, "--prune-figure", *pngs]


def prune_args(wildcards):
    args = ["--probe", str(PRUNE["probe"]), "--tolerance", str(PRUNE["tolerance"])]
    args += ["--metric-tolerance", str(PRUNE["metric_tolerance"])]
    if PRUNE.get("score_tol") is not None:
        args += ["--score-tol", str(PRUNE["score_tol"])]
    return args
