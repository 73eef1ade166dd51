"""Tests of lib.manifolds.trajectories: geodesics, progress, trajectory distances, ensemble means (chapter 2,
eqs. 2.2.3-2.2.5, Table 2.3) and the iterative top-k InPCA.

References are independent of the code under test: the great-circle formula (2.2.3) written
out in numpy, scipy's bounded scalar minimiser, brute-force grids, explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.optimize import minimize_scalar

from lib.manifolds import inpca as I
from lib.manifolds import trajectories as TR

F64 = torch.float64


def random_probs(rng, shape, sharp=1.0):
    z = sharp * rng.standard_normal(shape)
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def numpy_geodesic(p, q, a):
    """(2.2.3) per sample, literally: arccos for d^n, the sin ratios, squares."""
    d = np.arccos(np.clip(np.sum(np.sqrt(p * q), -1), 0, 1))[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.where(d > 1e-12, (np.sin((1 - a) * d) * np.sqrt(p) + np.sin(a * d) * np.sqrt(q)) / np.sin(d),
                        (1 - a) * np.sqrt(p) + a * np.sqrt(q))
    r = root ** 2
    return r / r.sum(-1, keepdims=True)


def numpy_dG(p, q):
    return np.mean(np.arccos(np.clip(np.sum(np.sqrt(p * q), -1), 0, 1)), -1)


# --------------------------------------------------------------------------- ignorance, truth, geodesic

def test_ignorance_and_truth():
    P0 = TR.ignorance(3, 4)
    assert P0.dtype == F64 and P0.shape == (3, 4) and torch.all(P0 == 0.25)
    y = torch.tensor([2, 0, 1])
    T = TR.truth(y)
    assert T.dtype == F64 and T.shape == (3, 3)
    np.testing.assert_array_equal(T.numpy(), np.eye(3)[[2, 0, 1]])
    assert TR.truth(y, 5).shape == (3, 5)
    with pytest.raises(ValueError, match="labels must lie in"):
        TR.truth(y, 2)
    with pytest.raises(ValueError, match="labels"):
        TR.truth(torch.tensor([-1, 0]))
    with pytest.raises(TypeError, match="integer"):
        TR.truth(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        TR.truth(torch.zeros(2, 2, dtype=torch.long))


def test_geodesic_matches_formula_endpoints_and_constant_speed():
    rng = np.random.default_rng(0)
    p, q = random_probs(rng, (6, 4), 2.0), random_probs(rng, (6, 4), 2.0)
    P, Q = torch.tensor(p), torch.tensor(q)
    for a in (0.0, 0.25, 0.5, 0.9, 1.0):
        g = TR.geodesic(P, Q, a)
        assert g.shape == (6, 4) and g.dtype == F64
        np.testing.assert_allclose(g.numpy(), numpy_geodesic(p, q, a), atol=1e-12)
        np.testing.assert_allclose(g.sum(-1).numpy(), 1.0, atol=1e-14)
        # constant speed: every sample's angle from P is alpha times the total angle
        np.testing.assert_allclose(TR.geodesic_distance(g, P).item(), a * numpy_dG(p, q), atol=1e-9)
    np.testing.assert_allclose(TR.geodesic(P, Q, 0.0).numpy(), p, atol=1e-14)
    np.testing.assert_allclose(TR.geodesic(P, Q, 1.0).numpy(), q, atol=1e-14)
    alphas = torch.tensor([0.1, 0.6, 0.3], dtype=F64)
    many = TR.geodesic(P, Q, alphas)
    assert many.shape == (3, 6, 4)
    for i, a in enumerate(alphas.tolist()):
        np.testing.assert_allclose(many[i].numpy(), numpy_geodesic(p, q, a), atol=1e-12)


def test_geodesic_identical_rows_and_batches():
    rng = np.random.default_rng(1)
    p, q = random_probs(rng, (5, 3)), random_probs(rng, (5, 3))
    q[2] = p[2]                                       # d^n = 0 on one sample
    P, Q = torch.tensor(p), torch.tensor(q)
    g = TR.geodesic(P, Q, torch.linspace(0, 1, 7, dtype=F64))
    assert torch.isfinite(g).all()
    np.testing.assert_allclose(g[:, 2].numpy(), np.broadcast_to(p[2], (7, 3)), atol=1e-14)
    same = TR.geodesic(P, P, 0.37)
    np.testing.assert_allclose(same.numpy(), p, atol=1e-14)
    # batched: (m, N, C) pairs with (m,) alphas, elementwise; a shared (N, C) end point
    pb, qb = random_probs(rng, (4, 5, 3)), random_probs(rng, (4, 5, 3))
    al = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=F64)
    gb = TR.geodesic(torch.tensor(pb), torch.tensor(qb), al)
    assert gb.shape == (4, 5, 3)
    for i in range(4):
        np.testing.assert_allclose(gb[i].numpy(), numpy_geodesic(pb[i], qb[i], al[i].item()), atol=1e-12)
    gs = TR.geodesic(torch.tensor(pb), Q, 0.4)
    for i in range(4):
        np.testing.assert_allclose(gs[i].numpy(), numpy_geodesic(pb[i], q, 0.4), atol=1e-12)
    # log-probabilities in, probabilities out
    np.testing.assert_allclose(TR.geodesic(P.log(), Q.log(), 0.3, log=True).numpy(),
                               numpy_geodesic(p, q, 0.3), atol=1e-12)


def test_geodesic_distance_shapes_and_values():
    rng = np.random.default_rng(2)
    p, q = random_probs(rng, (3, 7, 4)), random_probs(rng, (3, 7, 4))
    d = TR.geodesic_distance(torch.tensor(p), torch.tensor(q))
    assert d.shape == (3,)
    np.testing.assert_allclose(d.numpy(), numpy_dG(p, q), rtol=1e-12)
    d1 = TR.geodesic_distance(torch.tensor(p), torch.tensor(q[0]))
    np.testing.assert_allclose(d1.numpy(), numpy_dG(p, q[0][None]), rtol=1e-12)
    assert TR.geodesic_distance(torch.tensor(p[0]), torch.tensor(q[0])).shape == ()
    # disjoint supports: overlap 0 -> pi/2 per sample, no NaN
    y = torch.tensor([0, 1, 2, 0])
    assert TR.geodesic_distance(TR.truth(y, 3), TR.truth((y + 1) % 3, 3)).item() == pytest.approx(math.pi / 2)


def test_geodesic_bad_inputs():
    P = torch.tensor(random_probs(np.random.default_rng(3), (4, 3)))
    for bad in (-0.1, 1.5, float("nan"), torch.tensor([0.2, 1.2], dtype=F64)):
        with pytest.raises(ValueError, match="alpha"):
            TR.geodesic(P, P, bad)
    with pytest.raises(ValueError, match="same \\(N, C\\)"):
        TR.geodesic(P, P[:3], 0.5)
    neg = P.clone()
    neg[0] = torch.tensor([1.2, -0.1, -0.1], dtype=F64)
    with pytest.raises(ValueError, match="negative"):
        TR.geodesic(neg, P, 0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        TR.geodesic(P * 1.1, P, 0.5)
    with pytest.raises(ValueError, match="alpha must be a scalar or have shape \\(2,\\)"):
        TR.geodesic(torch.stack([P, P]), P, torch.tensor([0.1, 0.2, 0.3], dtype=F64))
    with pytest.raises(TypeError):
        TR.geodesic(P.numpy(), P, 0.5)
    with pytest.raises(ValueError, match="shape"):
        TR.geodesic_distance(P[0], P)


# --------------------------------------------------------------------------- progress

def test_progress_endpoints_and_along_the_ignorance_truth_geodesic():
    rng = np.random.default_rng(4)
    N, C = 20, 6
    y = torch.tensor(rng.integers(0, C, N))
    P0, Ps = TR.ignorance(N, C), TR.truth(y, C)
    assert TR.progress(P0, y).item() == pytest.approx(0.0, abs=1e-8)
    assert TR.progress(Ps, y).item() == 1.0
    a = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.61, 0.9, 0.999, 1.0], dtype=F64)
    s = TR.progress(TR.geodesic(P0, Ps, a), y)
    assert s.shape == (8,) and s.dtype == F64
    np.testing.assert_allclose(s.numpy(), a.numpy(), atol=1e-6)
    s_log = TR.progress(TR.geodesic(P0, Ps, a).clamp(min=1e-300).log(), y, log=True)
    np.testing.assert_allclose(s_log.numpy(), a.numpy(), atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 8), C=st.integers(2, 7), seed=st.integers(0, 10_000),
       alphas=st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_progress_is_the_geodesic_parameter(N, C, seed, alphas):
    y = torch.tensor(np.random.default_rng(seed).integers(0, C, N))
    a = torch.tensor(sorted(alphas), dtype=F64)
    s = TR.progress(TR.geodesic(TR.ignorance(N, C), TR.truth(y, C), a), y)
    np.testing.assert_allclose(s.numpy(), a.numpy(), atol=1e-6)
    assert (s.diff() >= -1e-7).all()       # monotone along the geodesic


def test_progress_agrees_with_scipy_bounded():
    rng = np.random.default_rng(5)
    m, N, C = 12, 15, 4
    y = rng.integers(0, C, N)
    p = random_probs(rng, (m, N, C), 1.5)
    p[:6] = 0.5 * p[:6] + 0.5 * np.eye(C)[y]       # some models close to the truth
    s = TR.progress(torch.tensor(p), torch.tensor(y))
    u, t = np.full((N, C), 1.0 / C), np.eye(C)[y]
    for w in range(m):
        f = lambda a: numpy_dG(p[w], numpy_geodesic(u, t, a))     # noqa: E731
        ref = minimize_scalar(f, bounds=(0, 1), method="bounded", options={"xatol": 1e-10})
        assert f(s[w].item()) <= ref.fun + 1e-12
        assert s[w].item() == pytest.approx(ref.x, abs=1e-5)
        grid = np.linspace(0, 1, 401)             # and it is the global minimum
        assert f(s[w].item()) <= min(f(a) for a in grid) + 1e-12


@pytest.mark.parametrize("C", [2, 3, 10])
def test_remark_2_2_1_confident_models(C):
    """Remark 2.2.1: a fully confident model with error fraction eps has progress 1 if
    eps < 1 - 1/sqrt(C). True, but not sharp: f(alpha) = (1-eps)(1-alpha) d + eps theta(alpha)
    with theta(alpha) = arccos(cot d sin((1-alpha) d)), d = arccos(1/sqrt C), has
    f'(alpha) <= 0 on [0, 1] iff eps <= 1/(1 + cot d) = sqrt(C-1)/(sqrt(C-1)+1) (theta' is
    largest at alpha = 1, where it equals d cot d), and f'(1) > 0 above that threshold."""
    N = 400
    y = torch.tensor(np.random.default_rng(6).integers(0, C, N))
    sharp = math.sqrt(C - 1) / (math.sqrt(C - 1) + 1)
    paper = 1 - 1 / math.sqrt(C)
    assert paper < sharp

    def confident(eps):
        k = int(round(eps * N))
        pred = y.clone()
        pred[:k] = (y[:k] + 1) % C
        return TR.truth(pred, C), k / N

    for eps in (0.0, 0.5 * paper, paper - 0.01, 0.5 * (paper + sharp), sharp - 0.01):
        P, e = confident(eps)
        assert e < sharp
        assert TR.progress(P, y).item() == 1.0
    P, e = confident(sharp + 0.01)
    assert TR.progress(P, y).item() < 0.9


def test_progress_bad_inputs():
    P = torch.tensor(random_probs(np.random.default_rng(7), (2, 4, 3)))
    with pytest.raises(ValueError, match="4 samples|N = 4"):
        TR.progress(P, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must lie in"):
        TR.progress(P, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="C >= 2"):
        TR.progress(torch.ones(2, 4, 1, dtype=F64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="grid"):
        TR.progress(P, torch.tensor([0, 1, 2, 0]), grid=1)


# --------------------------------------------------------------------------- trajectories

def make_trajectory(rng, y, C, T=41, wiggle=0.5):
    """Checkpoints from ignorance towards the truth along a curved path of logits."""
    N = len(y)
    t = torch.linspace(0, 1, T, dtype=F64)
    base = torch.tensor(rng.standard_normal((N, C)))
    target = 6 * TR.truth(torch.tensor(y), C) + torch.tensor(rng.standard_normal((N, C)))
    logits = t[:, None, None] ** 1.5 * target + wiggle * torch.sin(3 * math.pi * t)[:, None, None] * base
    return torch.softmax(logits, -1)


def test_reindex_by_progress():
    rng = np.random.default_rng(8)
    N, C = 10, 4
    y = rng.integers(0, C, N)
    traj = make_trajectory(rng, y, C, T=9)
    sk = TR.progress(traj, torch.tensor(y))
    assert (sk.diff() > 0).all()
    # at a checkpoint's progress the checkpoint itself comes back
    out = TR.reindex_by_progress(traj, torch.tensor(y), sk[[0, 3, 8]])
    assert out.valid.all()
    np.testing.assert_allclose(out.probs.numpy(), traj[[0, 3, 8]].numpy(), atol=1e-10)
    # in between: the geodesic interpolation of the surrounding checkpoints
    target = 0.3 * sk[4] + 0.7 * sk[5]
    out = TR.reindex_by_progress(traj, torch.tensor(y), target[None])
    assert out.segment.tolist() == [4] and out.alpha.item() == pytest.approx(0.7)
    np.testing.assert_allclose(out.probs[0].numpy(), numpy_geodesic(traj[4].numpy(), traj[5].numpy(), 0.7),
                               atol=1e-12)
    # unreachable targets: not valid, nearest end checkpoint
    s = torch.tensor([sk[0].item() - 0.01, sk[-1].item() + 0.01, 2.0], dtype=F64)
    out = TR.reindex_by_progress(traj, torch.tensor(y), s, progress_values=sk)
    assert out.valid.tolist() == [False, False, False] and out.segment.tolist() == [-1, -1, -1]
    np.testing.assert_allclose(out.probs.numpy(), traj[[0, 8, 8]].numpy(), atol=1e-14)


def test_reindex_non_monotone_and_zero_length_segments():
    rng = np.random.default_rng(9)
    N, C = 6, 3
    y = torch.tensor(rng.integers(0, C, N))
    traj = random_probs(rng, (5, N, C))
    sk = torch.tensor([0.2, 0.6, 0.4, 0.4, 0.8], dtype=F64)   # goes back, then stalls
    out = TR.reindex_by_progress(torch.tensor(traj), y, torch.tensor([0.5, 0.4, 0.7, 0.1], dtype=F64),
                                progress_values=sk)
    assert out.valid.tolist() == [True, True, True, False]
    assert out.segment.tolist() == [0, 0, 3, -1]               # first segment containing s
    assert out.alpha[:3].tolist() == pytest.approx([0.75, 0.5, 0.75])
    np.testing.assert_allclose(out.probs[0].numpy(), numpy_geodesic(traj[0], traj[1], 0.75), atol=1e-12)
    np.testing.assert_allclose(out.probs[3].numpy(), traj[0], atol=1e-14)
    sk2 = torch.tensor([0.2, 0.5, 0.5, 0.9], dtype=F64)
    out = TR.reindex_by_progress(torch.tensor(traj[:4]), y, torch.tensor([0.5], dtype=F64), progress_values=sk2)
    np.testing.assert_allclose(out.probs[0].numpy(), traj[1], atol=1e-12)   # end of segment 0


def test_trajectory_distance_is_invariant_to_time_reparametrisation():
    rng = np.random.default_rng(10)
    N, C = 30, 5
    y = rng.integers(0, C, N)
    traj = make_trajectory(rng, y, C)
    fast = traj[::2]                          # twice as fast, same curve
    d = TR.trajectory_distance(traj, fast, torch.tensor(y))
    naive = np.mean([I.bhattacharyya(traj[k:k + 1], fast[k:k + 1]).item() for k in range(len(fast))])
    scale = I.bhattacharyya(traj[:1], traj[-1:]).item()
    assert d < 1e-4 * scale and naive > 0.05 * scale
    assert TR.trajectory_distance(traj, traj, torch.tensor(y)) == pytest.approx(0.0, abs=1e-12)
    other = make_trajectory(np.random.default_rng(11), y, C)
    d_uv = TR.trajectory_distance(traj, other, torch.tensor(y), num_points=50)
    d_vu = TR.trajectory_distance(other, traj, torch.tensor(y), num_points=50)
    assert d_uv > 100 * d and d_uv == pytest.approx(d_vu, rel=1e-10)


def test_trajectory_distances_matrix_equals_pairwise_calls():
    rng = np.random.default_rng(12)
    N, C = 8, 3
    y = rng.integers(0, C, N)
    trajs = [make_trajectory(rng, y, C, T=T) for T in (9, 7, 11)]
    trajs.append(trajs[0][:4])                # covers only the beginning
    trajs.append(trajs[1][-3:])               # only the end: no common range with the previous one
    yt = torch.tensor(y)
    G = 30
    D = TR.trajectory_distances(trajs, yt, num_points=G)
    assert D.shape == (5, 5)
    np.testing.assert_array_equal(np.diag(D.numpy()), 0.0)
    assert torch.isnan(D[3, 4]) and torch.isnan(D[4, 3])
    grid = torch.linspace(0, 1, G, dtype=F64)
    for u in range(5):
        for v in range(u + 1, 5):
            if (u, v) == (3, 4):
                with pytest.raises(ValueError, match="do not overlap"):
                    TR.trajectory_distance(trajs[u], trajs[v], yt, grid=grid)
                continue
            ref = TR.trajectory_distance(trajs[u], trajs[v], yt, grid=grid)
            assert D[u, v].item() == pytest.approx(ref, rel=1e-10, abs=1e-14)
            assert D[v, u].item() == D[u, v].item()
    # the global-grid mean approximates the per-pair mean on the common range
    assert D[0, 1].item() == pytest.approx(TR.trajectory_distance(trajs[0], trajs[1], yt, num_points=200), rel=0.1)
    same = TR.trajectory_distances(torch.stack([trajs[0], trajs[0]]), yt, num_points=G)
    np.testing.assert_allclose(same.numpy(), 0.0, atol=1e-14)


def test_trajectory_bad_inputs():
    rng = np.random.default_rng(13)
    y = torch.tensor(rng.integers(0, 3, 5))
    t = torch.tensor(random_probs(rng, (4, 5, 3)))
    with pytest.raises(ValueError, match="same \\(N, C\\)"):
        TR.trajectory_distance(t, t[:, :4], y)
    with pytest.raises(ValueError, match="shape"):
        TR.trajectory_distance(t[0], t, y)
    with pytest.raises(TypeError):
        TR.trajectory_distances([], y)
    with pytest.raises(TypeError, match="1-D"):
        TR.reindex_by_progress(t, y, 0.5)
    with pytest.raises(ValueError, match="progress_values"):
        TR.reindex_by_progress(t, y, torch.tensor([0.5], dtype=F64), progress_values=torch.zeros(3))


# --------------------------------------------------------------------------- ensemble means

def mean_dB(P, q):
    return I.bhattacharyya(P, q[None]).mean().item()


def test_ensemble_means_of_equal_members_and_two_member_closed_forms():
    rng = np.random.default_rng(14)
    p = random_probs(rng, (9, 4), 2.0)
    same = torch.tensor(np.broadcast_to(p, (3, 9, 4)).copy())
    for kind in TR.ENSEMBLE_MEANS:
        q = TR.ensemble_mean(same, kind)
        assert q.shape == (9, 4) and q.dtype == F64
        np.testing.assert_allclose(q.numpy(), p, atol=1e-12)
    a, b = random_probs(rng, (9, 4)), random_probs(rng, (9, 4))
    P = torch.tensor(np.stack([a, b]))
    g = np.sqrt(a * b)
    h = 2 * a * b / (a + b)
    r = (np.sqrt(a) + np.sqrt(b)) ** 2
    for kind, ref in (("arithmetic", (a + b) / 2), ("geometric", g), ("harmonic", h), ("sqrt", r)):
        ref = ref / ref.sum(-1, keepdims=True)
        np.testing.assert_allclose(TR.ensemble_mean(P, kind).numpy(), ref, atol=1e-12)
        np.testing.assert_allclose(TR.ensemble_mean(P.log(), kind, log=True).numpy(), ref, atol=1e-12)
    # two members: the Bhattacharyya centroid is the geodesic midpoint (symmetry of the sphere)
    np.testing.assert_allclose(TR.ensemble_mean(P, "bhattacharyya").numpy(), numpy_geodesic(a, b, 0.5), atol=1e-9)


def test_bhattacharyya_centroid_minimises_mean_distance():
    rng = np.random.default_rng(15)
    P = torch.tensor(random_probs(rng, (7, 12, 5), 2.5))
    cen = TR.ensemble_mean(P, "bhattacharyya")
    np.testing.assert_allclose(cen.sum(-1).numpy(), 1.0, atol=1e-14)
    best = mean_dB(P, cen)
    for kind in ("arithmetic", "geometric", "harmonic", "sqrt"):
        assert best <= mean_dB(P, TR.ensemble_mean(P, kind)) + 1e-15
    for scale in (1e-2, 1e-4):
        for _ in range(10):
            z = torch.log(cen) + scale * torch.randn(cen.shape, generator=torch.Generator().manual_seed(_), dtype=F64)
            assert best <= mean_dB(P, torch.softmax(z, -1)) + 1e-15
    # zero probabilities in the members are fine
    Z = P.clone()
    Z[0, :, 0] = 0.0
    Z[0] /= Z[0].sum(-1, keepdim=True)
    assert torch.isfinite(TR.ensemble_mean(Z, "bhattacharyya")).all()
    assert (TR.ensemble_mean(Z, "geometric")[:, 0] == 0).all()


def test_ensemble_bad_inputs():
    P = torch.tensor(random_probs(np.random.default_rng(16), (2, 3, 2)))
    with pytest.raises(ValueError, match="mean"):
        TR.ensemble_mean(P, "median")
    disjoint = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=F64)
    with pytest.raises(ValueError, match="vanishes"):
        TR.ensemble_mean(disjoint, "geometric")
    with pytest.raises(ValueError, match="vanishes"):
        TR.ensemble_mean(disjoint, "harmonic")
    with pytest.raises(ValueError, match="shape"):
        TR.ensemble_mean(P[0])


# --------------------------------------------------------------------------- iterative InPCA

def test_iterative_inpca_matches_dense():
    # one sample, peaked distributions: three of the five largest |lambda| are negative
    D = I.bhattacharyya(torch.tensor(random_probs(np.random.default_rng(0), (400, 1, 3), 4.0)))
    dense = I.InPCA(n_components=5, method="dense").fit(D)
    it = I.InPCA(n_components=5, method="iterative").fit(D)
    assert it.method_ == "iterative" and it.all_eigenvalues_ is None
    assert (dense.signs_ == -1).sum() >= 2
    np.testing.assert_allclose(it.eigenvalues_.numpy(), dense.eigenvalues_.numpy(), rtol=1e-8)
    np.testing.assert_array_equal(it.signs_.numpy(), dense.signs_.numpy())
    flip = torch.sign((it.embedding_ * dense.embedding_).sum(0))
    np.testing.assert_allclose((it.embedding_ * flip).numpy(), dense.embedding_.numpy(), atol=1e-7)
    assert it.stress_total_ == pytest.approx(dense.stress_total_, rel=1e-12)
    for k in range(1, 6):
        for squared in (False, True):
            assert it.explained_stress(k, squared=squared) == pytest.approx(
                dense.explained_stress(k, squared=squared), abs=1e-10)
    with pytest.raises(ValueError, match="n_components"):
        it.explained_stress(6)
    x = it.transform(D[[3, 17]])
    np.testing.assert_allclose(x.numpy(), it.embedding_[[3, 17]].numpy(), atol=1e-7)


def test_inpca_method_selection():
    D = I.bhattacharyya(torch.tensor(random_probs(np.random.default_rng(1), (40, 2, 3), 2.0)))
    assert I.InPCA(3).fit(D).method_ == "dense"                        # m <= 3000
    small = I.InPCA(2, method="iterative").fit(D)                      # small m: solved densely inside
    np.testing.assert_allclose(small.eigenvalues_.numpy(), I.InPCA(2).fit(D).eigenvalues_.numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="method"):
        I.InPCA(2, method="lanczos")
    with pytest.raises(ValueError, match="n_components"):
        I.InPCA(method="iterative")
