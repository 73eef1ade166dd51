"""Tools for Gram matrices of a kernel: normalization, kernel PCA, kernel-target alignment.

Made for the empirical neural tangent kernel of :func:`lib.curvature.jacobians.ntk`
(NNGeometry's Fig. 7: the Gram matrix of a two-class sub-task, its kernel PCA, and how
both change over training), but any ``(n, n)`` Gram matrix ``K`` will do.

* :func:`normalize_gram`: ``K_ij / sqrt(K_ii K_jj)``, every row and column divided by the
  square root of its diagonal entry. This is the normalization of the source's Fig. 7
  ("each row and column is normalized by 1 / sqrt(diag(G))"): a cosine similarity between
  the examples' gradients, with ones on the diagonal, so the picture shows how aligned two
  examples' tangent features are rather than how large they are.
* :func:`kernel_pca`: centred kernel PCA (Schoelkopf, Smola and Mueller 1998): the top
  eigenpairs ``(lambda_k, u_k)`` of ``H K H`` with ``H = I - 11^T / n``, the projections
  ``u_k sqrt(lambda_k)`` (those of ``sklearn.decomposition.KernelPCA(kernel="precomputed")``
  up to the sign of each component).
* :func:`kernel_target_alignment`: ``<K, Y>_F / (||K||_F ||Y||_F)`` with the target Gram
  matrix ``Y = y y^T`` (Cristianini, Shawe-Taylor, Elisseeff and Kandola 2001), optionally
  of the centred matrices (Cortes, Mohri and Rostamizadeh 2012).

They live in :mod:`lib.manifolds` beside InPCA, the same centre-and-diagonalize embedding
applied to distances between models; they need nothing from :mod:`lib.curvature`.
Computations run in float64; results come back in ``K``'s dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .._checks import check_bool, check_int, check_square_matrix

__all__ = ["KernelPCA", "normalize_gram", "kernel_pca", "kernel_target_alignment", "target_gram",
           "SYM_TOL"]

SYM_TOL = 1e-8
"""Largest ``max|K - K^T| / max|K|`` accepted as a symmetric Gram matrix."""


class KernelPCA(NamedTuple):
    """The result of :func:`kernel_pca`."""
    projections: Tensor
    """``(n, k)``: example ``i`` on component ``j`` is ``u_j[i] sqrt(lambda_j)``."""
    eigenvalues: Tensor
    """``(k,)``: the ``k`` largest eigenvalues of the centred ``H K H``, descending."""


def _symmetric(K, name: str = "K") -> Tensor:
    K = check_square_matrix(K, name)
    scale = float(K.abs().max())
    if scale > 0 and float((K - K.T).abs().max()) > SYM_TOL * scale:
        raise ValueError(f"{name} is not symmetric (max |{name} - {name}^T| = "
                         f"{float((K - K.T).abs().max()):.3g}); a Gram matrix J J^T is")
    return K


def _centre(A: Tensor) -> Tensor:
    """``H A H`` with ``H = I - 11^T / n``."""
    A = A - A.mean(dim=0, keepdim=True)
    return A - A.mean(dim=1, keepdim=True)


def normalize_gram(K: Tensor) -> Tensor:
    """``K_ij / sqrt(K_ii K_jj)``: every row and column divided by the square root of its
    diagonal entry (the source's Fig. 7), so the diagonal is 1 and ``|entries| <= 1`` for a
    positive semi-definite ``K``.

    Args:
        K: a square ``(n, n)`` Gram matrix with a positive diagonal.

    Raises:
        TypeError: ``K`` is not a floating-point tensor.
        ValueError: ``K`` is not square or finite, or a diagonal entry is ``<= 0`` (an example
            whose tangent features vanish has no direction to compare).

    Example:
        >>> import torch
        >>> from lib.manifolds.kernels import normalize_gram
        >>> normalize_gram(torch.tensor([[4.0, 2.0], [2.0, 9.0]]))
        tensor([[1.0000, 0.3333],
                [0.3333, 1.0000]])
    """
    K = check_square_matrix(K, "K")
    diag = K.diagonal()
    if not bool((diag > 0).all()):
        bad = torch.nonzero(diag <= 0).flatten()[:5].tolist()
        raise ValueError(f"K has diagonal entries <= 0 (rows {bad}); normalize_gram divides by "
                         "sqrt(K_ii K_jj)")
    root = diag.sqrt()
    return K / root[:, None] / root[None, :]


def kernel_pca(K: Tensor, k: int = 2) -> KernelPCA:
    """Centred kernel PCA of a Gram matrix: the top ``k`` components of ``H K H``.

    Args:
        K: a symmetric ``(n, n)`` Gram matrix.
        k: the number of components, ``1 <= k <= n``.

    Returns:
        :class:`KernelPCA` ``(projections (n, k), eigenvalues (k,))``. Negative eigenvalues
        (an indefinite ``K``, or round-off) give zero projections, as in scikit-learn. The
        sign of each component is fixed so that its largest-magnitude entry is positive.

    Raises:
        TypeError: ``K`` is not a floating-point tensor, ``k`` not an int.
        ValueError: ``K`` is not square, finite and symmetric; ``k`` out of range.

    Example:
        >>> import torch
        >>> from lib.manifolds.kernels import kernel_pca
        >>> X = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
        >>> pca = kernel_pca(X @ X.T, k=2)  # a linear kernel: ordinary PCA of X
        >>> pca.eigenvalues.round(decimals=6)  # n times the variances, 4 * 1 and 4 * 0.25
        tensor([4., 1.], dtype=torch.float64)
        >>> pca.projections.abs()
        tensor([[1.0000, 0.5000],
                [1.0000, 0.5000],
                [1.0000, 0.5000],
                [1.0000, 0.5000]], dtype=torch.float64)
    """
    K = _symmetric(K)
    k = check_int(k, "k")
    if k > len(K):
        raise ValueError(f"k must be <= n = {len(K)} (the number of examples), got {k}")
    Kc = _centre(K.double())
    values, vectors = torch.linalg.eigh(0.5 * (Kc + Kc.T))
    values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    peak = vectors.abs().argmax(dim=0)
    vectors = vectors * torch.sign(vectors[peak, torch.arange(k)])[None, :]
    projections = vectors * values.clamp(min=0).sqrt()[None, :]
    return KernelPCA(projections.to(K.dtype), values.to(K.dtype))


def target_gram(y: Tensor) -> Tensor:
    """The target Gram matrix ``Y`` (float64) of :func:`kernel_target_alignment`.

    ``y`` of shape ``(n,)`` with values in ``{-1, +1}``: ``Y = y y^T``; integer or bool class
    labels ``(n,)`` (any other values): ``Y_ij = 1`` if ``y_i = y_j`` else ``0``, which is
    ``O O^T`` for the one-hot matrix ``O``; a floating ``(n, C)`` matrix (one-hot or other
    targets): ``Y = y y^T``.
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a tensor of labels (n,) or targets (n, C), got {type(y).__name__}")
    if y.ndim == 2 and torch.is_floating_point(y):
        Y = y.double()
        return Y @ Y.T
    if y.ndim != 1:
        raise ValueError(f"y must be labels (n,) or floating targets (n, C), got shape {tuple(y.shape)}")
    if bool(((y == 1) | (y == -1)).all()):
        s = y.double()
        return s[:, None] * s[None, :]
    if torch.is_floating_point(y):
        raise ValueError("floating labels y of shape (n,) must be -1 or +1; pass integer class "
                         "labels or an (n, C) target matrix")
    return (y[:, None] == y[None, :]).double()


def kernel_target_alignment(K: Tensor, y: Tensor, *, centered: bool = False) -> float:
    """The alignment ``<K, Y>_F / (||K||_F ||Y||_F)`` of a Gram matrix with the labels.

    In ``[-1, 1]`` by Cauchy-Schwarz (``[0, 1]`` for positive semi-definite ``K``, uncentred),
    1 when ``K`` is a positive multiple of ``Y``.

    Args:
        K: a square ``(n, n)`` Gram matrix.
        y: labels ``(n,)`` in ``{-1, +1}``, integer class labels ``(n,)`` or targets
            ``(n, C)``; see :func:`target_gram` for the target Gram matrix ``Y`` of each.
        centered: align ``H K H`` with ``H Y H`` (``H = I - 11^T / n``), which removes the
            constant component that both share (centred alignment).

    Raises:
        TypeError: ``K`` not a floating-point tensor, ``y`` not a tensor.
        ValueError: ``K`` not square and finite, ``y`` of another length or of bad values,
            a zero (centred) ``K`` or ``Y`` (e.g. one class only, centred).

    Example:
        >>> import torch
        >>> from lib.manifolds.kernels import kernel_target_alignment
        >>> y = torch.tensor([1, 1, -1])
        >>> kernel_target_alignment(torch.outer(y, y).double(), y)
        1.0
        >>> round(kernel_target_alignment(torch.eye(3), y), 4)  # 3 / (sqrt(3) * 3)
        0.5774
    """
    K = check_square_matrix(K, "K")
    Y = target_gram(y)
    if len(Y) != len(K):
        raise ValueError(f"y has {len(Y)} examples but K is {tuple(K.shape)}")
    if check_bool(centered, "centered"):
        K, Y = _centre(K.double()), _centre(Y)
    K = K.double()
    norms = float(K.norm()) * float(Y.norm())
    if norms == 0:
        raise ValueError("the alignment is undefined: K or the target Gram matrix is zero"
                         + (" after centring (e.g. a single class)" if centered else ""))
    return float((K * Y).sum()) / norms
