"""Start-up cost of every rule's job: seconds to import a script's modules (what each Snakemake job
pays before it does any work), for this checkout against a baseline git revision, side by side.

Each measurement is a fresh ``python -c "runpy.run_path(script)"`` (module-level imports run,
``main`` does not), with the checkout alone on ``sys.path``; baseline and current alternate per
repeat so machine load hits both alike, and the median is reported. The baseline's ``memplast`` and
``scripts`` are exported with ``git archive`` into a temporary directory (nothing in the repository
changes). Heavy modules (torch, torchvision, pandas, statsmodels, seaborn) loaded by each script are
listed for the current checkout.

Usage: python benchmarks/bench_startup.py [--baseline REV] [--repeats N] [--scripts a b ...]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "pandas", "statsmodels", "seaborn", "matplotlib", "scipy", "sklearn")
PROBE = (
    "import runpy, sys; runpy.run_path({script!r}, run_name='bench'); "
    "print(','.join(m for m in {heavy!r} if m in sys.modules))"
)


def rule_scripts() -> list[str]:
    """Script names used by the rules (rules/*.smk `script:` lines), sorted."""
    names = set()
    for smk in (ROOT / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if line.strip().startswith('"../scripts/'):
                names.add(Path(line.strip().strip('"')).stem)
    return sorted(names)


def export(rev: str, dest: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "memplast", "scripts"], capture_output=True, check=True
    ).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(dest, filter="data")


def time_import(tree: Path, script: str) -> tuple[float, str]:
    """(seconds, heavy modules loaded) for importing ``script`` of ``tree`` in a fresh interpreter."""
    code = PROBE.format(script=str(tree / "scripts" / f"{script}.py"), heavy=HEAVY)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{tree}/scripts/{script}.py failed to import:\n{out.stderr[-2000:]}")
    return seconds, out.stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="main", help="git revision to compare against (default main)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scripts", nargs="*", default=None, help="script names (default: every rule's)")
    args = ap.parse_args()
    scripts = args.scripts or rule_scripts()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        export(args.baseline, base)
        scripts = [s for s in scripts if (base / "scripts" / f"{s}.py").exists()]
        t_base = {s: [] for s in scripts}
        t_now = {s: [] for s in scripts}
        heavy = {}
        for _ in range(args.repeats):
            for s in scripts:
                t_base[s].append(time_import(base, s)[0])
                seconds, heavy[s] = time_import(ROOT, s)
                t_now[s].append(seconds)
    width = max(map(len, scripts))
    print(f"{'script':<{width}} {'baseline s':>10} {'now s':>7} {'ratio':>6}  heavy modules now")
    ratios = []
    for s in scripts:
        b, n = statistics.median(t_base[s]), statistics.median(t_now[s])
        ratios.append(b / n)
        print(f"{s:<{width}} {b:>10.2f} {n:>7.2f} {b / n:>6.2f}  {heavy[s] or '-'}")
    total_b = sum(statistics.median(v) for v in t_base.values())
    total_n = sum(statistics.median(v) for v in t_now.values())
    print(
        f"summary: import time of {len(scripts)} rule scripts vs {args.baseline}: total {total_b:.1f} s -> "
        f"{total_n:.1f} s ({total_b / total_n:.2f}x), per-script speed-up median "
        f"{statistics.median(ratios):.2f}x, min {min(ratios):.2f}x, max {max(ratios):.2f}x"
    )


if __name__ == "__main__":
    main()
