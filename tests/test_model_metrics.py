"""Model-level metrics: ranks on matrices with known singular values, dormant units by hand."""

import copy
import math

import pytest
import torch
from torch import nn

from memplast import model_metrics as mm
from memplast.masks import class_mask
from memplast.models import Forward, SmallCNN

C = 10


def with_singular_values(s, n=12, d=6, seed=0):
    """An n x d matrix U diag(s) V^T with random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return u @ torch.diag(torch.tensor(s, dtype=torch.float64)) @ v.T


def test_rank_measures_on_known_singular_values():
    s = [50.0, 30.0, 19.0, 1.0, 0.0, 0.0]
    got = mm.rank_measures(with_singular_values(s))
    p = [x / 100 for x in s if x > 0]
    assert got["effective_rank"] == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-9)
    assert got["rank99"] == 3  # 50 + 30 + 19 = 99% of the sum
    assert got["stable_rank"] == pytest.approx((50**2 + 30**2 + 19**2 + 1) / 50**2, rel=1e-9)
    flat = mm.rank_measures(with_singular_values([2.0] * 4 + [0.0, 0.0]))
    assert (
        flat["effective_rank"] == pytest.approx(4.0)
        and flat["rank99"] == 4
        and flat["stable_rank"] == pytest.approx(4.0)
    )
    assert mm.rank99(torch.tensor([98.0, 1.0, 1.0])) == 2
    assert mm.rank99(torch.tensor([99.0, 1.0])) == 1


class HandModel(nn.Module):
    """acts = [relu(x) (N x 3 x 2 x 2), relu(fc(x.mean))]; the fc units are active on a known
    fraction of samples; logits = head(features)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2).double()
        self.head = nn.Linear(2, C).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
            self.fc.bias.zero_()
            self.head.weight.copy_(torch.eye(C, 2, dtype=torch.float64))
            self.head.bias.zero_()

    def forward(self, x, return_acts=False):
        h1 = torch.relu(x)
        h2 = torch.relu(self.fc(x.mean((2, 3))))
        logits = self.head(h2)
        return Forward(logits, [h1, h2], h2) if return_acts else logits


def hand_data(n=200):
    """Channel 0 > 0 everywhere on sample 0 only (rate 4/800 = 0.005 < 0.01: dormant);
    channel 1 > 0 at 2 of 4 positions of samples 0..3 (rate 8/800 = 0.01: not dormant);
    channel 2 > 0 everywhere (rate 1). fc unit 0 fires on sample 0 only (rate 0.005: dormant),
    unit 1 on every other sample."""
    x = -torch.ones(n, 3, 2, 2, dtype=torch.float64)
    x[0, 0] = 1.0
    x[:4, 1, 0] = 1.0
    x[:, 2] = 1.0
    return x, torch.zeros(n, dtype=torch.long)


def test_dormant_units_on_hand_built_model():
    x, y = hand_data()
    got = mm.model_metrics(HandModel(), x, y, class_mask(range(2), C), batch_size=64)
    assert got["n_samples"] == 200 and not got["faithful"]
    assert got["dormant_frac_L0"] == pytest.approx(1 / 3)
    assert got["dormant_frac_L1"] == pytest.approx(1 / 2)
    assert got["dormant_frac"] == pytest.approx(2 / 5)
    # predictions: class 0 iff unit 0 > unit 1, i.e. sample 0 only; all labels are 0
    assert got["accuracy"] == pytest.approx(1 / 200)


def test_mean_abs_weight_and_metrics_independent_of_batch_size():
    model = HandModel()
    # |.| sums to 4 (fc weight 1 and -1, two ones in the head) over 6 + 2 + 2C + C entries
    assert mm.mean_abs_weight(model) == pytest.approx(4 / (6 + 2 + 2 * C + C))
    torch.manual_seed(0)
    cnn = SmallCNN(C, 1, width=4).double()
    x = torch.randn(50, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (50,))
    a = mm.model_metrics(cnn, x, y, class_mask(range(4), C), batch_size=7)
    b = mm.model_metrics(cnn, x, y, class_mask(range(4), C), batch_size=50)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-9), k


def bn_model():
    torch.manual_seed(0)
    model = SmallCNN(C, 1, width=4).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return model


def test_faithful_mode_uses_one_seeded_batch_with_batch_statistics():
    model = bn_model()
    model.train()
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(1200, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (1200,))
    mask = class_mask(range(4), C)
    f0 = mm.model_metrics(model, x, y, mask, faithful=True, seed=0)
    f0b = mm.model_metrics(model, x, y, mask, faithful=True, seed=0)
    f1 = mm.model_metrics(model, x, y, mask, faithful=True, seed=1)
    ev = mm.model_metrics(model, x, y, mask)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and all(m.training for m in model.modules())
    assert f0 == f0b and f0["n_samples"] == 1000 and f0["faithful"] and ev["n_samples"] == 1200
    assert f0["effective_rank"] != f1["effective_rank"]
    assert f0["effective_rank"] != pytest.approx(ev["effective_rank"])
    # the same batch through a genuine train-mode forward gives the same features
    idx = torch.randperm(1200, generator=torch.Generator().manual_seed(0))[:1000].sort().values
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        feats = ref(x[idx], return_acts=True).features
    assert f0["effective_rank"] == pytest.approx(mm.rank_measures(feats)["effective_rank"], rel=1e-9)


def test_per_class_accuracy_by_hand():
    model = HandModel()
    x, _ = hand_data(6)
    x[1, 0] = 1.0  # samples 0, 1 predict class 0; others predict class 1
    labels = torch.tensor([0, 0, 1, 1, 1, 0])
    df = mm.per_class_accuracy(model, x, labels, class_mask(range(2), C), batch_size=4)
    assert df["class"].tolist() == [0, 1] and df["n"].tolist() == [3, 3]
    assert df["accuracy"].tolist() == pytest.approx([2 / 3, 1.0])
    # masking out class 1 makes class 0 the only choice
    only0 = mm.per_class_accuracy(model, x, labels, class_mask([0], C))
    assert only0["accuracy"].tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueError, match="outside the class mask"):
        mm.model_metrics(model, x, labels, class_mask([0], C))
