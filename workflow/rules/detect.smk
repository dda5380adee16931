# Detect: the detectors' candidate dead directions in one layer of one checkpoint.


rule detect:
    input:
        manifest=manifest,
        probe=f"{RESULTS}/probe/{{family}}.safetensors",
    output:
        f"{RESULTS}/directions/{CELL}.safetensors",
    log:
        f"logs/detect/{CELL}.log",
    benchmark:
        f"benchmarks/out/detect/{CELL}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: config["threads"]
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        checkpoint=checkpoint_path,
        detectors=detector_args,
        spec=spec_args,
        seed=config["seed"],
        limit=config["store_layout"]["max_directions"],
    shell:
        "dead-directions detect --family {wildcards.family:q} --size {wildcards.size:q} "
        "--step {wildcards.step:q} --layer {wildcards.layer:q} --checkpoint {params.checkpoint:q} "
        "--probe {input.probe:q} {params.detectors:q} {params.spec:q} --seed {params.seed:q} "
        "--limit {params.limit:q} --threads {threads:q} --out {output:q} > {log:q} 2>&1"
