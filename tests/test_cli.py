"""Scripts run by hand as the workflow's own job: `python scripts/<rule>.py --target <output>`."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import ROOT

from memplast import io
from memplast.checksums import content_digest

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DEMO = [str(ROOT / "config.yaml"), str(ROOT / "config" / "demo.yaml")]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
OUTPUTS = ["data/digits/prepared.npz", "data/digits/samples.parquet", "results/subsets/none/kept.parquet"]


def script(name: str, *args, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def scripts(calls) -> list[subprocess.CompletedProcess]:
    """``script(*args, cwd=cwd)`` for each ``(args, cwd)`` of ``calls``, two at a time (each parses the
    workflow on one core for most of its time)."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda call: script(*call[0], cwd=call[1]), calls))


def test_target_runs_the_workflows_own_job(tmp_path):
    wf, hand = tmp_path / "workflow", tmp_path / "hand"
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(wf), "-c1", OUTPUTS[-1]]
    out = subprocess.run([*cmd, "--configfile", *DEMO], env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    hand.mkdir()
    for name, target in (("prepare", OUTPUTS[0]), ("subset", OUTPUTS[-1])):
        out = script(name, "--target", target, "--configfile", *DEMO, cwd=hand)
        assert out.returncode == 0, out.stderr[-3000:]
    by_rule = script("subset", "--rule", "subset", "--wildcards", "filter=none", "--configfile", *DEMO, cwd=hand)
    assert by_rule.returncode == 0, by_rule.stderr[-3000:]
    for path in [*OUTPUTS, "results/subsets/none/class_balance.csv"]:
        assert content_digest(hand / path) == content_digest(wf / path), path
    # the same params (config slice), the job's log file
    assert io.read_provenance(hand / OUTPUTS[-1])["config"] == io.read_provenance(wf / OUTPUTS[-1])["config"]
    assert (hand / "logs" / "train" / "subset_none.log").read_text().count("done subset") == 1


def test_a_bad_target_is_one_line_naming_the_cause(tmp_path):
    cases = {
        ("--target", "results/subsets/nonsense/kept.parquet"): "no rule of",
        ("--target", "data/digits/prepared.npz"): "rule prepare runs scripts/prepare.py, not subset.py",
        ("--target", OUTPUTS[-1]): "needs data/digits/samples.parquet, which does not exist",
        ("--rule", "subset", "--wildcards", "seed=1"): "rule subset has wildcards ['filter'], given ['seed']",
        ("--rule", "nosuchrule"): "no rule named nosuchrule",
        ("--target", OUTPUTS[-1], "--name", "none"): "drop --name none",
    }
    outs = scripts([(("subset", *args, "--configfile", *DEMO), tmp_path) for args in cases])
    for (args, message), out in zip(cases.items(), outs):
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr[-2000:])
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_probe_target_runs_the_probe_rule_probes_jobs_chooses(tmp_path):
    """rule probe and rule probe_run both make a boundary's table: the ruleorder set by probes.jobs
    picks one, as in Snakemake's own DAG (named here in the missing-input line)."""
    target = "results/runs/order0/none/random/none/base/probes/boundary1.parquet"
    modes = {"boundary": "probe", "run": "probe_run"}
    for mode in modes:
        (tmp_path / f"{mode}.yaml").write_text(f"probes: {{jobs: {mode}}}\n")
    outs = scripts(
        [(("probe", "--target", target, "--configfile", *DEMO, str(tmp_path / f"{m}.yaml")), tmp_path) for m in modes]
    )
    for rule, out in zip(modes.values(), outs):
        assert out.returncode != 0 and f"rule {rule} needs data/digits/prepared.npz" in out.stderr, out.stderr
