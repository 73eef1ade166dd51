"""Tests of lib.manifolds.inpca: Bhattacharyya distances and intensive PCA (chapter 2, eqs. 2.2.2-2.2.9).

References are independent of the code under test: numpy broadcasts / explicit loops,
numpy eigensolvers on explicitly built centring matrices, PCA by SVD, brute-force
Frobenius norms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from lib.manifolds import inpca as I

F64 = torch.float64


def random_probs(rng, m, N, C, sharp=1.0):
    z = sharp * rng.standard_normal((m, N, C))
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def numpy_bhattacharyya(P, Q):
    """d_B by explicit loops over models and a broadcast over samples/classes."""
    out = np.empty((P.shape[0], Q.shape[0]))
    for a in range(P.shape[0]):
        for b in range(Q.shape[0]):
            out[a, b] = -np.mean(np.log(np.sum(np.sqrt(P[a] * Q[b]), axis=-1)))
    return out


def random_bhattacharyya_matrix(seed=0, m=12, N=3, C=4):
    """Few samples, peaked distributions: d_B is far from Euclidean and W has negative eigenvalues."""
    P = random_probs(np.random.default_rng(seed), m, N, C, sharp=4.0)
    return I.bhattacharyya(torch.tensor(P)), P


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 5), k=st.integers(1, 4), N=st.integers(1, 9), C=st.integers(1, 5),
       chunk=st.sampled_from([None, 1, 2, 3, 100]), seed=st.integers(0, 1000))
def test_blocked_equals_direct(m, k, N, C, chunk, seed):
    rng = np.random.default_rng(seed)
    P, Q = random_probs(rng, m, N, C), random_probs(rng, k, N, C)
    d = I.bhattacharyya(torch.tensor(P), torch.tensor(Q), chunk=chunk)
    assert d.dtype == F64 and d.shape == (m, k)
    np.testing.assert_allclose(d.numpy(), numpy_bhattacharyya(P, Q), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("chunk", [None, 1, 4, 7, 50])
def test_self_distances_symmetric_zero_diagonal(chunk):
    P = random_probs(np.random.default_rng(1), 6, 13, 5)
    d = I.bhattacharyya(torch.tensor(P), chunk=chunk).numpy()
    np.testing.assert_array_equal(d, d.T)
    np.testing.assert_array_equal(np.diag(d), 0.0)
    assert (d >= 0).all()
    ref = numpy_bhattacharyya(P, P)
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(d, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("tile", [1, 3, 5, 256])
def test_tiles_and_product_of_overlaps_equal_sum_of_logs(tile):
    """Output tiles that do not divide m, and samples whose overlaps are tiny or exactly zero:
    blocks mixing them must fall back to clamped logs, the rest take the product path."""
    rng = np.random.default_rng(7)
    m, k, N, C, floor = 7, 4, 40, 3, 1e-250
    P, Q = random_probs(rng, m, N, C, sharp=3.0), random_probs(rng, k, N, C, sharp=3.0)
    P[2, 5] = [1.0, 0.0, 0.0]             # disjoint from Q[1, 5]: overlap exactly 0
    Q[1, 5] = [0.0, 0.5, 0.5]
    P[3, 20:23] = [1 - 2e-200, 1e-200, 1e-200]   # overlaps ~1e-100 with one-hot-ish rows of Q
    Q[0, 20:23] = [1e-200, 1 - 2e-200, 1e-200]
    ref = np.empty((m, k))
    for a in range(m):
        for b in range(k):
            overlap = np.clip(np.sum(np.sqrt(P[a] * Q[b]), axis=-1), floor, 1.0)
            ref[a, b] = -np.mean(np.log(overlap))
    d = I.bhattacharyya(torch.tensor(P), torch.tensor(Q), tile=tile, floor=floor).numpy()
    np.testing.assert_allclose(d, ref, rtol=1e-12, atol=1e-13)
    assert d[2, 1] > -np.log(floor) / N * 0.99          # the zero overlap hit the floor
    S = np.concatenate([P, Q])
    ds = I.bhattacharyya(torch.tensor(S), tile=tile, floor=floor).numpy()
    np.testing.assert_array_equal(ds, ds.T)
    np.testing.assert_allclose(ds[:m, m:], ref, rtol=1e-12, atol=1e-13)


def test_average_over_samples():
    rng = np.random.default_rng(2)
    P1, P2 = random_probs(rng, 4, 7, 3), random_probs(rng, 4, 11, 3)
    d1, d2 = I.bhattacharyya(torch.tensor(P1)), I.bhattacharyya(torch.tensor(P2))
    d12 = I.bhattacharyya(torch.tensor(np.concatenate([P1, P2], axis=1)), chunk=5)
    np.testing.assert_allclose(d12.numpy(), ((7 * d1 + 11 * d2) / 18).numpy(), rtol=1e-12, atol=1e-14)


def test_log_input_and_float32():
    rng = np.random.default_rng(3)
    P, Q = random_probs(rng, 3, 8, 4), random_probs(rng, 5, 8, 4)
    ref = I.bhattacharyya(torch.tensor(P), torch.tensor(Q))
    got = I.bhattacharyya(torch.tensor(np.log(P)), torch.tensor(np.log(Q)), log=True, chunk=3)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-14)
    got32 = I.bhattacharyya(torch.tensor(P, dtype=torch.float32), torch.tensor(Q, dtype=torch.float32))
    assert got32.dtype == F64
    np.testing.assert_allclose(got32.numpy(), ref.numpy(), atol=1e-5)


def test_zero_overlap_is_clamped_and_truth_is_half_cross_entropy():
    # one-hot "truth" vs a model: d_B = -(1/N) sum_n log sqrt(p^n(y_n)) = cross-entropy / 2
    rng = np.random.default_rng(4)
    p = random_probs(rng, 1, 10, 3)
    y = rng.integers(0, 3, size=10)
    truth = np.eye(3)[y][None]
    d = I.bhattacharyya(torch.tensor(p), torch.tensor(truth)).item()
    assert d == pytest.approx(-0.5 * np.mean(np.log(p[0, np.arange(10), y])), rel=1e-12)
    other = np.eye(3)[(y + 1) % 3][None]      # disjoint supports: overlap 0 on every sample
    d = I.bhattacharyya(torch.tensor(truth), torch.tensor(other), floor=1e-20).item()
    assert d == pytest.approx(-np.log(1e-20))


def test_isometry_with_negative_eigenvalues():
    D, _ = random_bhattacharyya_matrix()
    model = I.InPCA().fit(D)
    assert (model.signs_ == -1).any() and (model.signs_ == 1).any()
    assert model.eigenvalues_.min() < -1e-2 * model.eigenvalues_.max()   # genuinely time-like
    lam = model.eigenvalues_.abs().numpy()
    assert (np.diff(lam) <= 1e-15).all()
    back = I.minkowski_sq_distances(model.embedding_, model.signs_)
    np.testing.assert_allclose(back.numpy(), D.numpy(), atol=1e-9)
    # the eigenvalues are those of -L D L / 2 with the explicit centring matrix L
    m = D.shape[0]
    L = np.eye(m) - 1.0 / m
    W = -L @ D.numpy() @ L / 2
    ref = np.linalg.eigvalsh(W)
    np.testing.assert_allclose(np.sort(model.eigenvalues_.numpy()), np.sort(ref), atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(m=st.integers(3, 10), dim=st.integers(1, 4), seed=st.integers(0, 1000))
def test_euclidean_points_give_pca(m, dim, seed):
    X = np.random.default_rng(seed).standard_normal((m, dim))
    D = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    q = min(dim, m - 1)
    model = I.InPCA(n_components=q).fit(torch.tensor(D))
    Xc = X - X.mean(0)
    gram = np.sort(np.linalg.eigvalsh(Xc @ Xc.T))[::-1][:q]
    np.testing.assert_allclose(model.eigenvalues_.numpy(), gram, atol=1e-9)
    assert (model.signs_ == 1).all()
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    scores = U[:, :q] * S[:q]
    emb = model.embedding_.numpy()
    for j in range(q):
        if S[j] ** 2 < 1e-8 or (j + 1 < len(S) and abs(S[j] - S[j + 1]) < 1e-6 * S[0]):
            continue   # degenerate component: defined only up to rotation
        flip = np.sign(emb[:, j] @ scores[:, j])
        np.testing.assert_allclose(flip * emb[:, j], scores[:, j], atol=1e-8)


def test_explained_stress_brute_force():
    # the default is (2.2.8) as defined, 1 - ||W - W_k||_F / ||W||_F; squared=True drops the root
    D, _ = random_bhattacharyya_matrix(seed=5, m=9)
    model = I.InPCA().fit(D)
    m = D.shape[0]
    L = np.eye(m) - 1.0 / m
    W = -L @ D.numpy() @ L / 2
    lam, U = np.linalg.eigh(W)
    assert (lam < -1e-12).any()          # indefinite: time-like components count by |lambda|
    order = np.argsort(-np.abs(lam), kind="stable")
    lam, U = lam[order], U[:, order]
    prev = prev_sq = 0.0
    for k in range(1, m + 1):
        Wk = (U[:, :k] * lam[:k]) @ U[:, :k].T
        ratio = np.linalg.norm(W - Wk) / np.linalg.norm(W)
        es, es_sq = model.explained_stress(k), model.explained_stress(k, squared=True)
        assert es == pytest.approx(1 - ratio, abs=1e-7)
        assert es_sq == pytest.approx(1 - ratio ** 2, abs=1e-10)
        assert es <= es_sq + 1e-12
        assert es >= prev - 1e-12 and es_sq >= prev_sq - 1e-12
        prev, prev_sq = es, es_sq
    assert model.explained_stress(m) == pytest.approx(1.0)
    assert model.explained_stress(m, squared=True) == pytest.approx(1.0)
    # a truncated fit reports the same stress (it keeps the whole spectrum for the denominator)
    for squared in (False, True):
        assert I.InPCA(n_components=3).fit(D).explained_stress(2, squared=squared) == pytest.approx(
            model.explained_stress(2, squared=squared))


def test_explained_stress_by_hand():
    # four points (+-2, 0), (0, +-1): the centred Gram matrix W has eigenvalues 8, 2, 0, 0, so
    # one component leaves sqrt(2^2 / (8^2 + 2^2)) = 1/sqrt(17) of ||W||_F unexplained
    x = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    D = torch.cdist(x, x) ** 2
    model = I.InPCA().fit(D)
    np.testing.assert_allclose(model.all_eigenvalues_.numpy(), [8.0, 2.0, 0.0, 0.0], atol=1e-12)
    assert model.explained_stress(1) == pytest.approx(1 - 1 / np.sqrt(17), abs=1e-12)
    assert model.explained_stress(1, squared=True) == pytest.approx(16 / 17, abs=1e-12)
    assert model.explained_stress(2) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(TypeError, match="squared"):
        model.explained_stress(1, squared="yes")


def test_transform_recovers_fitted_points():
    D, P = random_bhattacharyya_matrix(seed=6, m=10)
    for nc in (None, 4):
        model = I.InPCA(n_components=nc).fit(D)
        idx = [0, 3, 7]
        got = model.transform(D[idx])
        k = model.eigenvalues_.shape[0]
        big = model.eigenvalues_.abs() > 1e-10 * model.eigenvalues_.abs().max()
        np.testing.assert_allclose(got[:, big].numpy(), model.embedding_[idx][:, big].numpy(), atol=1e-8)
        assert got.shape == (3, k)
        if nc is None:   # time-like coordinates come back with the right sign too
            assert (model.signs_[big] == -1).any()
    # a genuinely new model: distances computed with bhattacharyya against the fitted ones
    new = random_probs(np.random.default_rng(7), 2, P.shape[1], P.shape[2], sharp=4.0)
    x = I.InPCA().fit(D).transform(I.bhattacharyya(torch.tensor(new), torch.tensor(P)))
    assert x.shape == (2, 10) and torch.isfinite(x).all()


def test_transform_euclidean_new_point_is_exact():
    # for Euclidean points the Gower formula places a new point exactly (PCA projection)
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((8, 3)), rng.standard_normal((1, 3))
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    model = I.InPCA(n_components=3).fit(torch.tensor(D))
    xy = model.transform(torch.tensor(((y - X) ** 2).sum(-1)[None]))
    emb = np.vstack([model.embedding_.numpy(), xy.numpy()])
    Dall = ((np.vstack([X, y])[:, None] - np.vstack([X, y])[None]) ** 2).sum(-1)
    np.testing.assert_allclose(((emb[:, None] - emb[None]) ** 2).sum(-1), Dall, atol=1e-9)


def test_bad_inputs():
    P = torch.tensor(random_probs(np.random.default_rng(9), 3, 4, 2))
    neg = P.clone()
    neg[0, 0] = torch.tensor([1.5, -0.5], dtype=F64)
    with pytest.raises(ValueError, match="negative"):
        I.bhattacharyya(neg)
    with pytest.raises(ValueError, match="sum to 1"):
        I.bhattacharyya(P * 1.01)
    with pytest.raises(ValueError, match="sum to 1"):
        I.bhattacharyya(torch.log(P) - 0.1, log=True)
    with pytest.raises(ValueError, match="same \\(N, C\\)"):
        I.bhattacharyya(P, P[:, :3])
    with pytest.raises(ValueError, match="shape"):
        I.bhattacharyya(P[0])
    with pytest.raises(TypeError):
        I.bhattacharyya(P.numpy())
    with pytest.raises(TypeError):
        I.bhattacharyya(torch.ones(2, 2, 1, dtype=torch.int64))
    nan = P.clone()
    nan[1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        I.bhattacharyya(nan)
    with pytest.raises(TypeError):
        I.bhattacharyya(P, chunk=1.5)
    D = I.bhattacharyya(P)
    asym = D.clone()
    asym[0, 1] += 1e-3
    with pytest.raises(ValueError, match="symmetric"):
        I.InPCA().fit(asym)
    with pytest.raises(ValueError, match="square"):
        I.InPCA().fit(D[:2])
    Dn = D.clone()
    Dn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        I.InPCA().fit(Dn)
    with pytest.raises(ValueError, match="n_components"):
        I.InPCA(n_components=5).fit(D)
    with pytest.raises(RuntimeError, match="not fitted"):
        I.InPCA().transform(D)
    with pytest.raises(ValueError, match="shape"):
        I.InPCA().fit(D).transform(D[:, :2])
    with pytest.raises(ValueError, match="signs"):
        I.minkowski_sq_distances(torch.ones(3, 2, dtype=F64), torch.tensor([1.0, 0.5]))


def test_embed_log_probs_and_stress_profile():
    from lib.manifolds import inpca as lib_inpca
    P = torch.softmax(torch.randn(6, 20, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64), -1)
    D, fit = lib_inpca.embed_log_probs(P.log(), n_components=50)
    assert torch.allclose(D, lib_inpca.bhattacharyya(P)) and fit.embedding_.shape == (6, 6)
    ks, root, squared = lib_inpca.stress_profile(fit, ks=(1, 3, 10))
    assert ks == [1, 3] and root == [fit.explained_stress(1), fit.explained_stress(3)]
    assert all(r <= s + 1e-12 for r, s in zip(root, squared))


def test_percent_never_rounds_a_share_below_one_to_100():
    from lib.book.report import percent
    assert percent(0.5) == "50 %" and percent(0.99996) == "99.996 %" and percent(1.0) == "100 %"
