# memplast: does per-sample memorization predict per-sample loss of plasticity?
# Thin entry point: configuration, validation, the rule families and the default target.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)
from memplast import config as mpconfig
from memplast.report import landing_page

# A broken config.yaml: one line with file, line and column (Snakemake's own message names neither;
# `python -m memplast.config OVERLAY ..` checks --configfile overlays the same way).
if Path("config.yaml").is_file():
    mpconfig.read_yaml("config.yaml")


configfile: "config.yaml"


mpconfig.validate(config)


# The landing page: the question, and the answer generated from results/stats/headline.csv.
report:
    landing_page(
        f"{workflow.basedir}/report/workflow.rst",
        ci_level=config["stats"]["ci_level"],
        primary=config["conditions"]["primary"],
    )


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/memo.smk"
include: "rules/train.smk"
include: "rules/probe.smk"
include: "rules/stats.smk"
include: "rules/curves.smk"
include: "rules/plasticity.smk"
include: "rules/tune.smk"


# Cheap jobs (and downloads, since compute nodes often lack internet) run on the
# submitting node when a cluster executor is used.
localrules:
    all,
    download,
    feldman_zhang_download,
    stats_primary,
    stats_conditions,
    figure_memo_vs_outcome,
    figure_conditions,
    figure_plasticity_gap,
    figure_algorithms,
    figure_class_balance,
    figure_order_diagnostics,
    memo_validation,
    training_curves,
    tune_select,


rule all:
    default_target: True
    input:
        expand_all_targets(),
