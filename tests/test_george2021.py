"""The measures of NNGeometry's Section 3 (lib.sources.george2021) against hand computations."""

import math

import pytest
import torch

from lib.operators import DenseOperator
from lib.sources.george2021 import (DAMPINGS, approximation_quality, pick_checkpoints, projection_accuracy,
                                    unit_vectors)


def spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    return B @ B.T / (2 * d)


def test_the_damping_grid_is_the_sources():
    assert len(DAMPINGS) == 14
    assert DAMPINGS[0] == pytest.approx(1e-4) and DAMPINGS[-1] == pytest.approx(10 ** -0.75)
    assert all(b / a == pytest.approx(10 ** 0.25) for a, b in zip(DAMPINGS, DAMPINGS[1:]))


def test_unit_vectors_are_on_the_sphere_and_seeded():
    V = unit_vectors(30, 4, seed=3)
    torch.testing.assert_close(torch.linalg.vector_norm(V, dim=0), torch.ones(4, dtype=torch.float64))
    assert torch.equal(V, unit_vectors(30, 4, seed=3)) and not torch.equal(V, unit_vectors(30, 4, seed=4))


def test_an_exact_approximation_scores_perfectly():
    F = DenseOperator(spd(12, 0))
    q = approximation_quality(F, F, unit_vectors(12, 3, seed=0))
    assert float(q["trace"]) < 1e-14 and float(q["vTMv"].max()) < 1e-12
    torch.testing.assert_close(q["cos_Mv"], torch.ones(3, dtype=torch.float64))
    for order in ("text", "code"):
        torch.testing.assert_close(q[f"solve_cos_{order}"], torch.ones(14, 3, dtype=torch.float64))
        assert float(q[f"solve_residual_{order}"].max()) < 1e-9


def test_the_measures_match_a_hand_computation_in_both_orders():
    A, B = spd(10, 1), torch.diag(torch.diagonal(spd(10, 1)))  # B: the diagonal of A, they do not commute
    V = unit_vectors(10, 2, seed=2)
    q = approximation_quality(DenseOperator(A), DenseOperator(B), V, dampings=[1e-3, 0.1])
    assert float(q["trace"]) < 1e-14  # a diagonal has the exact trace
    for j in range(2):
        v = V[:, j]
        assert float(q["vTMv"][j]) == pytest.approx(float(abs(v @ B @ v - v @ A @ v) / (v @ A @ v)), rel=1e-10)
        assert float(q["cos_Mv"][j]) == pytest.approx(float(torch.cosine_similarity(A @ v, B @ v, dim=0)), rel=1e-12)
        for i, lam in enumerate([1e-3, 0.1]):
            I = torch.eye(10, dtype=torch.float64)
            text = torch.linalg.solve(B + lam * I, (A + lam * I) @ v)
            code = (A + lam * I) @ torch.linalg.solve(B + lam * I, v)
            assert float(q["solve_cos_text"][i, j]) == pytest.approx(float(torch.cosine_similarity(v, text, dim=0)), rel=1e-10)
            assert float(q["solve_cos_code"][i, j]) == pytest.approx(float(torch.cosine_similarity(v, code, dim=0)), rel=1e-10)
            assert float(q["solve_residual_text"][i, j]) == pytest.approx(float((v - text).norm()), rel=1e-10)
            assert float(q["solve_residual_code"][i, j]) == pytest.approx(float((v - code).norm()), rel=1e-10)
    assert not torch.allclose(q["solve_cos_text"], q["solve_cos_code"])  # the two orders differ


def test_bad_inputs_of_the_quality_measures():
    F = DenseOperator(spd(5, 0))
    with pytest.raises(ValueError, match="differ in shape"):
        approximation_quality(F, DenseOperator(spd(6, 0)), unit_vectors(5, 1, seed=0))
    with pytest.raises(ValueError, match="vectors must be"):
        approximation_quality(F, F, unit_vectors(6, 1, seed=0))
    with pytest.raises(ValueError, match="dampings"):
        approximation_quality(F, F, unit_vectors(5, 1, seed=0), dampings=[0.0])


def test_pick_checkpoints():
    assert pick_checkpoints([0.1, 0.3, 0.6, 0.9, 0.85, 0.9], 0.5) == {"init": 0, "during": 2, "best": 3}
    assert pick_checkpoints([0.7, 0.2, 0.4], 0.3) == {"init": 0, "during": 2, "best": 2}  # epoch 0 never counts
    with pytest.raises(ValueError, match="no epoch reaches"):
        pick_checkpoints([0.1, 0.2], 0.5)
    with pytest.raises(ValueError, match="during"):
        pick_checkpoints([0.1, 0.2], 1.5)
    with pytest.raises(ValueError, match="epoch 0"):
        pick_checkpoints([0.1], 0.5)


def test_projection_accuracy():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    separable = torch.randn(40, 2, generator=g) + 4.0 * labels[:, None]
    assert projection_accuracy(separable, labels) == 1.0
    mixed = torch.randn(400, 2, generator=g)
    assert projection_accuracy(mixed, torch.arange(400) % 2) < 0.65
    with pytest.raises(ValueError, match="two classes"):
        projection_accuracy(separable, torch.zeros(40))


def test_the_study_measures_every_representation_and_floor_over_draws():
    from torch import nn
    from lib.sources.george2021 import APPROXIMATIONS, FLOORS, representation_study
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 16, 3)).double()
    X = torch.randn(12, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    out = representation_study(model, nn.CrossEntropyLoss(), (X, y), draws=2, num_samples=3, num_vectors=2,
                               dampings=[1e-2, 1e-1])
    assert set(out) == {*APPROXIMATIONS, *FLOORS}
    for name, measures in out.items():
        assert measures["trace"].shape == (2,) and measures["cos_Mv"].shape == (2, 2)
        assert measures["solve_cos_code"].shape == (2, 2, 2)
    # the exact floor against independent dense Fishers: the reference of draw 0 is the MC Fisher of seed 0
    from lib.curvature.dense import dense_fisher
    from lib.curvature import fisher
    exact = dense_fisher(model, nn.CrossEntropyLoss(), (X, y), "exact")
    reference = fisher(model, nn.CrossEntropyLoss(), (X, y), "mc", representation="dense", num_samples=3, seed=0).to_dense()
    want = abs(float(torch.trace(exact) - torch.trace(reference))) / float(torch.trace(reference))
    assert float(out["exact Fisher"]["trace"][0]) == pytest.approx(want, rel=1e-8)
    assert float(out["exact Fisher"]["cos_Mv"].min()) > float(out["diagonal"]["cos_Mv"].min())
    # a reference too large for its low-rank factor is held implicitly: the same matrices, so the
    # same measures, except that the floors' solves (which would need CG) are skipped
    implicit = representation_study(model, nn.CrossEntropyLoss(), (X, y), draws=2, num_samples=3, num_vectors=2,
                                    dampings=[1e-2, 1e-1], max_numbers=100)
    for name, measures in out.items():
        for key, value in measures.items():
            if name in FLOORS and key.startswith("solve"):
                assert bool(implicit[name][key].isnan().all()), (name, key)
            else:
                torch.testing.assert_close(implicit[name][key], value, rtol=1e-7, atol=1e-12)


def test_stored_numbers_counts_what_a_representation_keeps():
    from torch import nn
    from lib import curvature
    from lib.operators import DiagonalOperator
    from lib.sources.george2021 import stored_numbers
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()   # d = 26
    data = (torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,)))
    F = lambda rep: curvature.fisher(model, nn.CrossEntropyLoss(), data, representation=rep)  # noqa: E731
    assert stored_numbers(F("dense")) == 26 * 26
    assert stored_numbers(F("diagonal")) == 26
    assert stored_numbers(F("low_rank")) == 5 * (2 - 1) * 26     # N (C - 1) rows of d numbers
    assert stored_numbers(F("quasi_diagonal")) == 26 + 4 * 3 + 2 * 4  # diagonal, cross terms, no indices
    assert stored_numbers(F("implicit")) == 0                   # recomputed from model and data
    kfac = stored_numbers(F("kfac"))                            # A (in x in), G (out x out), bias factor
    assert 3 * 3 + 4 * 4 + 4 * 4 + 2 * 2 <= kfac < 26 * 26
    d = torch.ones(4)
    assert stored_numbers([DiagonalOperator(d), DiagonalOperator(d)]) == 4  # one tensor counted once


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_representation_sizes_predict_what_each_representation_stores(arch):
    from torch import nn
    from lib import curvature
    from lib.curvature.representations import REPRESENTATIONS
    from lib.sources.george2021 import representation_sizes, stored_numbers
    torch.manual_seed(0)
    if arch == "mlp":
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3, bias=False), nn.Tanh(),
                              nn.Linear(3, 3)).double()
        X = torch.randn(5, 3, dtype=torch.float64)
    else:
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 3)).double()
        X = torch.randn(5, 1, 5, 5, dtype=torch.float64)
    data = (X, torch.randint(0, 3, (5,)))
    sizes = representation_sizes(model, 5, 3)
    for rep in REPRESENTATIONS:
        op = curvature.fisher(model, nn.CrossEntropyLoss(), data, representation=rep)
        assert sizes[rep] == stored_numbers(op), rep


def test_the_chapters_networks():
    from lib.book.models import num_parameters
    from lib.sources.george2021 import network, representation_sizes
    small = network("small_resnet", 1, 10, width=4, blocks=1, seed=0)
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown architecture 'vgg'.*resnet50"):
        network("vgg", 1, 10, width=4, blocks=1, seed=0)
    big = network("resnet50", 3, 200, width=4, blocks=1, seed=0)
    sizes = representation_sizes(big, 500, 200)
    assert sizes["dense"] == num_parameters(big) ** 2   # about 5.7e14 numbers: 2.3 PB in float32
    assert sizes["kfac"] < 2 * 10 ** 8 and sizes["ekfac"] < 2 * 10 ** 8


def test_resnet50_without_normalization_is_the_sources_24m_parameter_network():
    from torch import nn
    from lib.book.models import num_parameters
    from lib.sources.george2021 import resnet50
    state = torch.random.get_rng_state()
    net = resnet50(seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # a seeded build leaves the global generator alone
    assert num_parameters(net) == 23_864_712  # "a 24M parameters Resnet50" on 200 classes
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 200)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), resnet50(seed=0).parameters()))
    assert resnet50(1, 10, seed=1)(torch.randn(1, 1, 8, 8)).shape == (1, 10)  # any input size and channels
