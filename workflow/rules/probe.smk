# Probe data per family, and the layers each (family, size) fans out over.


rule probe:
    output:
        f"{RESULTS}/probe/{{family}}.safetensors",
    log:
        "logs/probe/{family}.log",
    benchmark:
        "benchmarks/out/probe/{family}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        n=probe_args,
        source=probe_source_args,
        seed=config["seed"],
    shell:
        "dead-directions probe --family {wildcards.family:q} {params.n:q} {params.source:q} "
        "--seed {params.seed:q} "
        "--out {output:q} > {log:q} 2>&1"


checkpoint layers:
    output:
        f"{RESULTS}/layers/{{family}}/{{size}}.json",
    log:
        "logs/layers/{family}/{size}.log",
    benchmark:
        "benchmarks/out/layers/{family}/{size}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        only=layer_args,
    shell:
        "dead-directions layers --family {wildcards.family:q} --size {wildcards.size:q} "
        "{params.only:q} --threads {threads:q} --out {output:q} > {log:q} 2>&1"
