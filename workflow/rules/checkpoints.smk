# Checkpoints: train a zoo family at one size (saving the configured steps), or register
# checkpoints the user brings; either way a manifest per (family, size).


rule train:
    output:
        f"{RESULTS}/checkpoints/{{family}}/{{size}}/manifest.json",
    log:
        "logs/train/{family}/{size}.log",
    benchmark:
        "benchmarks/out/train/{family}/{size}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: config["threads"]
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        root=root_of,
        schedule=train_args,
    shell:
        "dead-directions manifest --family {wildcards.family:q} --size {wildcards.size:q} "
        "{params.schedule:q} --root {params.root:q} --threads {threads:q} "
        "--manifest {output:q} > {log:q} 2>&1"
