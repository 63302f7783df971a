# Data stage: download (CIFAR) -> prepare (split, planted noise, normalization) -> class orders.


rule download:
    output:
        archive="data/{dataset}/raw/archive.tar.gz",
    params:
        dataset=lambda wc: wc.dataset,
        url=config["dataset"]["url"],
        md5=config["dataset"]["md5"],
    log:
        log_path("data/download_{dataset}"),
    wildcard_constraints:
        dataset="cifar100|cifar10",
    resources:
        mem_mb=1000,
        runtime=60,
    threads: 1
    conda:
        ENV_TORCH
    script:
        "../scripts/download.py"


def prepare_inputs(wc):
    """CIFAR is prepared from its downloaded archive; digits and synthetic need no input."""
    if wc.dataset in ("cifar100", "cifar10"):
        return {"archive": f"data/{wc.dataset}/raw/archive.tar.gz"}
    return {}


rule prepare:
    input:
        unpack(prepare_inputs),
    output:
        prepared="data/{dataset}/prepared.npz",
        samples="data/{dataset}/samples.parquet",
    params:
        dataset_cfg=config["dataset"],
    log:
        log_path("data/prepare_{dataset}"),
    resources:
        mem_mb=4000,
        runtime=30,
    threads: 1
    conda:
        ENV_TORCH
    script:
        "../scripts/prepare.py"


rule class_order:
    input:
        samples=SAMPLES,
    output:
        order=ORDER_FILE,
    params:
        seed=lambda wc: int(wc.seed),
        cfg=cfg_slice("dataset", "class_orders", "protocol"),
    log:
        log_path("data/class_order_{seed}"),
    resources:
        mem_mb=1000,
        runtime=5,
    threads: 1
    conda:
        ENV_TORCH
    script:
        "../scripts/class_order.py"
