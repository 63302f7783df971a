# Memorization scores: train the scorer on all training data, curvature per checkpoint of its
# epoch grid (one job each), average over the grid into results/memo/scores.parquet.
from memplast.config import score_column
from memplast.train import scorer_grid

MEMO = config["memo"]
SCORER_GRID = scorer_grid(MEMO["scorer"]["epochs"], MEMO["scorer"]["grid_every"])


rule memo_scorer:
    input:
        prepared=PREPARED,
    output:
        checkpoints=expand("results/memo/scorer/e{epoch}.pt", epoch=SCORER_GRID),
        csl="results/memo/scorer/csl.parquet",
        metrics="results/memo/scorer/metrics.parquet",
    params:
        grid=SCORER_GRID,
        cfg=cfg_slice("dataset", "memo", "protocol"),
    log:
        log_path("memo/scorer"),
    benchmark:
        bench_path("memo/scorer")
    threads: job("memo_scorer", "threads")
    resources:
        mem_mb=job("memo_scorer", "mem_mb"),
        runtime=job("memo_scorer", "runtime"),
        gpu=job("memo_scorer", "gpu"),
    conda:
        ENV_TORCH
    script:
        "../scripts/memo_scorer.py"


rule memo_curvature:
    input:
        prepared=PREPARED,
        checkpoint="results/memo/scorer/e{epoch}.pt",
    output:
        curvature="results/memo/curvature/e{epoch}.parquet",
    params:
        cfg=cfg_slice("memo", "protocol"),
    log:
        log_path("memo/curvature_e{epoch}"),
    benchmark:
        bench_path("memo/curvature_e{epoch}")
    threads: job("curvature", "threads")
    resources:
        mem_mb=job("curvature", "mem_mb"),
        runtime=job("curvature", "runtime"),
        gpu=job("curvature", "gpu"),
    conda:
        ENV_TORCH
    script:
        "../scripts/memo_curvature.py"


def memo_score_inputs(wc):
    inputs = {
        "samples": SAMPLES,
        "curvature": expand("results/memo/curvature/e{epoch}.parquet", epoch=SCORER_GRID),
        "csl": "results/memo/scorer/csl.parquet",
    }
    if MEMO["feldman_zhang"]["enabled"]:
        inputs["fz"] = "results/memo/feldman_zhang.parquet"
    return inputs


rule memo_scores:
    input:
        unpack(memo_score_inputs),
    output:
        scores=SCORES,
        class_map="results/memo/sample_class_map.csv",
    params:
        score_col=score_column(config),
        cfg=cfg_slice("memo"),
    log:
        log_path("memo/scores"),
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    conda:
        ENV_TORCH
    script:
        "../scripts/memo_scores.py"


rule feldman_zhang_download:
    output:
        npz="data/feldman_zhang/cifar100_infl_matrix.npz",
    params:
        url=MEMO["feldman_zhang"]["url"],
    log:
        log_path("memo/feldman_zhang_download"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV_TORCH
    script:
        "../scripts/feldman_zhang_download.py"


rule feldman_zhang_import:
    input:
        npz="data/feldman_zhang/cifar100_infl_matrix.npz",
        mapping=MEMO["feldman_zhang"]["mapping"] or "MISSING-memo.feldman_zhang.mapping",
        samples=SAMPLES,
    output:
        fz="results/memo/feldman_zhang.parquet",
    params:
        cfg=cfg_slice("memo"),
    log:
        log_path("memo/feldman_zhang_import"),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV_TORCH
    script:
        "../scripts/feldman_zhang_import.py"
