# Helpers of the prune rules (workflow/rules/prune.smk): paths, targets, command options.
PRUNE = config["prune"]


def prune_records(family):
    spec = FAMILIES[family]
    return [
        f"{RESULTS}/prune/{family}/{size}/step{pad(step)}.json"
        for size in spec["sizes"]
        for step in spec["steps"]
    ]


def prune_outputs(family):
    return [
        f"{RESULTS}/tables/prune/{family}.csv",
        f"{RESULTS}/tables/prune/{family}.md",
        f"{RESULTS}/figures/{family}/prune_removable.png",
    ]


def prune_table_inputs(wildcards):
    return prune_records(wildcards.family)


def all_prune(wildcards):
    """The prune tables and figures of every family (none when `prune.enabled` is false)."""
    if not PRUNE["enabled"]:
        return []
    return [path for family in FAMILIES for path in prune_outputs(family)]


def prune_args(wildcards):
    args = f"--probe {PRUNE['probe']} --tolerance {PRUNE['tolerance']} "
    args += f"--metric-tolerance {PRUNE['metric_tolerance']}"
    if PRUNE.get("score_tol") is not None:
        args += f" --score-tol {PRUNE['score_tol']}"
    return args
