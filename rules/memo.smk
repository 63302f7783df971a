# Memorization scores: train the scorer on all training data, curvature per checkpoint of its
# epoch grid (one job each), average over the grid into results/memo/scores.parquet.
from memplast.config import score_column
from memplast.grid import scorer_grid

MEMO = config["memo"]
SCORER_GRID = scorer_grid(MEMO["scorer"]["epochs"], MEMO["scorer"]["grid_every"])


rule memo_scorer:
    input:
        prepared=PREPARED,
    output:
        checkpoints=expand("results/memo/scorer/e{epoch}.pt", epoch=SCORER_GRID),
        csl="results/memo/scorer/csl.parquet",
        metrics="results/memo/scorer/metrics.parquet",
    log:
        log_path("memo/scorer"),
    benchmark:
        bench_path("memo/scorer")
    conda:
        ENV_TORCH
    threads: job("memo_scorer", "threads")
    resources:
        mem_mb=job("memo_scorer", "mem_mb"),
        runtime=gpu_runtime("memo_scorer"),
        gpu=job("memo_scorer", "gpu"),
    # Its resume state (every protocol.state_every epochs and on SIGTERM) is
    # results/resume/memo/scorer.pt, outside the declared outputs; not a param, so that its
    # introduction reran no finished scorer (memplast.train.scorer.RESUME).
    params:
        grid=SCORER_GRID,
        cfg=cfg_slice("dataset", "memo", "protocol"),
    script:
        "../scripts/memo_scorer.py"


rule memo_curvature:
    input:
        prepared=PREPARED,
        checkpoint="results/memo/scorer/e{epoch}.pt",
    output:
        curvature="results/memo/curvature/e{epoch}.parquet",
    log:
        log_path("memo/curvature_e{epoch}"),
    benchmark:
        bench_path("memo/curvature_e{epoch}")
    conda:
        ENV_TORCH
    threads: job("curvature", "threads")
    resources:
        mem_mb=job("curvature", "mem_mb"),
        runtime=gpu_runtime("memo_curvature"),
        gpu=job("curvature", "gpu"),
    params:
        cfg=cfg_slice("memo", "protocol"),
    script:
        "../scripts/memo_curvature.py"


rule memo_scores:
    input:
        unpack(memo_score_inputs),
    output:
        scores=SCORES,
        class_map="results/memo/sample_class_map.csv",
    log:
        log_path("memo/scores"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=job("light", "mem_mb"),
        runtime=job("light", "runtime"),
    params:
        score_col=score_column(config),
        cfg=cfg_slice("memo"),
    script:
        "../scripts/memo_scores.py"


rule feldman_zhang_download:
    output:
        npz="data/feldman_zhang/cifar100_infl_matrix.npz",
    log:
        log_path("memo/feldman_zhang_download"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        url=MEMO["feldman_zhang"]["url"],
    script:
        "../scripts/feldman_zhang_download.py"


rule feldman_zhang_import:
    input:
        npz="data/feldman_zhang/cifar100_infl_matrix.npz",
        mapping=MEMO["feldman_zhang"]["mapping"] or "MISSING-memo.feldman_zhang.mapping",
        samples=SAMPLES,
    output:
        fz="results/memo/feldman_zhang.parquet",
    log:
        log_path("memo/feldman_zhang_import"),
    conda:
        ENV_TORCH
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=cfg_slice("memo"),
    script:
        "../scripts/feldman_zhang_import.py"


rule heldout_dependence:
    input:
        unpack(heldout_dependence_inputs),
    output:
        dependence_table="results/memo/heldout_dependence.parquet",
    log:
        log_path("memo/heldout_dependence"),
    benchmark:
        bench_path("memo/heldout_dependence")
    conda:
        ENV_TORCH
    threads: job("probe", "threads")
    resources:
        mem_mb=job("probe", "mem_mb"),
        runtime=gpu_runtime("heldout_dependence"),
        gpu=job("probe", "gpu"),
    params:
        score_col=score_column(config),
        cfg=cfg_slice("heldout", "memo"),
    script:
        "../scripts/heldout_dependence.py"
