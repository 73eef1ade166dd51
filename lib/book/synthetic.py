"""Synthetic data sets with known ground truth, drawn from a private seeded generator.

* :func:`make_sine`, :func:`make_regression`, :func:`make_teacher_classification`
  - small synthetic problems of ``num_points`` points;
* :func:`sloppy_eigenvalues` and :func:`make_sloppy_gaussian` - Gaussian inputs with a
  sloppy covariance, labelled by a random teacher (Mao's thesis, section 2.5.5);
* :func:`make_sparse_regression` - Gaussian inputs, sparse linear ground truth (the
  diagonal-network experiments).

The real data sets are loaded by :mod:`lib.book.data`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._checks import check_float_dtype, check_int, check_non_negative, check_seed
from .split import Split

__all__ = [
    "make_sine",
    "make_regression",
    "make_teacher_classification",
    "sloppy_eigenvalues",
    "make_sloppy_gaussian",
    "make_sparse_regression",
]


def make_sine(num_points: int = 100, *, noise: float = 0.3, low: float = 0.0, high: float = 8.0,
              seed: int = 0, dtype: torch.dtype = torch.float32,
              sample_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Noisy sine regression: ``x ~ U[low, high]``, ``y = sin(x) + N(0, noise^2)``.

    Args:
        num_points: number of points N.
        noise: standard deviation of the additive Gaussian noise.
        low, high: input interval, ``low < high``.
        seed: seed of this call's private generator.
        dtype: floating dtype of the returned tensors.
        sample_dtype: floating dtype in which the random numbers are drawn and ``y`` is
            computed (the draws differ between dtypes). ``torch.float32`` with ``low = 0``
            reproduces, value for value, the sinusoid data of the Laplace library's
            regression example (``torch.manual_seed(seed)``, ``x = 8 rand(N)``,
            ``y = sin x + noise randn``; Daxberger et al. 2021).

    Returns:
        ``(X, y)``, both of shape ``(N, 1)`` (so they suit ``nn.MSELoss``).
    """
    num_points = check_int(num_points, "num_points")
    noise = check_non_negative(noise, "noise")
    if not low < high:
        raise ValueError(f"need low < high, got low={low}, high={high}")
    generator = torch.Generator().manual_seed(check_seed(seed))
    check_float_dtype(dtype)
    if not isinstance(sample_dtype, torch.dtype) or not sample_dtype.is_floating_point:
        raise TypeError(f"sample_dtype must be a floating torch.dtype, got {sample_dtype!r}")
    X = low + (high - low) * torch.rand(num_points, 1, generator=generator, dtype=sample_dtype)
    y = torch.sin(X) + noise * torch.randn(num_points, 1, generator=generator, dtype=sample_dtype)
    return X.to(dtype), y.to(dtype)


def make_regression(num_points: int = 100, n_features: int = 5, *, noise: float = 0.1,
                    seed: int = 0, dtype: torch.dtype = torch.float32,
                    return_coef: bool = False):
    """Linear-Gaussian regression: ``X ~ N(0, I)``, ``y = X w + N(0, noise^2)``.

    The true weights are ``w ~ N(0, I / n_features)`` so ``Var(Xw) ~ 1``.

    Args:
        num_points: number of points N.
        n_features: input dimension D.
        noise: standard deviation of the label noise.
        seed: seed of this call's private generator.
        dtype: floating dtype.
        return_coef: also return the true weights.

    Returns:
        ``(X, y)`` of shapes ``(N, D)`` and ``(N, 1)``; with ``return_coef``
        ``(X, y, w)`` with ``w`` of shape ``(D, 1)``.
    """
    num_points = check_int(num_points, "num_points")
    n_features = check_int(n_features, "n_features")
    noise = check_non_negative(noise, "noise")
    generator = torch.Generator().manual_seed(check_seed(seed))
    check_float_dtype(dtype)
    w = torch.randn(n_features, 1, generator=generator, dtype=torch.float64) / n_features**0.5
    X = torch.randn(num_points, n_features, generator=generator, dtype=torch.float64)
    y = X @ w + noise * torch.randn(num_points, 1, generator=generator, dtype=torch.float64)
    if return_coef:
        return X.to(dtype), y.to(dtype), w.to(dtype)
    return X.to(dtype), y.to(dtype)


def make_teacher_classification(num_points: int = 1000, n_features: int = 10, n_classes: int = 3,
                                *, hidden: int = 32, seed: int = 0,
                                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Classification labelled by a random "teacher" network.

    ``X ~ N(0, I)`` and ``y = argmax(W2 tanh(W1 x))`` with Gaussian teacher
    weights, so the labels are a deterministic function a student network
    of similar size can fit exactly.

    Args:
        num_points: number of points N.
        n_features: input dimension D.
        n_classes: number of classes K >= 2.
        hidden: width of the teacher's hidden layer.
        seed: seed of this call's private generator (teacher and inputs).
        dtype: floating dtype of ``X``.

    Returns:
        ``(X, y)`` of shapes ``(N, D)`` (dtype) and ``(N,)`` (int64 in [0, K)).
    """
    num_points = check_int(num_points, "num_points")
    n_features = check_int(n_features, "n_features")
    n_classes = check_int(n_classes, "n_classes", 2)
    hidden = check_int(hidden, "hidden")
    generator = torch.Generator().manual_seed(check_seed(seed))
    check_float_dtype(dtype)
    W1 = torch.randn(n_features, hidden, generator=generator, dtype=torch.float64) / n_features**0.5
    W2 = torch.randn(hidden, n_classes, generator=generator, dtype=torch.float64) / hidden**0.5
    X = torch.randn(num_points, n_features, generator=generator, dtype=torch.float64)
    y = (torch.tanh(X @ W1) @ W2).argmax(dim=1)
    return X.to(dtype), y


def sloppy_eigenvalues(d: int = 200, c: float = 0.5, *,
                       dtype: torch.dtype = torch.float64) -> Tensor:
    """Eigenvalues ``lambda_i = 50 c exp(-c i)``, ``i = 1..d``, of the sloppy input covariance.

    They decay linearly on a log scale with rate ``c``: ``c = 0.5`` spans
    about 43 decades over ``d = 200`` ("sloppy"), ``c = 0.001`` only a factor
    1.2 ("effectively non-sloppy", i.e. nearly isotropic).

    Args:
        d: input dimension.
        c: decay rate, > 0.
        dtype: floating dtype.

    Returns:
        Tensor of shape ``(d,)``, decreasing.
    """
    d = check_int(d, "d")
    if isinstance(c, bool) or not isinstance(c, (int, float, np.floating, np.integer)):
        raise TypeError(f"c must be a positive number, got {type(c).__name__} {c!r}")
    if not c > 0:  # also rejects NaN
        raise ValueError(f"c must be > 0, got {c}")
    check_float_dtype(dtype)
    i = torch.arange(1, d + 1, dtype=torch.float64)
    return (50 * c * torch.exp(-c * i)).to(dtype)


def make_sloppy_gaussian(n_train: int = 5000, n_test: int = 1000, *, d: int = 200,
                         c: float = 0.5, n_classes: int = 5, teacher_hidden: int = 50,
                         seed: int = 0, dtype: torch.dtype = torch.float32) -> Split:
    """Sloppy Gaussian inputs labelled by a random one-hidden-layer ReLU teacher.

    The synthetic problem of Mao's thesis (section 2.5.5): ``x ~ N(0, diag(lambda))``
    with :func:`sloppy_eigenvalues` ``lambda_i = 50 c exp(-c i)``, and
    ``y = argmax(W2^T (relu(W1^T x) - 1/sqrt(2 pi)))`` for a random teacher of
    width ``teacher_hidden``. The inputs are *not* standardized: their
    sloppiness is the point.

    Teacher weights are Gaussian, with each column of ``W1`` divided by the
    standard deviation ``sqrt(sum_i W1_ij^2 lambda_i)`` of its pre-activation
    under the known covariance, so every hidden unit sees a standard normal
    pre-activation whatever ``c`` is (unscaled, the units would saturate or
    vanish and one class would take almost all labels). Subtracting
    ``E[relu(z)] = 1/sqrt(2 pi)`` centres the hidden units, which keeps a
    class from winning just because its column of ``W2`` has a large sum;
    every class then gets a fair share of the labels (about ``1/K`` each,
    unequal only through the teacher's randomness).

    Args:
        n_train, n_test: numbers of training and test examples.
        d: input dimension.
        c: sloppiness, > 0 (0.001 nearly isotropic, 0.5 sloppy).
        n_classes: number of classes K >= 2.
        teacher_hidden: width of the teacher's hidden layer.
        seed: seed of this call's private generator (teacher, then train, then test inputs).
        dtype: floating dtype of ``X``.

    Returns:
        Split with ``X`` of shapes ``(n_train, d)`` and ``(n_test, d)`` and int64
        labels in ``[0, K)``.
    """
    n_train = check_int(n_train, "n_train")
    n_test = check_int(n_test, "n_test")
    n_classes = check_int(n_classes, "n_classes", 2)
    teacher_hidden = check_int(teacher_hidden, "teacher_hidden")
    check_float_dtype(dtype)
    scale = sloppy_eigenvalues(d, c).sqrt()  # (d,), checks d and c
    generator = torch.Generator().manual_seed(check_seed(seed))
    W1 = torch.randn(d, teacher_hidden, generator=generator, dtype=torch.float64)
    W1 = W1 / (W1 * scale[:, None]).norm(dim=0)  # unit-variance pre-activations
    W2 = torch.randn(teacher_hidden, n_classes, generator=generator, dtype=torch.float64)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        X = torch.randn(n, d, generator=generator, dtype=torch.float64) * scale
        hidden = torch.relu(X @ W1) - (2 * np.pi) ** -0.5
        return X, (hidden @ W2).argmax(dim=1)

    X_train, y_train = sample(n_train)
    X_test, y_test = sample(n_test)
    return Split.from_arrays(X_train, y_train, X_test, y_test, dtype, n_classes=n_classes)


def make_sparse_regression(n_train: int, n_test: int, d: int, *, sparsity: float = 0.9,
                           noise: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32,
                           return_coef: bool = False):
    """Sparse linear regression: ``x ~ N(0, I_d)``, ``y = x^T beta* + N(0, noise^2)``.

    The ground truth ``beta*`` has ``k = round((1 - sparsity) d)`` non-zero
    entries, at positions drawn uniformly without replacement and with standard
    normal values; the others are exactly zero. With ``n_train < d`` the training
    set has infinitely many interpolators, and which one a model finds decides
    its test loss (the setting of the diagonal-network experiments). The inputs
    are not standardized (they are standard normal already).

    Args:
        n_train, n_test: numbers of training and test examples.
        d: input dimension.
        sparsity: fraction of zero entries of ``beta*``, in [0, 1].
        noise: standard deviation of the label noise (test labels get it too), >= 0.
        seed: seed of this call's private generator (support, values, train, test).
        dtype: floating dtype of ``X`` and ``y``.
        return_coef: also return ``beta*``.

    Returns:
        Split with ``X`` of shapes ``(n_train, d)`` and ``(n_test, d)``, float
        targets ``y`` of shapes ``(n_train,)`` and ``(n_test,)`` and ``n_classes``
        None; with ``return_coef`` the pair ``(split, beta*)``, ``beta*`` of shape ``(d,)``.
    """
    n_train = check_int(n_train, "n_train")
    n_test = check_int(n_test, "n_test")
    d = check_int(d, "d")
    sparsity = check_non_negative(sparsity, "sparsity")
    if sparsity > 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    noise = check_non_negative(noise, "noise")
    check_float_dtype(dtype)
    generator = torch.Generator().manual_seed(check_seed(seed))
    n_nonzero = int(round((1 - sparsity) * d))
    support = torch.randperm(d, generator=generator)[:n_nonzero]
    beta = torch.zeros(d, dtype=torch.float64)
    beta[support] = torch.randn(n_nonzero, generator=generator, dtype=torch.float64)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        X = torch.randn(n, d, generator=generator, dtype=torch.float64)
        return X, X @ beta + noise * torch.randn(n, generator=generator, dtype=torch.float64)

    X_train, y_train = sample(n_train)
    X_test, y_test = sample(n_test)
    split = Split(X_train.to(dtype), y_train.to(dtype), X_test.to(dtype), y_test.to(dtype))
    return (split, beta.to(dtype)) if return_coef else split
