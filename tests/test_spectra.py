"""lib.curvature.spectra against dense float64 references computed here from the definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from lib.curvature.spectra import (activation_gradient_spectra, activation_spectra, input_spectrum,
                                   logit_jacobian_spectrum)

pytestmark = pytest.mark.usefixtures("float64_default")


def _problem(n=9):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    X = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, X, y


def _eig(M):
    return torch.linalg.eigvalsh(M).sort(descending=True).values


def test_input_and_activation_spectra_are_second_moments_of_each_layers_input():
    model, X, y = _problem()
    torch.testing.assert_close(input_spectrum(X), _eig(X.T @ X / len(X)))
    spectra = activation_spectra(model, nn.CrossEntropyLoss(), (X, y))
    assert list(spectra) == ["0", "2"]
    torch.testing.assert_close(spectra["0"], _eig(X.T @ X / len(X)))
    H = torch.tanh(model[0](X)).detach()
    torch.testing.assert_close(spectra["2"], _eig(H.T @ H / len(X)))


def test_activation_gradient_spectrum_of_the_logits_is_that_of_the_loss_gradients():
    model, X, y = _problem()
    spectra = activation_gradient_spectra(model, nn.CrossEntropyLoss(), (X, y), kind="empirical")
    with torch.no_grad():
        S = model(X).softmax(dim=1) - nn.functional.one_hot(y, 3)   # d loss_n / d logits
    torch.testing.assert_close(spectra["2"], _eig(S.T @ S / len(X)))   # mean reduction: c = 1 / N
    exact = activation_gradient_spectra(model, nn.CrossEntropyLoss(), (X, y))
    with torch.no_grad():
        p = model(X).softmax(dim=1)
    M = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).sum(0) / len(X)  # expected over labels
    torch.testing.assert_close(exact["2"], _eig(M))


def test_the_logit_jacobian_spectrum_is_that_of_the_dense_jacobian_correlations():
    model, X, _ = _problem()
    params = {k: v.detach() for k, v in model.named_parameters()}
    J = jacrev(lambda p: functional_call(model, p, (X,)))(params)          # {name: (N, C, *shape)}
    J = torch.cat([j.reshape(len(X), 3, -1) for j in J.values()], dim=2)    # (N, C, d)
    dense = _eig(torch.einsum("nci,ncj->ij", J, J) / len(X))
    got = logit_jacobian_spectrum(model, X)
    assert got.shape == (len(X) * 3,)
    torch.testing.assert_close(got, dense[:len(got)].clamp_min(0.0), atol=1e-12, rtol=1e-10)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="non-empty"):
        input_spectrum(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="non-empty"):
        logit_jacobian_spectrum(nn.Linear(3, 2), torch.zeros(0, 3))
