# Figures per family (wrapped for `snakemake --report`), and the sweep report.


rule figures:
    input:
        summary=SUMMARY,
    output:
        dead=report(
            f"{RESULTS}/figures/{{family}}/dead_dimension.png",
            caption="../report/dead_dimension.rst",
            category="Figures",
            subcategory="{family}",
        ),
        heatmap=report(
            f"{RESULTS}/figures/{{family}}/order_heatmap.png",
            caption="../report/order_heatmap.rst",
            category="Figures",
            subcategory="{family}",
        ),
        counts=report(
            f"{RESULTS}/figures/{{family}}/direction_counts.png",
            caption="../report/direction_counts.rst",
            category="Figures",
            subcategory="{family}",
        ),
        curves=report(
            f"{RESULTS}/figures/{{family}}/rate_curves.png",
            caption="../report/rate_curves.rst",
            category="Figures",
            subcategory="{family}",
        ),
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
        out_dir=f"{RESULTS}/figures/{{family}}",
    shell:
        "dead-directions figures --summary {input.summary:q} --store {params.store:q} "
        "--family {wildcards.family:q} {params.checkpoint:q} --out-dir {params.out_dir:q} "
        "> {log:q} 2>&1"


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
    shell:
        "dead-directions report --summary {input.summary:q} --figures {params.figures:q} "
        "--store {params.store:q} --missing {input.missing:q} --out {output.markdown:q} > {log:q} 2>&1"
