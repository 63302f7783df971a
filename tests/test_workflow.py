"""The Snakemake workflow end to end: dry runs at demo and paper scale, a real run of a tiny
configuration (outputs, provenance, determinism), lint and formatting."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from browser import CHROMIUM_FLAGS, check_landing_layout, chromium, landing_geometry
from conftest import ROOT

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
TINY = [str(ROOT / "config.yaml"), str(ROOT / "config" / "demo.yaml"), str(ROOT / "tests" / "data" / "tiny.yaml")]


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def thread_env(omp: str | None) -> dict:
    """This environment with no thread variables (``omp=None``) or with ``OMP_NUM_THREADS=omp``:
    results must not depend on either, since every entry point sets torch's threads itself."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    return env


def snakemake(*args, cwd=ROOT, timeout=1500, check=True, env=None):
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), *args]
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def job_counts(stdout: str) -> dict:
    counts, started = {}, False
    for line in stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            started = True
            continue
        if started:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif parts and parts[0] == "total":
                break
    return counts


DEMO = [str(ROOT / "config.yaml"), str(ROOT / "config" / "demo.yaml")]


def test_dry_run_demo(tmp_path):
    out = snakemake("-n", "--directory", str(tmp_path), "--configfile", *DEMO)
    counts = job_counts(out.stdout)
    # 2 class orders x 5 tasks x (4 probed conditions + the retrained reference, without window checkpoints)
    assert counts["train_task"] == 2 * 4 * 5 and counts["train_task_reference"] == 2 * 1 * 5
    assert counts["probe"] == 2 * 4 * 4 and counts["memo_curvature"] == 5  # no probes of retrained references


def test_dry_run_paper_scale_job_counts(tmp_path):
    # its build time is measured by benchmarks/bench_dryrun.py, not asserted here
    out = snakemake("-n", "--quiet", "rules", "--directory", str(tmp_path), "--configfile", str(ROOT / "config.yaml"))
    counts = job_counts(out.stdout)
    # 5 class orders x 9 conditions x 20 tasks (primary; 2 memo filters and their 2 size-matched random
    # controls; fixed, ascending, stratified; retrained, which trains by its own rule without probe
    # windows); probes for the 8 non-reference ones x 19 boundaries
    assert counts["train_task"] == 5 * 8 * 20 and counts["train_task_reference"] == 5 * 1 * 20
    assert counts["probe"] == 8 * 5 * 19
    assert counts["subset"] == 5  # none, 2 memo filters, 2 random controls
    assert counts["memo_curvature"] == 50 and counts["download"] == 1


def test_dry_run_algorithms_overlay(tmp_path):
    out = snakemake("-n", "--directory", str(tmp_path), "--configfile", *DEMO, str(ROOT / "config" / "algorithms.yaml"))
    counts = job_counts(out.stdout)
    # the demo's 2 x 2 data grid with base, plus retrained, shrink_perturb, cbp, upgd on the primary data
    assert counts["train_task"] == 2 * (4 + 3) * 5 and counts["train_task_reference"] == 2 * 5
    assert counts["run_summary"] == 2 * 8


def test_one_figure_does_not_train_the_grid(tmp_path):
    out = snakemake(
        "results/figures/memo_vs_dgrad.pdf",
        "-n",
        "--directory",
        str(tmp_path),
        "--configfile",
        str(ROOT / "config.yaml"),
    )
    counts = job_counts(out.stdout)
    assert counts["train_task"] == 5 * 20  # primary condition only, every class order


def test_invalid_config_stops_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("protocol: {classes_per_task: 7}\n")
    out = snakemake("-n", "--configfile", str(ROOT / "config.yaml"), str(bad), check=False)
    assert out.returncode != 0
    assert "classes_per_task=7 does not divide the 100 classes" in out.stdout + out.stderr


def test_lint_and_format_are_clean():
    lint = snakemake("--lint", "--configfile", *TINY)
    assert "Congratulations" in lint.stdout + lint.stderr
    fmt = subprocess.run(
        [str(Path(sys.executable).parent / "snakefmt"), "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    ruff = str(Path(sys.executable).parent / "ruff")
    check = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def run_tiny(workdir: Path, *extra, omp: str | None = None, check: bool = True):
    workdir.mkdir(parents=True, exist_ok=True)
    return snakemake(
        *extra, "--directory", str(workdir), "--cores", "2", "--configfile", *TINY, env=thread_env(omp), check=check
    )


def parquet_tables(root: Path) -> dict:
    """Every Parquet table under results/ (timing columns dropped) keyed by relative path."""
    out = {}
    for p in sorted((root / "results").rglob("*.parquet")):
        df = pd.read_parquet(p)
        out[str(p.relative_to(root))] = df.drop(columns=[c for c in ("seconds", "images_per_sec") if c in df])
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tiny")
    run_tiny(workdir, omp=None)
    return workdir


@pytest.mark.slow
def test_tiny_run_produces_figures_tables_and_provenance(tiny_run):
    from memplast import io

    for name in ("memo_vs_dgrad", "memo_vs_dloss", "memo_vs_ddormant", "accuracy_curves", "memo_validation"):
        pdf = tiny_run / "results" / "figures" / f"{name}.pdf"
        assert pdf.stat().st_size > 1000 and (pdf.with_suffix(".png")).exists()
        assert "code_version" in io.read_provenance(pdf)
    deltas = pd.read_parquet(tiny_run / "results/runs/order0/none/random/none/base/deltas.parquet")
    assert set(deltas["boundary"]) == {0, 1} and set(deltas["kind"]) == {"immediate", "windowed"}
    assert deltas.loc[deltas.is_old, "d_loss"].notna().all()
    prov = io.read_provenance(tiny_run / "results/runs/order0/none/random/none/base/deltas.parquet")
    assert prov["config"]["protocol"]["n_tasks"] == 3 and prov["code_version"].startswith("0.1.0")
    legacy = pd.read_csv(tiny_run / "results/runs/order0/none/random/none/base/windowed_plasticity_data.csv")
    assert list(legacy.columns) == [
        "sample_id",
        "class_label",
        "memo",
        "delta_loss",
        "delta_grad_norm",
        "delta_dormant",
        "boundary",
    ]
    wcr = pd.read_csv(tiny_run / "results/stats/windowed_correlation_results.csv")
    assert "memo_delta_loss_spearman_r" in wcr and "n_samples" in wcr
    pooled_columns = [
        "filter",
        "ordering",
        "weighting",
        "algorithm",
        "outcome",
        "kind",
        "boundary",
        "estimator",
        "pooling",
        "estimate",
        "ci_low",
        "ci_high",
        "p",
        "p_bh",
        "n_samples",
        "n_orders",
    ]
    for name in ("headline", "pooled", "trend", "models", "conditions"):
        table = pd.read_csv(tiny_run / f"results/stats/{name}.csv")
        assert set(pooled_columns) <= set(table.columns), name
        assert (table["p"].dropna() > 0).all(), name
    scores = pd.read_parquet(tiny_run / "results/memo/scores.parquet")
    assert {"curv_exact", "curv_hutch", "curv_hutch_se", "csl", "curv_exact_pct_class"} <= set(scores.columns)
    assert set(scores["split"]) == {"train", "val"}
    # resume state files are removed after each task; only declared outputs remain
    assert not list((tiny_run / "results" / "resume").rglob("*.pt"))


def rendered_dom(html: Path, profile: Path) -> str:
    """The DOM of ``html`` after its scripts ran, from headless Debian chromium."""
    exe = chromium()
    out = subprocess.run(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            html.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0 or "<html" not in out.stdout:
        pytest.skip(f"chromium could not render here (exit {out.returncode}): {out.stderr[-300:]}")
    return out.stdout


@pytest.mark.slow
def test_runtime_settings_rerun_nothing_and_training_is_watchable(tiny_run, tmp_path):
    import yaml

    from memplast import curves

    runtime_only = tmp_path / "runtime.yaml"
    runtime_only.write_text(
        yaml.safe_dump(
            {
                "protocol": {"eval_batch_size": 7, "state_every": 3, "device": "cpu"},
                "probes": {"batch_size": 13, "keep_checkpoints": True},
                "logging": {"wandb": {"enabled": True, "mode": "offline", "project": "elsewhere"}},
            }
        )
    )
    out = snakemake("-n", "--directory", str(tiny_run), "--configfile", *TINY, str(runtime_only))
    assert "Nothing to be done" in out.stdout + out.stderr
    science = tmp_path / "science.yaml"  # control: a science setting does rerun training
    science.write_text(yaml.safe_dump({"protocol": {"lr": 0.07}}))
    out = snakemake("-n", "--quiet", "rules", "--directory", str(tiny_run), "--configfile", *TINY, str(science))
    assert job_counts(out.stdout)["train_task"] > 0
    # one log line per epoch, and every run's epochs in the study-wide curves
    log = (tiny_run / "logs/train/order0/none/random/none/base/task1.log").read_text()
    assert [int(e) for e in re.findall(r"task 1: epoch (\d+)/4 train loss [0-9.]+ acc [0-9.]+ \| val acc", log)] == [
        1,
        2,
        3,
        4,
    ]
    assert re.search(r"img/s \| ETA \d+:\d\d:\d\d", log)
    table = pd.read_parquet(tiny_run / "results/stats/training_curves.parquet")
    assert len(table) == 2 * 2 * 3 * 4 and table.groupby("run")["epoch"].nunique().eq(12).all()  # runs x tasks x E
    assert (curves.flag_runs(table)["status"] == "ok").all()
    assert (tiny_run / "results/figures/training_curves.pdf").stat().st_size > 1000


@pytest.mark.slow
def test_tuning_one_algorithm_or_adding_orders_reruns_only_their_jobs(tiny_run, tmp_path):
    """Params are per run: another algorithm's hyper-parameters and the list of class-order seeds
    are not in a base run's params, so changing them reruns no existing training or probe."""
    import yaml

    other = tmp_path / "other_algorithms.yaml"  # tiny trains base and retrained only
    other.write_text(
        yaml.safe_dump(
            {"protocol": {"cbp": {"replacement_rate": 0.5}, "shrink_perturb": {"shrink": 0.5}, "upgd": {"sigma": 0.5}}}
        )
    )
    out = snakemake("-n", "--directory", str(tiny_run), "--configfile", *TINY, str(other))
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-3000:]
    per_run = ("class_order", "train_task", "train_task_reference", "probe", "deltas", "run_summary")
    added, alone = tmp_path / "added.yaml", tmp_path / "alone.yaml"
    added.write_text(yaml.safe_dump({"class_orders": {"seeds": [0, 1, 2]}}))
    alone.write_text(yaml.safe_dump({"class_orders": {"seeds": [2]}}))
    grown = job_counts(
        snakemake("-n", "--quiet", "rules", "--directory", str(tiny_run), "--configfile", *TINY, str(added)).stdout
    )
    (tmp_path / "fresh").mkdir()
    fresh = job_counts(
        snakemake(
            "-n", "--quiet", "rules", "--directory", str(tmp_path / "fresh"), "--configfile", *TINY, str(alone)
        ).stdout
    )
    assert fresh["train_task"] > 0 and {r: grown.get(r, 0) for r in per_run} == {r: fresh.get(r, 0) for r in per_run}


@pytest.fixture(scope="module")
def tiny_report(tiny_run):
    snakemake("--directory", str(tiny_run), "--report", "results/report.html", "--configfile", *TINY)
    return tiny_run / "results" / "report.html"


@pytest.mark.slow
def test_report_opens_on_the_answer(tiny_run, tiny_report, tmp_path):
    text = tiny_report.read_text(errors="ignore")
    assert "memo_vs_dgrad" in text and len(text) > 100_000
    dom = rendered_dom(tiny_report, tmp_path / "chromium")
    assert "System Message" not in dom and "Duplicate explicit target" not in dom
    assert "Within-class ρ of memo with the outcome" in dom  # the compact table's caption
    assert "all training samples, reshuffled every epoch, unweighted loss, plain SGD (base)" in dom
    assert "Loss of plasticity: not measured" in dom  # the tiny config runs no retrained reference
    landing = dom[dom.index("Question.") : dom.index("Setup: ")]
    assert "{'filter'" not in landing and "{&#39;filter" not in landing  # the condition in words, not a dict
    head = pd.read_csv(tiny_run / "results/stats/headline.csv")
    assert "align_cos" in set(head["outcome"]) and "align_cos" not in landing  # primary outcomes only
    # it opens on the answer: the question, the sentences, the table, then the setup
    answer = landing.index("Answer.</strong> ")
    assert re.match(r"(Within their class|No estimate|The )", landing[answer + 17 :]) and answer < landing.index(
        "<table"
    )


# a laptop and a desktop screen (CSS px): the report centres its content in a window-high box
REPORT_SIZES = {1280: 800, 1920: 1080}


def _check_layout(html: Path, tmp_path: Path, width: int) -> dict:
    shot = tmp_path / f"report_{width}px.png"
    g = landing_geometry(html, width, tmp_path / "profile", shot, height=REPORT_SIZES[width])
    check_landing_layout(g)
    assert g["rows"] == 4  # header + loss, gradient and dormancy changes
    assert any("Within their class" in t for t in g["answer_text"])
    assert shot.stat().st_size > 20_000  # the screenshot a person can look at (the test's tmp dir)
    return g


@pytest.mark.slow
@pytest.mark.parametrize("width", REPORT_SIZES)
def test_report_landing_page_layout_in_chromium(tiny_report, tmp_path, width):
    """As a person sees it at 1280 x 800 and 1920 x 1080 px: the landing text whole in the window,
    nothing drawn over the answer sentences and the compact table, the table inside its column, the
    workflow graph clear of both."""
    _check_layout(tiny_report, tmp_path, width)


@pytest.mark.slow
@pytest.mark.parametrize("width", REPORT_SIZES)
def test_demo_report_landing_page_layout_in_chromium(tmp_path, width):
    """The same on the demo's report (`make demo` writes results/report.html)."""
    html = ROOT / "results" / "report.html"
    if not html.exists():
        pytest.skip("no demo report here: `make demo` writes results/report.html")
    g = _check_layout(html, tmp_path, width)
    assert any("plasticity" in t for t in g["answer_text"])  # the demo runs the retrained reference


@pytest.mark.slow
def test_same_config_gives_identical_tables(tiny_run, tmp_path):
    """The fixture ran with no thread variables; this run has OMP_NUM_THREADS=1: same tables."""
    again = tmp_path / "again"
    run_tiny(again, omp="1")
    a, b = parquet_tables(tiny_run), parquet_tables(again)
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        pd.testing.assert_frame_equal(a[key], b[key], check_exact=True, obj=key)


def test_probe_jobs_choose_the_probe_rule_and_leave_the_rest_of_the_dag(tmp_path):
    """Both values of probes.jobs give a valid DAG of the demo: the configured rule writes every probe
    table (rule probe: one job per run and boundary; probe_run: one per run), every other rule plans
    the same jobs."""
    counts = {
        mode: job_counts(
            snakemake(
                "-n", "--directory", str(tmp_path), "--configfile", *DEMO, "--config", f"probes={{jobs: {mode}}}"
            ).stdout
        )
        for mode in ("boundary", "run")
    }
    for mode, rule, n in (("boundary", "probe", 2 * 4 * 4), ("run", "probe_run", 2 * 4)):
        assert counts[mode].pop(rule) == n, mode  # class orders x probed conditions (x boundaries)
        counts[mode]["total"] -= n
    assert counts["boundary"] == counts["run"] and counts["run"]["deltas"] == 2 * 4


PROBED = "results/runs/order0/none/random/none/base"


@pytest.mark.slow
def test_probe_jobs_per_run_write_the_tables_of_the_jobs_per_boundary(tmp_path):
    """One trained tiny run probed by one job per boundary, then again (its training copied) by one
    job per run: every boundary's table is the same file, byte for byte (frame, provenance, digest)."""
    from memplast import checksums, io

    targets = [f"{PROBED}/probes/boundary{k}.parquet" for k in (0, 1)]
    per_boundary, per_run = tmp_path / "boundary", tmp_path / "run"
    run_tiny(per_boundary, *targets)
    for d in ("data", "results", ".snakemake/metadata"):
        shutil.copytree(per_boundary / d, per_run / d)
    for t in targets:
        (per_run / t).unlink()
    run_tiny(per_run, *targets, "--config", "probes={jobs: run}")
    bench = per_run / "logs/benchmarks"  # only the probe job ran: nothing retrained
    assert [p.relative_to(bench).as_posix() for p in bench.rglob("*.tsv")] == [
        f"probe/{PROBED.removeprefix('results/runs/')}/boundaries.tsv"
    ]
    for t in targets:
        a, b = per_boundary / t, per_run / t
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b), check_exact=True, obj=t)
        assert io.read_provenance(a) == io.read_provenance(b), t
        assert checksums.content_digest(a) == checksums.content_digest(b), t
        assert a.read_bytes() == b.read_bytes(), t


# A checkpoint of the last task of a run outside the primary condition: the recovery retrains one
# task and reruns what reads it (one probe job, the run's deltas and summary, the statistics).
DAMAGED = "results/runs/order1/per_class-q0.9/random/none/base/task2/ckpt/te1.pt"


@pytest.mark.slow
def test_damaged_checkpoint_is_named_and_its_forcerun_recovery_restores_every_table(tiny_run, tmp_path):
    """A few bytes of a finished study's checkpoint flipped: the plain rerun stops with one line
    naming the file and the recovery; running exactly the recommended command rewrites the
    checkpoint byte for byte and every table and checkpoint equals the undamaged study's."""
    from test_faults import flip

    from memplast import checksums

    work = tmp_path / "damaged"
    for d in ("data", "results", ".snakemake/metadata"):
        shutil.copytree(tiny_run / d, work / d)
    flip(work / DAMAGED)
    out = run_tiny(work, check=False)
    assert out.returncode != 0
    lines = set(re.findall(r"damaged file .*", out.stdout + out.stderr))  # one line, however often logged
    assert len(lines) == 1, out.stderr[-3000:]
    line = lines.pop()
    assert line.startswith(f"damaged file {DAMAGED}: ") and f"--forcerun {DAMAGED} " in line
    recovery = re.search(r"rerun your snakemake command with (--forcerun \S+)", line)
    run_tiny(work, *recovery.group(1).split())
    assert (work / DAMAGED).read_bytes() == (tiny_run / DAMAGED).read_bytes()
    before, after = checksums.digests(tiny_run / "results"), checksums.digests(work / "results")
    assert len(before) > 50 and checksums.compare(before, after) == []


@pytest.mark.slow
@pytest.mark.parametrize("kill_omp,finish_omp", [(None, "1"), ("1", None)], ids=["unset-then-omp1", "omp1-then-unset"])
def test_killed_training_job_resumes(tiny_run, tmp_path, kill_omp, finish_omp):
    """Delete a task's outputs, leave a resume state as a kill would (from the command line, with
    its default --threads), rerun through Snakemake: same weights, whatever OMP_NUM_THREADS says."""
    import torch

    work = tmp_path / "resume"
    shutil.copytree(tiny_run / "data", work / "data")
    shutil.copytree(tiny_run / "results", work / "results")
    run = "results/runs/order0/none/random/none/base"
    ref = torch.load(work / run / "task1/end.pt", weights_only=True)["model"]
    for p in (work / run / "task1").rglob("*"):
        if p.is_file():
            p.unlink()
    env_stop = thread_env(kill_omp)
    job = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "train_task.py"),
            "--prepared",
            "data/digits/prepared.npz",
            "--order",
            "results/class_orders/order0.csv",
            "--kept",
            "results/subsets/none/kept.parquet",
            "--end",
            f"{run}/task1/end.pt",
            "--checkpoints",
            "[x1.pt, x2.pt, x3.pt, x4.pt]",
            "--window",
            "[w0.pt, w1.pt]",
            "--live",
            "live.pt",
            "--metrics",
            f"{run}/task1/metrics.parquet",
            "--order_log",
            f"{run}/task1/order_log.parquet",
            "--run",
            "order0/none/random/none/base",
            "--seed",
            "0",
            "--task",
            "1",
            "--ordering",
            "random",
            "--alpha",
            "0",
            "--algorithm",
            "base",
            "--ckpt_task_epochs",
            "[1, 2, 3, 4]",
            "--resume",
            "results/resume/order0/none/random/none/base/task1.pt",
            "--score_col",
            "curv_exact",
            "--cfg",
            str(_cfg_slice()),
            "--runtime",
            _runtime_settings(),
            "--prev_state",
            f"{run}/task0/end.pt",
        ],
        cwd=work,
        stderr=subprocess.PIPE,
        text=True,
        env=env_stop,
    )
    # kill -9 once task-epoch 2 is logged: its resume state is written before the line, and two
    # epochs are left, so the job dies mid-task as a preempted or timed-out job would
    for line in job.stderr:
        if "task 1: epoch 2/4" in line:
            job.kill()
            break
    job.communicate()
    assert job.returncode == -signal.SIGKILL
    assert (work / "results/resume/order0/none/random/none/base/task1.pt").exists()
    out = snakemake(
        f"{run}/task1/end.pt",
        "--directory",
        str(work),
        "--cores",
        "2",
        "--configfile",
        *TINY,
        env=thread_env(finish_omp),
    )
    logs = (work / "logs" / "train").rglob("task1.log")
    assert any("resuming after task-epoch" in p.read_text() for p in logs), out.stderr[-2000:]
    resumed = torch.load(work / run / "task1/end.pt", weights_only=True)["model"]
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)


def _cfg_slice():
    import json

    from memplast import config as mpconfig
    from memplast import runtime

    cfg = mpconfig.load(*TINY)
    # as the rule passes it to a base run (rules/common.smk cfg_slice): without the runtime settings
    return json.dumps(runtime.rule_params(cfg, ("dataset", "model", "protocol", "ordering", "weighting"), "base"))


def _runtime_settings():
    """The runtime settings (state_every above all) the rule's script reads from the config."""
    import json

    from memplast import config as mpconfig
    from memplast import runtime

    return json.dumps(runtime.settings(mpconfig.load(*TINY)))
