# Prune: the removable fraction of parameters per layer of every (family, size, step)
# checkpoint (read-confirmed node deaths removed, duplicate units merged, verified on held-out
# data; one job per (family, size) over its steps), then per family a table across training
# time (rows) and scale (columns) and a figure.
# Helpers (paths, targets, options): workflow/rules/prune_common.smk.


rule removable:
    input:
        manifest=manifest,
    output:
        f"{RESULTS}/prune/{{family}}/{{size}}.json",
    log:
        "logs/removable/{family}/{size}.log",
    benchmark:
        "benchmarks/out/removable/{family}/{size}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: config["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        checkpoints=prune_checkpoints,
        options=prune_args,
        seed=config["seed"],
    shell:
        "dead-directions removable {params.checkpoints:q} --family {wildcards.family:q} "
        "--size {wildcards.size:q} {params.options:q} --seed {params.seed:q} "
        "--threads {threads:q} --out {output:q} > {log:q} 2>&1"


rule prune_tables:
    input:
        prune_table_inputs,
    output:
        csv=f"{RESULTS}/tables/prune/{{family}}.csv",
        markdown=f"{RESULTS}/tables/prune/{{family}}.md",
        figure=f"{RESULTS}/figures/{{family}}/{PRUNE_FIGURE}.png",
    log:
        "logs/prune_tables/{family}.log",
    benchmark:
        "benchmarks/out/prune_tables/{family}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "dead-directions prune-tables {input:q} --family {wildcards.family:q} "
        "--csv {output.csv:q} --markdown {output.markdown:q} --figure {output.figure:q} "
        "> {log:q} 2>&1"
