"""Data sets used in the book, as ready-to-use tensors.

Every loader returns a :class:`Split` of four tensors with inputs standardized
using *training* statistics only (the test set never leaks into them).

* :func:`load_digits` - scikit-learn's 8x8 digits (bundled, no download).
* :func:`load_mnist1d` - MNIST-1D, generated with the ``mnist1d`` package and
  cached as plain arrays in the data folder.
* :func:`load_torchvision` - MNIST, Fashion-MNIST, CIFAR-10/100 (for the
  larger "paper" presets; downloads only when asked to).
* :func:`load` - any of the above by name, so a preset can name its data set.
* :func:`make_sine`, :func:`make_regression`, :func:`make_teacher_classification`
  - small synthetic problems.
* :func:`make_sloppy_gaussian` - Gaussian inputs with a sloppy covariance, labelled by
  a random teacher (Mao's thesis, section 2.5.5).
* :func:`make_sparse_regression` - Gaussian inputs, sparse linear ground truth
  (the diagonal-network experiments).

Downloads and caches go to :func:`lib.book.paths.data_root` (the repository's ``data/`` in a
clone, a per-user cache folder for an installed package, or ``$BOOK_DATA``); a relative
``root`` is taken inside it, so the same call works from ``chapters/`` too.
"""

from __future__ import annotations

import os
import random
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torch import Tensor

from .._checks import check_int, check_seed
from .paths import resolve_root, write_atomically

__all__ = [
    "Split",
    "load_digits",
    "load_mnist1d",
    "load_torchvision",
    "TORCHVISION_DATASETS",
    "DATASETS",
    "IMAGE_SHAPES",
    "load",
    "make_sine",
    "make_regression",
    "make_teacher_classification",
    "sloppy_eigenvalues",
    "make_sloppy_gaussian",
    "make_sparse_regression",
]


# Bump when the cache layout changes so stale caches are not picked up.
_MNIST1D_CACHE_VERSION = 1
_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


# --------------------------------------------------------------------------- #
# Split
# --------------------------------------------------------------------------- #
@dataclass
class Split:
    """Train and test tensors of one data set.

    Attributes:
        X_train: inputs, shape ``(N_train, *feature_shape)``.
        y_train: targets, shape ``(N_train,)`` (int64 class labels) or
            ``(N_train, k)`` (float regression targets).
        X_test: inputs, shape ``(N_test, *feature_shape)``.
        y_test: targets, like ``y_train``.
        n_classes: number of classes; inferred as ``max label + 1`` for
            integer labels when not given, None for regression targets.
    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    n_classes: int | None = None

    def __post_init__(self) -> None:
        for name in ("X_train", "y_train", "X_test", "y_test"):
            if not isinstance(getattr(self, name), Tensor):
                raise TypeError(f"Split.{name} must be a torch.Tensor, got "
                                f"{type(getattr(self, name)).__name__}")
        _check_same_length(self.X_train, self.y_train, "X_train", "y_train")
        _check_same_length(self.X_test, self.y_test, "X_test", "y_test")
        if self.X_train.shape[1:] != self.X_test.shape[1:]:
            raise ValueError(f"X_train has feature shape {tuple(self.X_train.shape[1:])} but "
                             f"X_test has {tuple(self.X_test.shape[1:])}")
        if self.n_classes is None and not self.y_train.is_floating_point():
            labels = torch.cat([self.y_train.flatten(), self.y_test.flatten()])
            self.n_classes = int(labels.max()) + 1 if labels.numel() else 0

    @property
    def n_features(self) -> int:
        """Number of input features per example, ``prod(feature_shape)``."""
        return int(np.prod(self.X_train.shape[1:]))

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        """``(X_train, y_train)``, e.g. for :func:`lib.book.train.train`."""
        return self.X_train, self.y_train

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        """``(X_test, y_test)``, e.g. as ``eval_data``."""
        return self.X_test, self.y_test

    def to(self, device: str | torch.device) -> Split:
        """Return a new Split with all four tensors on ``device``."""
        return Split(self.X_train.to(device), self.y_train.to(device),
                     self.X_test.to(device), self.y_test.to(device), self.n_classes)

    def __repr__(self) -> str:
        return (f"Split(train={tuple(self.X_train.shape)}, test={tuple(self.X_test.shape)}, "
                f"n_classes={self.n_classes}, dtype={self.X_train.dtype}, "
                f"device={self.X_train.device})")


def _check_same_length(X: Tensor, y: Tensor, x_name: str = "X", y_name: str = "y") -> None:
    if X.ndim == 0 or y.ndim == 0:
        raise ValueError(f"{x_name} and {y_name} need a leading batch dimension")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{x_name} has {X.shape[0]} examples but {y_name} has {y.shape[0]}")


# --------------------------------------------------------------------------- #
# Argument checks shared by the loaders
# --------------------------------------------------------------------------- #
def _check_float_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")


def _check_non_negative_number(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not value >= 0:  # also rejects NaN
        raise ValueError(f"{name} must be >= 0, got {value}")
    return float(value)


def _standardize(train: np.ndarray, test: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    """Shift and scale both arrays by the mean/std of ``train`` over ``axis``.

    Constant features (std 0, e.g. always-blank border pixels) are only
    centred, not divided by zero.
    """
    mean = train.mean(axis=axis, keepdims=True)
    std = train.std(axis=axis, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _to_split(X_train, y_train, X_test, y_test, dtype, n_classes=None) -> Split:
    return Split(torch.as_tensor(X_train, dtype=dtype), torch.as_tensor(y_train, dtype=torch.long),
                 torch.as_tensor(X_test, dtype=dtype), torch.as_tensor(y_test, dtype=torch.long),
                 n_classes)


# --------------------------------------------------------------------------- #
# scikit-learn digits
# --------------------------------------------------------------------------- #
def load_digits(*, test_size: float = 0.25, seed: int = 0, image: bool = False,
                dtype: torch.dtype = torch.float32) -> Split:
    """Load scikit-learn's 8x8 handwritten digits (1797 images, 10 classes).

    The split is stratified by class; each pixel is standardized with the
    training mean and standard deviation.

    Args:
        test_size: fraction of examples held out for testing, in (0, 1).
        seed: seed of the random train/test split.
        image: False gives ``X`` of shape ``(N, 64)``; True gives ``(N, 1, 8, 8)``
            for convolutional models.
        dtype: floating dtype of ``X``.

    Returns:
        Split with ``y`` int64 labels of shape ``(N,)``; with the default
        ``test_size`` it holds 1347 training and 450 test examples.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)):
        raise TypeError(f"test_size must be a float in (0, 1), got {type(test_size).__name__}")
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be in (0, 1), got {test_size}")
    seed = check_seed(seed)
    _check_float_dtype(dtype)

    digits = sklearn_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float64), digits.target, test_size=test_size,
        random_state=seed, stratify=digits.target)
    X_train, X_test = _standardize(X_train, X_test, axis=0)
    if image:
        X_train, X_test = X_train.reshape(-1, 1, 8, 8), X_test.reshape(-1, 1, 8, 8)
    return _to_split(X_train, y_train, X_test, y_test, dtype, n_classes=10)


# --------------------------------------------------------------------------- #
# MNIST-1D
# --------------------------------------------------------------------------- #
def _mnist1d_cache_path(root: Path, seed: int) -> Path:
    return root / f"mnist1d_seed{seed}_v{_MNIST1D_CACHE_VERSION}.npz"


def _generate_mnist1d(seed: int) -> dict[str, np.ndarray]:
    """Generate the standard MNIST-1D arrays (4000 train / 1000 test, length 40)."""
    import mnist1d.data

    args = mnist1d.data.get_dataset_args()
    args.seed = seed
    # The package reseeds Python's and numpy's *global* generators; restore
    # them so loading data does not change random numbers drawn elsewhere.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        dataset = mnist1d.data.make_dataset(args)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return {key: np.asarray(dataset[key]) for key in _MNIST1D_KEYS}


def _save_npz_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` so readers never see a half-written file."""
    write_atomically(path, lambda handle: np.savez(handle, **arrays))


def _read_mnist1d_cache(path: Path) -> dict[str, np.ndarray] | None:
    """Return the cached arrays, or None if the file is missing or unusable."""
    if not path.exists():
        return None
    try:
        # allow_pickle=False: the cache holds plain numeric arrays only, so a
        # tampered file cannot execute code on load.
        with np.load(path, allow_pickle=False) as cache:
            arrays = {key: cache[key] for key in _MNIST1D_KEYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        warnings.warn(f"ignoring unreadable MNIST-1D cache {path} ({error}); regenerating it")
        return None
    return arrays


def load_mnist1d(*, root: str | os.PathLike | None = None, seed: int = 42, image: bool = False,
                 dtype: torch.dtype = torch.float32) -> Split:
    """Load MNIST-1D (Greydanus 2020): 4000 train / 1000 test signals of length 40, 10 classes.

    The data are generated with the ``mnist1d`` package on first use (about
    2 s) and cached as ``<root>/mnist1d_seed<seed>_v1.npz`` (plain arrays,
    written atomically). Inputs are standardized with a single scalar mean
    and standard deviation of the training set rather than per position,
    because the classes are defined up to translation and 1-D convolutions
    rely on every position sharing one scale.

    Args:
        root: cache folder; None is :func:`lib.book.paths.data_root`, and relative paths
            are taken inside it.
        seed: generation seed; the default 42 is the package's standard data set.
        image: False gives ``X`` of shape ``(N, 40)``; True gives ``(N, 1, 40)``
            for 1-D convolutional models.
        dtype: floating dtype of ``X``.

    Returns:
        Split with ``y`` int64 labels of shape ``(N,)``.
    """
    seed = check_seed(seed)
    _check_float_dtype(dtype)
    path = _mnist1d_cache_path(resolve_root(root), seed)
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d(seed)
        _save_npz_atomically(path, arrays)
    X_train, X_test = _standardize(arrays["x"], arrays["x_test"], axis=None)
    if image:
        X_train, X_test = X_train[:, None, :], X_test[:, None, :]
    return _to_split(X_train, arrays["y"], X_test, arrays["y_test"], dtype, n_classes=10)


# --------------------------------------------------------------------------- #
# torchvision data sets
# --------------------------------------------------------------------------- #
TORCHVISION_DATASETS = {
    "mnist": ("MNIST", 10),
    "fashionmnist": ("FashionMNIST", 10),
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
}


def _manual_download(dataset_class, root: Path) -> str:
    """Which files to fetch by hand, from where, and where to put them."""
    if hasattr(dataset_class, "resources"):  # MNIST-like: raw .gz files under <root>/<Name>/raw
        folder = root / dataset_class.__name__ / "raw"
        urls = [dataset_class.mirrors[0] + name for name, _ in dataset_class.resources]
    else:  # CIFAR: one archive in <root>, unpacked there
        folder, urls = root, [dataset_class.url]
    listing = "\n".join(f"  {url}" for url in urls)
    return (f"fetch these files on a machine with network access:\n{listing}\n"
            f"and put them, as they are, into {folder}/ (torchvision unpacks them there); "
            f"or set $BOOK_DATA to a folder that already holds them")


def _open_torchvision(class_name: str, root: Path, train: bool, download: bool):
    """Instantiate a torchvision data set, translating its errors into clear ones."""
    import torchvision.datasets

    dataset_class = getattr(torchvision.datasets, class_name)
    if not download:
        try:
            return dataset_class(str(root), train=train, download=False)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
            raise FileNotFoundError(
                f"{class_name} is not in {root} ({error}). Download it once with "
                f"load_torchvision({class_name.lower()!r}, download=True) (needs network), or "
                + _manual_download(dataset_class, root)
            ) from error
    try:
        return dataset_class(str(root), train=train, download=True)
    except (RuntimeError, URLError, OSError) as error:
        raise RuntimeError(
            f"downloading {class_name} into {root} failed (no network?): {error}. To set it up "
            "offline, " + _manual_download(dataset_class, root)
        ) from error


def _images_as_array(dataset) -> np.ndarray:
    """Return the images of a torchvision data set as float64 ``(N, C, H, W)`` in [0, 1]."""
    images = np.asarray(dataset.data, dtype=np.float64) / 255.0
    if images.ndim == 3:  # MNIST-like: (N, H, W) grey
        return images[:, None, :, :]
    return images.transpose(0, 3, 1, 2)  # CIFAR: (N, H, W, C)


def load_torchvision(name: str, *, root: str | os.PathLike | None = None, download: bool = False,
                     flatten: bool = False, dtype: torch.dtype = torch.float32) -> Split:
    """Load MNIST, Fashion-MNIST, CIFAR-10 or CIFAR-100 with torchvision's standard split.

    Images are scaled to [0, 1] and then standardized per channel with the
    training mean and standard deviation.

    Args:
        name: one of ``"mnist"``, ``"fashionmnist"``, ``"cifar10"``, ``"cifar100"``.
        root: folder holding torchvision's files; None is :func:`lib.book.paths.data_root`,
            and relative paths are taken inside it.
        download: fetch the files if they are missing (needs network).
        flatten: False gives ``X`` of shape ``(N, C, H, W)``; True gives
            ``(N, C*H*W)`` for MLPs.
        dtype: floating dtype of ``X``.

    Returns:
        Split with ``y`` int64 labels of shape ``(N,)``.

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: files missing and ``download`` is False.
        RuntimeError: ``download`` is True but downloading failed.
    """
    if not isinstance(name, str) or name.lower() not in TORCHVISION_DATASETS:
        known = ", ".join(TORCHVISION_DATASETS)
        raise ValueError(f"unknown data set {name!r}; choose one of {known}")
    _check_float_dtype(dtype)
    class_name, n_classes = TORCHVISION_DATASETS[name.lower()]
    root_path = resolve_root(root)
    train_set = _open_torchvision(class_name, root_path, train=True, download=download)
    test_set = _open_torchvision(class_name, root_path, train=False, download=download)
    X_train, X_test = _standardize(_images_as_array(train_set), _images_as_array(test_set),
                                   axis=(0, 2, 3))
    if flatten:
        X_train, X_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)
    return _to_split(X_train, np.asarray(train_set.targets), X_test, np.asarray(test_set.targets),
                     dtype, n_classes=n_classes)


# --------------------------------------------------------------------------- #
# One entry point by name
# --------------------------------------------------------------------------- #
#: The names :func:`load` accepts.
DATASETS = ("digits", "mnist1d", *TORCHVISION_DATASETS)
# (channels, image side, classes) of the image data sets: load(name, image=True) gives
# X of shape (N, channels, side, side) and labels in range(classes)
IMAGE_SHAPES = {"digits": (1, 8, 10), "mnist": (1, 28, 10), "fashionmnist": (1, 28, 10),
                "cifar10": (3, 32, 10), "cifar100": (3, 32, 100)}


def load(name: str, *, image: bool = False, download: bool = False,
         root: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> Split:
    """Load a classification data set by name (case and ``-``/``_`` are ignored).

    Args:
        name: one of :data:`DATASETS`: ``"digits"``, ``"mnist1d"``, ``"mnist"``,
            ``"fashionmnist"``, ``"cifar10"``, ``"cifar100"`` (``"MNIST-1D"`` and
            ``"CIFAR-10"`` are accepted too).
        image: inputs shaped for convolutions, ``(N, C, H, W)`` or ``(N, 1, L)`` for
            MNIST-1D; otherwise flat ``(N, D)``.
        download: for the torchvision data sets, fetch missing files (needs network).
        root: cache folder (MNIST-1D, torchvision); see :func:`lib.book.paths.data_root`.
        dtype: floating dtype of ``X``.

    Returns:
        Split (see the individual loaders).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if key == "digits":
        return load_digits(image=image, dtype=dtype)
    if key == "mnist1d":
        return load_mnist1d(root=root, image=image, dtype=dtype)
    return load_torchvision(key, root=root, download=download, flatten=not image, dtype=dtype)


# --------------------------------------------------------------------------- #
# Synthetic problems
# --------------------------------------------------------------------------- #
def make_sine(n_samples: int = 100, *, noise: float = 0.3, low: float = 0.0, high: float = 8.0,
              seed: int = 0, dtype: torch.dtype = torch.float32,
              sample_dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Noisy sine regression: ``x ~ U[low, high]``, ``y = sin(x) + N(0, noise^2)``.

    Args:
        n_samples: number of points N.
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
    n_samples = check_int(n_samples, "n_samples")
    noise = _check_non_negative_number(noise, "noise")
    if not low < high:
        raise ValueError(f"need low < high, got low={low}, high={high}")
    generator = torch.Generator().manual_seed(check_seed(seed))
    _check_float_dtype(dtype)
    if not isinstance(sample_dtype, torch.dtype) or not sample_dtype.is_floating_point:
        raise TypeError(f"sample_dtype must be a floating torch.dtype, got {sample_dtype!r}")
    X = low + (high - low) * torch.rand(n_samples, 1, generator=generator, dtype=sample_dtype)
    y = torch.sin(X) + noise * torch.randn(n_samples, 1, generator=generator, dtype=sample_dtype)
    return X.to(dtype), y.to(dtype)


def make_regression(n_samples: int = 100, n_features: int = 5, *, noise: float = 0.1,
                    seed: int = 0, dtype: torch.dtype = torch.float32,
                    return_coef: bool = False):
    """Linear-Gaussian regression: ``X ~ N(0, I)``, ``y = X w + N(0, noise^2)``.

    The true weights are ``w ~ N(0, I / n_features)`` so ``Var(Xw) ~ 1``.

    Args:
        n_samples: number of points N.
        n_features: input dimension D.
        noise: standard deviation of the label noise.
        seed: seed of this call's private generator.
        dtype: floating dtype.
        return_coef: also return the true weights.

    Returns:
        ``(X, y)`` of shapes ``(N, D)`` and ``(N, 1)``; with ``return_coef``
        ``(X, y, w)`` with ``w`` of shape ``(D, 1)``.
    """
    n_samples = check_int(n_samples, "n_samples")
    n_features = check_int(n_features, "n_features")
    noise = _check_non_negative_number(noise, "noise")
    generator = torch.Generator().manual_seed(check_seed(seed))
    _check_float_dtype(dtype)
    w = torch.randn(n_features, 1, generator=generator, dtype=torch.float64) / n_features**0.5
    X = torch.randn(n_samples, n_features, generator=generator, dtype=torch.float64)
    y = X @ w + noise * torch.randn(n_samples, 1, generator=generator, dtype=torch.float64)
    if return_coef:
        return X.to(dtype), y.to(dtype), w.to(dtype)
    return X.to(dtype), y.to(dtype)


def make_teacher_classification(n_samples: int = 1000, n_features: int = 10, n_classes: int = 3,
                                *, hidden: int = 32, seed: int = 0,
                                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Classification labelled by a random "teacher" network.

    ``X ~ N(0, I)`` and ``y = argmax(W2 tanh(W1 x))`` with Gaussian teacher
    weights, so the labels are a deterministic function a student network
    of similar size can fit exactly.

    Args:
        n_samples: number of points N.
        n_features: input dimension D.
        n_classes: number of classes K >= 2.
        hidden: width of the teacher's hidden layer.
        seed: seed of this call's private generator (teacher and inputs).
        dtype: floating dtype of ``X``.

    Returns:
        ``(X, y)`` of shapes ``(N, D)`` (dtype) and ``(N,)`` (int64 in [0, K)).
    """
    n_samples = check_int(n_samples, "n_samples")
    n_features = check_int(n_features, "n_features")
    n_classes = check_int(n_classes, "n_classes")
    if n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, got {n_classes}")
    hidden = check_int(hidden, "hidden")
    generator = torch.Generator().manual_seed(check_seed(seed))
    _check_float_dtype(dtype)
    W1 = torch.randn(n_features, hidden, generator=generator, dtype=torch.float64) / n_features**0.5
    W2 = torch.randn(hidden, n_classes, generator=generator, dtype=torch.float64) / hidden**0.5
    X = torch.randn(n_samples, n_features, generator=generator, dtype=torch.float64)
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
    _check_float_dtype(dtype)
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
    _check_float_dtype(dtype)
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
    return _to_split(X_train, y_train, X_test, y_test, dtype, n_classes=n_classes)


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
    sparsity = _check_non_negative_number(sparsity, "sparsity")
    if sparsity > 1:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    noise = _check_non_negative_number(noise, "noise")
    _check_float_dtype(dtype)
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
