# The store, and measure: read one cell's directions and write its chunks and marker.


rule init_store:
    output:
        STORE_READY,
    log:
        "logs/init_store.log",
    benchmark:
        "benchmarks/out/init_store.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        store=STORE,
        max_directions=config["store_layout"]["max_directions"],
        n_radii=config["store_layout"]["n_radii"],
        r_min=config["store_layout"]["r_min"],
        r_max=config["store_layout"]["r_max"],
    shell:
        "dead-directions init-store --store {params.store} "
        "--max-directions {params.max_directions} --n-radii {params.n_radii} "
        "--r-min {params.r_min} --r-max {params.r_max} --marker {output} > {log} 2>&1"


rule measure:
    input:
        manifest=manifest,
        probe=f"{RESULTS}/probe/{{family}}.safetensors",
        directions=f"{RESULTS}/directions/{CELL}.safetensors",
        store=STORE_READY,
    output:
        f"{DONE}/{CELL}.json",
    log:
        f"logs/measure/{CELL}.log",
    benchmark:
        f"benchmarks/out/measure/{CELL}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        checkpoint=checkpoint_path,
        store=store_of,
        device=config["device"],
        dtype=config["dtype"],
        seed=config["seed"],
    shell:
        "dead-directions measure --family {wildcards.family} --size {wildcards.size} "
        "--step {wildcards.step} --layer {wildcards.layer} --checkpoint {params.checkpoint} "
        "--probe {input.probe} --directions {input.directions} --store {params.store} "
        "--device {params.device} --dtype {params.dtype} --seed {params.seed} "
        "--threads {threads} > {log} 2>&1"
