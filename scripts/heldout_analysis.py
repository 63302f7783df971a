"""Held-out samples: accuracy and forgetting on the memo-dependent slice vs the rest, per condition."""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(snakemake.scriptdir).parent if "snakemake" in globals() else Path(__file__).resolve().parents[1])
)  # noqa: F821

import logging  # noqa: E402

import pandas as pd  # noqa: E402

from memplast import heldout_analysis as ha  # noqa: E402
from memplast import io, plots  # noqa: E402
from memplast.cli import entrypoint  # noqa: E402

log = logging.getLogger("memplast.heldout")


def main(
    heldout: list,
    samples: list,
    heldout_dependence: str,
    measures: str,
    comparison: str,
    association: str,
    answer: str,
    pdf: str,
    png: str,
    cfg: dict,
):
    """Write MEASURES (per run and task), COMPARISON (over class orders, and vs the primary
    condition), ASSOCIATION (dependence score vs forgetting events, sample bootstrap), ANSWER (the
    report's sentence, one-row CSV) and the figure, from every run's HELDOUT / SAMPLES tables."""
    ci = float(cfg["ci_level"])
    dep, definition = ha.dependence_of(io.read_parquet(heldout_dependence))
    ends = pd.concat(
        [io.read_parquet(p).query("role == 'end' and split == 'test'") for p in heldout], ignore_index=True
    )
    per_sample = pd.concat([io.read_parquet(p).query("split == 'test'") for p in samples], ignore_index=True)
    log.info("%d runs; %s definition: %d of %d test samples memo-dependent", len(heldout), definition,
             int(dep["dependent"].sum()), len(dep))  # fmt: skip
    table = ha.slice_measures(ends, per_sample, dep)
    comp = ha.slice_comparison(table, ci, cfg.get("primary"))
    assoc = ha.dependence_association(ends, per_sample, dep, int(cfg["n_boot"]), ci, int(cfg.get("seed", 0)))
    sentence = ha.answer_sentence(comp, ci, definition, int(dep["dependent"].sum()), len(dep), cfg.get("primary"))
    log.info("%s", sentence)
    prov = io.provenance(cfg, definition=definition, runs=len(heldout))
    io.write_csv(table, measures, prov)
    io.write_csv(comp, comparison, prov)
    io.write_csv(assoc, association, prov)
    n_dep = int(dep["dependent"].sum())
    io.write_csv(
        pd.DataFrame([{"definition": definition, "n_dependent": n_dep, "n_test": len(dep), "sentence": sentence}]),
        answer,
        prov,
    )
    plots.heldout_slices(table, definition, pdf, prov)


if __name__ == "__main__":
    entrypoint(main, globals().get("snakemake"))
