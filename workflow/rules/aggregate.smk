# Aggregate the store with dask, then tables across training time (rows) and scale (columns).


rule aggregate:
    input:
        markers,
    output:
        SUMMARY,
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/out/aggregate.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: config["dask"]["n_workers"]
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        store=STORE,
        generation=store_generation(),
        dask=dask_spec,
        base_tol=config["base_tol"],
    shell:
        "dead-directions aggregate --store {params.store:q} --dask {params.dask:q} "
        "--base-tol {params.base_tol:q} --out {output:q} > {log:q} 2>&1"


rule tables:
    input:
        SUMMARY,
    output:
        markdown=f"{RESULTS}/tables/{{family}}.md",
        csv=expand(f"{RESULTS}/tables/{{{{family}}}}/{{metric}}.csv", metric=METRICS),
    log:
        "logs/tables/{family}.log",
    benchmark:
        "benchmarks/out/tables/{family}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        csv=lambda w, output: [f"{m}={path}" for m, path in zip(METRICS, output.csv)],
    shell:
        "dead-directions tables --summary {input:q} --family {wildcards.family:q} "
        "--markdown {output.markdown:q} --csv {params.csv:q} > {log:q} 2>&1"


rule missing:
    output:
        MISSING_TABLE,
    log:
        "logs/missing.log",
    benchmark:
        "benchmarks/out/missing.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        records=missing_records,
    shell:
        "dead-directions missing --records {params.records:q} --out {output:q} > {log:q} 2>&1"
