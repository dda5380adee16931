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
        generation=store_generation(),
        max_directions=config["store_layout"]["max_directions"],
        n_radii=config["store_layout"]["n_radii"],
        r_min=config["store_layout"]["r_min"],
        r_max=config["store_layout"]["r_max"],
    shell:
        "dead-directions init-store --store {params.store:q} "
        "--max-directions {params.max_directions:q} --n-radii {params.n_radii:q} "
        "--r-min {params.r_min:q} --r-max {params.r_max:q} --marker {output:q} > {log:q} 2>&1"


rule measure:
    input:
        manifest=manifest,
        probe=f"{RESULTS}/probe/{{family}}.safetensors",
        directions=f"{RESULTS}/directions/{CELL}.safetensors",
        # ancient: a rewritten init marker (same store) must not rerun measured cells; a
        # deleted or replaced store is caught before the DAG (common.smk) and rebuilt
        store=ancient(STORE_READY),
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
        spec=spec_args,
        device=config["device"],
        dtype=config["dtype"],
        seed=config["seed"],
    shell:
        "dead-directions measure --family {wildcards.family:q} --size {wildcards.size:q} "
        "--step {wildcards.step:q} --layer {wildcards.layer:q} --checkpoint {params.checkpoint:q} "
        "--probe {input.probe:q} --directions {input.directions:q} --store {params.store:q} "
        "--device {params.device:q} --dtype {params.dtype:q} --seed {params.seed:q} "
        "--threads {threads:q} {params.spec:q} > {log:q} 2>&1"


# The per-checkpoint unit of work (config `unit: checkpoint`): one job per checkpoint loads
# the model and probe once and reads every layer, writing one store cell per layer as
# detect + measure do; its marker lies in the store's ledger (rebuilt with the store).
rule measure_checkpoint:
    input:
        manifest=manifest,
        probe=f"{RESULTS}/probe/{{family}}.safetensors",
        layers=f"{RESULTS}/layers/{{family}}/{{size}}.json",
        store=ancient(STORE_READY),
    output:
        directions=directory(
            f"{RESULTS}/directions-by-checkpoint/{{family}}/{{size}}/step{{step}}"
        ),
        marker=f"{CHECKPOINT_DONE}/{{family}}/{{size}}/step{{step}}.json",
    log:
        "logs/measure_checkpoint/{family}/{size}/step{step}.log",
    benchmark:
        "benchmarks/out/measure_checkpoint/{family}/{size}/step{step}.tsv"
    conda:
        "../envs/dead-directions.yaml"
    threads: config["threads"]
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        checkpoint=checkpoint_path,
        store=store_of_checkpoint,
        detectors=detector_args,
        spec=spec_args,
        device=config["device"],
        dtype=config["dtype"],
        seed=config["seed"],
    shell:
        "dead-directions measure-checkpoint --family {wildcards.family:q} "
        "--size {wildcards.size:q} --step {wildcards.step:q} "
        "--checkpoint {params.checkpoint:q} --probe {input.probe:q} --layers {input.layers:q} "
        "{params.detectors:q} {params.spec:q} --store {params.store:q} "
        "--directions-dir {output.directions:q} --marker {output.marker:q} "
        "--device {params.device:q} --dtype {params.dtype:q} --seed {params.seed:q} "
        "--threads {threads:q} > {log:q} 2>&1"
