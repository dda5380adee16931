# Figures per family, and the sweep report.


rule figures:
    input:
        summary=SUMMARY,
    output:
        expand(f"{RESULTS}/figures/{{{{family}}}}/{{name}}.png", name=FIGURES),
    log:
        "logs/figures/{family}.log",
    benchmark:
        "benchmarks/out/figures/{family}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        store=STORE,
        checkpoint=rate_curves_args,
        figures=lambda w, output: [f"{n}={path}" for n, path in zip(FIGURES, output)],
    shell:
        "dead-directions figures --summary {input.summary:q} --store {params.store:q} "
        "--family {wildcards.family:q} {params.checkpoint:q} --figure {params.figures:q} "
        "> {log:q} 2>&1"


# The sweep's report (one report system: dead-directions report; `snakemake --report`
# wraps this page).
rule report:
    input:
        summary=SUMMARY,
        tables=all_tables,
        figures=all_figures,
        prune=all_prune,
        missing=MISSING_TABLE,
    output:
        markdown=f"{RESULTS}/report.md",
        html=report(
            f"{RESULTS}/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/out/report.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        figures=figure_args,
        store=STORE,
        prune=report_prune_args,
    shell:
        "dead-directions report --summary {input.summary:q} --figures {params.figures:q} "
        "--store {params.store:q} --missing {input.missing:q} {params.prune:q} "
        "--out {output.markdown:q} --html {output.html:q} > {log:q} 2>&1"
