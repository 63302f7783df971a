"""Memo validation numbers against small hand-checked cases."""

import math

import numpy as np
import pandas as pd
import pytest

from memplast.memo_validation import method_agreement, noise_auroc, top_k_mask


def test_noise_auroc_hand_checked():
    df = pd.DataFrame(
        {
            "noisy": [False, False, True, True],
            "s": [0.1, 0.4, 0.35, 0.8],  # noisy>clean pairs: (.35>.1) (.8>.1) (.8>.4); (.35<.4) -> 3/4
            "perfect": [0, 1, 2, 3],
            "reversed": [3, 2, 1, 0],
            "tied": [1.0, 1.0, 1.0, 1.0],  # ties count one half
        }
    )
    out = noise_auroc(df, ["s", "perfect", "reversed", "tied"]).set_index("method")
    assert out["auroc"].tolist() == [0.75, 1.0, 0.0, 0.5]
    assert out["n"].tolist() == [4] * 4 and out["n_noisy"].tolist() == [2] * 4


def test_noise_auroc_errors():
    df = pd.DataFrame({"noisy": [False, False], "s": [1.0, 2.0], "flag": [0, 1]})
    with pytest.raises(ValueError, match="both noisy and clean"):
        noise_auroc(df, ["s"])
    assert noise_auroc(df, ["s"], noisy_col="flag")["auroc"].item() == 1.0
    df.loc[0, "s"] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        noise_auroc(df, ["s"], noisy_col="flag")


def test_method_agreement_hand_checked():
    df = pd.DataFrame({"a": [1.0, 2, 3, 4], "b": [2.0, 4, 6, 8], "c": [4.0, 3, 2, 1], "d": [1.0, 2, 3, 100]})
    out = method_agreement(df, ["a", "b", "c", "d"]).set_index(["method_a", "method_b"])
    assert len(out) == 6 and (out["n"] == 4).all() and (out["subset"] == "all").all()
    assert out.loc[("a", "b")][["spearman", "pearson", "cosine"]].tolist() == pytest.approx([1, 1, 1])
    # cosine is uncentered: (4 + 6 + 6 + 4) / (sqrt(30) sqrt(30)) = 2/3, while both correlations are -1
    assert out.loc[("a", "c")][["spearman", "pearson", "cosine"]].tolist() == pytest.approx([-1, -1, 2 / 3])
    # monotone but not linear: Spearman 1, Pearson 149 / sqrt(5 * 7205) (deviations by hand)
    assert out.loc[("a", "d"), "spearman"] == pytest.approx(1)
    assert out.loc[("a", "d"), "pearson"] == pytest.approx(149 / math.sqrt(5 * 7205))
    assert out.loc[("a", "d"), "cosine"] == pytest.approx((1 + 4 + 9 + 400) / math.sqrt(30 * 10014))


def test_method_agreement_subset_and_nan():
    df = pd.DataFrame({"fz": [0.9, 0.1, 0.8, 0.2, 0.7], "x": [3.0, 9, 2, 8, 1], "y": [1.0, 0, 3, np.nan, 2]})
    top = top_k_mask(df, "fz", 3)
    assert top.tolist() == [True, False, True, False, True]
    out = method_agreement(df, ["fz", "x"], subset=top, subset_name="top3_fz").iloc[0]
    assert out["subset"] == "top3_fz" and out["n"] == 3
    assert out["spearman"] == pytest.approx(1.0)  # fz .9,.8,.7 vs x 3,2,1
    nan_pair = method_agreement(df, ["x", "y"]).iloc[0]
    assert nan_pair["n"] == 4  # the NaN row is dropped for this pair only
    assert nan_pair["spearman"] == pytest.approx(
        -0.8
    )  # ranks x: 3,4,2,1 vs y: 2,1,4,3; sum d^2 = 18 -> 1 - 6*18/(4*15)
