"""lib's operators agree with curvlinops, an independent implementation, in float64."""

import pytest
import torch
from torch import nn

from lib import curvature

curvlinops = pytest.importorskip("curvlinops")


@pytest.mark.parametrize("loss_fn", [nn.CrossEntropyLoss(), nn.MSELoss(reduction="sum")])
def test_products_agree_with_curvlinops(loss_fn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 4)).double()
    X = torch.randn(23, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (23,)) if isinstance(loss_fn, nn.CrossEntropyLoss) \
        else torch.randn(23, 4, dtype=torch.float64)
    data = [(X[:10], y[:10]), (X[10:], y[10:])]
    params = list(model.parameters())
    pairs = [
        (curvature.hessian(model, loss_fn, data), curvlinops.HessianLinearOperator),
        (curvature.ggn(model, loss_fn, data), curvlinops.GGNLinearOperator),
        (curvature.fisher(model, loss_fn, data, "empirical"), curvlinops.EFLinearOperator),
    ]
    V = torch.randn(pairs[0][0].shape[0], 3, dtype=torch.float64)
    for ours, theirs in pairs:
        reference = theirs(model, loss_fn, params, data, check_deterministic=False) @ V
        torch.testing.assert_close(ours @ V, reference, rtol=1e-10, atol=1e-12)
