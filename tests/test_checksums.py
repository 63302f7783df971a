"""Content checksums (memplast.checksums): blind to provenance and wall-clock columns, never to data."""

from __future__ import annotations

import pandas as pd
import torch

from memplast import checksums, io
from memplast.checkpoints import save_checkpoint
from memplast.models import build_model


def test_parquet_digest_ignores_provenance_and_timing_but_not_values(tmp_path):
    df = pd.DataFrame({"sample_id": [3, 1, 2], "loss": [0.5, 0.25, 1.0], "seconds": [1.0, 2.0, 3.0]})
    io.write_parquet(df, tmp_path / "a.parquet", {"code_version": "0.1.0+gaaaa", "runtime": {"threads": 1}})
    io.write_parquet(
        df.assign(seconds=[9.0, 9.0, 9.0]), tmp_path / "b.parquet", {"code_version": "0.1.0+gbbbb", "runtime": {}}
    )
    io.write_parquet(df.assign(loss=[0.5, 0.25, 1.0 + 1e-12]), tmp_path / "c.parquet", {"code_version": "x"})
    a, b, c = (checksums.content_digest(tmp_path / f"{n}.parquet") for n in "abc")
    assert a == b and a != c


def test_checkpoint_digest_ignores_provenance_and_compare_names_every_difference(tmp_path):
    model = build_model("small_cnn", 10, 1, 4)
    for name, commit in (("x", "a"), ("y", "b")):
        save_checkpoint(tmp_path / "r1" / f"{name}.pt", model, {"epoch": 1}, {"code_version": commit})
        save_checkpoint(tmp_path / "r2" / f"{name}.pt", model, {"epoch": 1}, {"code_version": commit * 2})
    with torch.no_grad():
        model.fc.bias[0] += 1e-6
    save_checkpoint(tmp_path / "r2" / "y.pt", model, {"epoch": 1}, {"code_version": "c"})
    (tmp_path / "r2" / "extra.csv").write_text("a\n1\n")
    (tmp_path / "r1" / "figure.pdf").write_bytes(b"%PDF differs every time")
    diff = checksums.compare(checksums.digests(tmp_path / "r1"), checksums.digests(tmp_path / "r2"))
    assert diff == ["only after: extra.csv", "differs: y.pt"]
