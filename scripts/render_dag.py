"""Render the workflow's rule graph and job DAG (tiny test configuration by default).

Writes OUTDIR/rulegraph.svg and OUTDIR/dag.svg (Snakemake's dot output through graphviz
`dot -Tsvg`) and OUTDIR/rulegraph.mmd and OUTDIR/dag.mmd (Snakemake's Mermaid flowcharts,
which need no binary; GitHub renders them in a ```mermaid block). The graphs are built in an
empty temporary directory, so results already on disk do not hide any job.

Usage: python scripts/render_dag.py [--outdir docs/dag] [--formats svg mermaid] [--configfile A.yaml B.yaml]
(`make dag` runs it with the defaults.)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TINY = [ROOT / "config.yaml", ROOT / "config" / "demo.yaml", ROOT / "tests" / "data" / "tiny.yaml"]
GRAPHS = ("rulegraph", "dag")  # Snakemake options --rulegraph and --dag
FORMATS = {"svg": "dot", "mermaid": "mermaid-js"}  # our format name -> Snakemake's graph syntax


def fail(message: str):
    sys.exit(f"render_dag.py: {message}")


def snakemake_graph(graph: str, syntax: str, configfiles) -> str:
    """The text Snakemake prints for --rulegraph/--dag in the given syntax."""
    with tempfile.TemporaryDirectory(prefix="memplast-dag-") as workdir:
        cmd = [
            str(SNAKEMAKE),
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            workdir,
            f"--{graph}",
            syntax,
            "--configfile",
            *map(str, configfiles),
        ]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        fail(f"`snakemake --{graph} {syntax}` failed: {last}")
    return out.stdout


def to_svg(dot_text: str, what: str) -> str:
    out = subprocess.run(["dot", "-Tsvg"], input=dot_text, capture_output=True, text=True)
    if out.returncode != 0 or "<svg" not in out.stdout:
        fail(f"graphviz `dot -Tsvg` could not render the {what}: {out.stderr.strip()[:300]}")
    return out.stdout


def render(outdir: Path, formats, configfiles) -> list[Path]:
    """Write every requested graph; return the written paths."""
    if "svg" in formats and shutil.which("dot") is None:
        fail(
            "graphviz `dot` not found, needed for SVG; install it (apt-get install graphviz) or pass --formats mermaid"
        )
    for f in configfiles:
        if not Path(f).is_file():
            fail(f"config file {f} not found; pass existing files to --configfile")
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for graph in GRAPHS:
        for fmt in formats:
            text = snakemake_graph(graph, FORMATS[fmt], configfiles)
            if fmt == "svg":
                path, text = outdir / f"{graph}.svg", to_svg(text, graph)
            else:
                path = outdir / f"{graph}.mmd"
            path.write_text(text)
            written.append(path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outdir", type=Path, default=ROOT / "docs" / "dag", help="where to write (default: docs/dag)")
    ap.add_argument(
        "--formats",
        nargs="+",
        choices=list(FORMATS),
        default=list(FORMATS),
        help="svg needs graphviz `dot`; mermaid needs nothing (default: both)",
    )
    ap.add_argument(
        "--configfile",
        nargs="+",
        type=Path,
        default=TINY,
        help="config files overlaid in order (default: config.yaml, config/demo.yaml, tests/data/tiny.yaml)",
    )
    args = ap.parse_args(argv)
    for path in render(args.outdir, args.formats, args.configfile):
        print(path)


if __name__ == "__main__":
    main()
