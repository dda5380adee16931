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
        seed=config["seed"],
        limit=config["store_layout"]["max_directions"],
    shell:
        "dead-directions detect --family {wildcards.family} --size {wildcards.size} "
        "--step {wildcards.step} --layer {wildcards.layer} --checkpoint {params.checkpoint} "
        "--probe {input.probe} {params.detectors} --seed {params.seed} "
        "--limit {params.limit} --threads {threads} --out {output} > {log} 2>&1"
