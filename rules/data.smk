# Data stage: download (CIFAR) -> prepare (split, planted noise, normalization) -> class orders.


rule generate_archive:
    output:
        archive=GENERATED_ARCHIVE,
    log:
        log_path("data/generate_archive"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        generated=config["dataset"]["generated"],
    script:
        "../scripts/generate_archive.py"


rule download:
    input:
        unpack(download_inputs),
    output:
        archive="data/{dataset}/raw/archive.tar.gz",
    log:
        log_path("data/download_{dataset}"),
    wildcard_constraints:
        dataset="cifar100|cifar10",
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=1000,
        runtime=60,
    params:
        dataset=lambda wc: wc.dataset,
        url=config["dataset"]["url"],
        md5=config["dataset"]["md5"],
    script:
        "../scripts/download.py"


rule prepare:
    input:
        unpack(prepare_inputs),
    output:
        prepared="data/{dataset}/prepared.npz",
        samples="data/{dataset}/samples.parquet",
    log:
        log_path("data/prepare_{dataset}"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        dataset_cfg=config["dataset"],
    script:
        "../scripts/prepare.py"


rule class_order:
    input:
        samples=SAMPLES,
    output:
        order=ORDER_FILE,
    log:
        log_path("data/class_order_{seed}"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        seed=lambda wc: int(wc.seed),
        cfg=class_order_slice(),
    script:
        "../scripts/class_order.py"
