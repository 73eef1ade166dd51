"""Data sets used in the book, as ready-to-use tensors.

Every loader returns a :class:`~lib.book.split.Split` of four tensors with inputs standardized
using *training* statistics only (the test set never leaks into them).

* :func:`load_digits` - scikit-learn's 8x8 digits (bundled, no download).
* :func:`load_mnist1d` - MNIST-1D, generated with the ``mnist1d`` package and
  cached as plain arrays in the data folder.
* :func:`load_torchvision` - MNIST, Fashion-MNIST, CIFAR-10/100 (for the
  larger "paper" presets; downloads only when asked to).
* :func:`load_tiny_imagenet` - Tiny ImageNet (200 classes of 64x64 images; the Fisher
  chapter's ``paper`` preset; downloads only when asked to).
* :func:`load` - any of the above by name, so a preset can name its data set.

The synthetic generators (``make_sine``, ``make_sloppy_gaussian``, ...) are in
:mod:`lib.book.synthetic`.

Downloads and caches go to :func:`lib.book.paths.data_root` (the repository's ``data/`` in a
clone, a per-user cache folder for an installed package, or ``$BOOK_DATA``); a relative
``root`` is taken inside it, so the same call works from ``chapters/`` too.
"""

from __future__ import annotations

import os
import random
import warnings
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch

from .._checks import check_float_dtype, check_seed
from .paths import resolve_root, write_atomically
from .progress import progress
from .split import Split

__all__ = [
    "Split",
    "load_digits",
    "load_mnist1d",
    "load_torchvision",
    "load_tiny_imagenet",
    "TINY_IMAGENET_URL",
    "TORCHVISION_DATASETS",
    "DATASETS",
    "IMAGE_SHAPES",
    "load",
]


# Bump when the cache layout changes so stale caches are not picked up.
_MNIST1D_CACHE_VERSION = 1
_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


# --------------------------------------------------------------------------- #
# Standardization shared by the loaders
# --------------------------------------------------------------------------- #
def _standardize(train: np.ndarray, test: np.ndarray, axis) -> tuple[np.ndarray, np.ndarray]:
    """Shift and scale both arrays by the mean/std of ``train`` over ``axis``.

    Constant features (std 0, e.g. always-blank border pixels) are only
    centred, not divided by zero.
    """
    mean = train.mean(axis=axis, keepdims=True)
    std = train.std(axis=axis, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


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
    check_float_dtype(dtype)

    digits = sklearn_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float64), digits.target, test_size=test_size,
        random_state=seed, stratify=digits.target)
    X_train, X_test = _standardize(X_train, X_test, axis=0)
    if image:
        X_train, X_test = X_train.reshape(-1, 1, 8, 8), X_test.reshape(-1, 1, 8, 8)
    return Split.from_arrays(X_train, y_train, X_test, y_test, dtype, n_classes=10)


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
    check_float_dtype(dtype)
    path = _mnist1d_cache_path(resolve_root(root), seed)
    arrays = _read_mnist1d_cache(path)
    if arrays is None:
        arrays = _generate_mnist1d(seed)
        _save_npz_atomically(path, arrays)
    X_train, X_test = _standardize(arrays["x"], arrays["x_test"], axis=None)
    if image:
        X_train, X_test = X_train[:, None, :], X_test[:, None, :]
    return Split.from_arrays(X_train, arrays["y"], X_test, arrays["y_test"], dtype, n_classes=10)


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
    check_float_dtype(dtype)
    class_name, n_classes = TORCHVISION_DATASETS[name.lower()]
    root_path = resolve_root(root)
    train_set = _open_torchvision(class_name, root_path, train=True, download=download)
    test_set = _open_torchvision(class_name, root_path, train=False, download=download)
    X_train, X_test = _standardize(_images_as_array(train_set), _images_as_array(test_set),
                                   axis=(0, 2, 3))
    if flatten:
        X_train, X_test = X_train.reshape(len(X_train), -1), X_test.reshape(len(X_test), -1)
    return Split.from_arrays(X_train, np.asarray(train_set.targets), X_test, np.asarray(test_set.targets),
                     dtype, n_classes=n_classes)


# --------------------------------------------------------------------------- #
# Tiny ImageNet
# --------------------------------------------------------------------------- #
#: Where :func:`load_tiny_imagenet` downloads the archive from (the Stanford CS231n course).
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_IMAGENET_ARCHIVE = "tiny-imagenet-200.zip"
_TINY_IMAGENET_CACHE = "tiny_imagenet_v1.pt"  # bump the version when the layout changes


def _download(url: str, path: Path, what: str):
    """Stream ``url`` into ``path`` atomically; ``RuntimeError`` saying how to set it up by hand."""
    from urllib.request import urlopen

    def write(file):
        with urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                file.write(chunk)
    try:
        write_atomically(path, write)
    except (URLError, OSError) as error:
        raise RuntimeError(f"downloading {what} from {url} failed (no network?): {error}. To set it up "
                           f"offline, fetch that file on a machine with network access and put it, as it "
                           f"is, at {path}; or set $BOOK_DATA to a folder that already holds it") from error


def _decode(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    from PIL import Image

    with archive.open(name) as file:
        return np.asarray(Image.open(file).convert("RGB"), dtype=np.uint8)  # a few are grey


def _read_tiny_imagenet(path: Path) -> dict[str, torch.Tensor]:
    """Decode the archive: uint8 images ``(N, 3, 64, 64)`` and int64 labels (the order of
    ``wnids.txt``); the official validation set (50 per class) is the test set."""
    with zipfile.ZipFile(path) as archive:
        top = archive.namelist()[0].split("/")[0]
        wnids = archive.read(f"{top}/wnids.txt").decode().split()
        label = {wnid: i for i, wnid in enumerate(wnids)}
        names = sorted(n for n in archive.namelist() if n.startswith(f"{top}/train/") and n.endswith(".JPEG"))
        train = [(n, label[n.split("/")[2]]) for n in names]
        lines = archive.read(f"{top}/val/val_annotations.txt").decode().splitlines()
        test = sorted((f"{top}/val/images/{line.split()[0]}", label[line.split()[1]]) for line in lines if line)
        out = {"n_classes": torch.tensor(len(wnids))}
        for split, items in (("train", train), ("test", test)):
            images = np.stack([_decode(archive, n) for n, _ in progress(items, desc=f"Tiny ImageNet {split}")])
            out[f"X_{split}"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            out[f"y_{split}"] = torch.tensor([c for _, c in items], dtype=torch.long)
    return out


def load_tiny_imagenet(*, root: str | os.PathLike | None = None, download: bool = False,
                       flatten: bool = False, dtype: torch.dtype = torch.float32) -> Split:
    """Tiny ImageNet: 100,000 training and 10,000 test images of 64x64 pixels, 200 classes.

    The archive (about 240 MB, :data:`TINY_IMAGENET_URL`) is decoded once into
    ``<root>/tiny_imagenet_v1.pt`` (uint8 images, written atomically, read back with
    ``weights_only=True``); the labelled validation set serves as the test set, as it does in
    NNGeometry's experiments. Images are scaled to [0, 1] and standardized per channel with
    the training mean and standard deviation. The float tensors take about 5 GB in float32.

    Args:
        root: folder of the archive and the cache; None is :func:`lib.book.paths.data_root`.
        download: fetch the archive if neither it nor the cache is there (needs network).
        flatten: ``(N, 3 * 64 * 64)`` inputs instead of ``(N, 3, 64, 64)``.
        dtype: floating dtype of ``X``.

    Raises:
        FileNotFoundError: neither the archive nor the cache is there and ``download`` is False.
        RuntimeError: ``download`` is True but downloading failed (with how to do it by hand).
    """
    check_float_dtype(dtype)
    folder = resolve_root(root)
    cache, archive = folder / _TINY_IMAGENET_CACHE, folder / _TINY_IMAGENET_ARCHIVE
    if not cache.exists():
        if not archive.exists():
            if not download:
                raise FileNotFoundError(f"Tiny ImageNet is not in {folder}; load it with download=True "
                                        f"(needs network), or fetch {TINY_IMAGENET_URL} by hand and put "
                                        f"it, as it is, at {archive}")
            _download(TINY_IMAGENET_URL, archive, "Tiny ImageNet")
        arrays = _read_tiny_imagenet(archive)
        write_atomically(cache, lambda file: torch.save(arrays, file))
    arrays = torch.load(cache, weights_only=True)
    X_train, X_test = (arrays[k].to(torch.float32) / 255.0 for k in ("X_train", "X_test"))
    mean = X_train.double().mean(dim=(0, 2, 3), keepdim=True)
    std = X_train.double().std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12)
    X_train, X_test = (((X - mean) / std).to(dtype) for X in (X_train, X_test))
    if flatten:
        X_train, X_test = X_train.flatten(1), X_test.flatten(1)
    return Split(X_train, arrays["y_train"], X_test, arrays["y_test"], int(arrays["n_classes"]))


# --------------------------------------------------------------------------- #
# One entry point by name
# --------------------------------------------------------------------------- #
#: The names :func:`load` accepts.
DATASETS = ("digits", "mnist1d", *TORCHVISION_DATASETS, "tinyimagenet")
# (channels, image side, classes) of the image data sets: load(name, image=True) gives
# X of shape (N, channels, side, side) and labels in range(classes)
IMAGE_SHAPES = {"digits": (1, 8, 10), "mnist": (1, 28, 10), "fashionmnist": (1, 28, 10),
                "cifar10": (3, 32, 10), "cifar100": (3, 32, 100), "tinyimagenet": (3, 64, 200)}


def load(name: str, *, image: bool = False, download: bool = False,
         root: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> Split:
    """Load a classification data set by name (case and ``-``/``_`` are ignored).

    Args:
        name: one of :data:`DATASETS`: ``"digits"``, ``"mnist1d"``, ``"mnist"``,
            ``"fashionmnist"``, ``"cifar10"``, ``"cifar100"``, ``"tinyimagenet"`` (``"MNIST-1D"``,
            ``"CIFAR-10"`` and ``"tiny_imagenet"`` are accepted too).
        image: inputs shaped for convolutions, ``(N, C, H, W)`` or ``(N, 1, L)`` for
            MNIST-1D; otherwise flat ``(N, D)``.
        download: for the torchvision data sets and Tiny ImageNet, fetch missing files (needs network).
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
    if key == "tinyimagenet":
        return load_tiny_imagenet(root=root, download=download, flatten=not image, dtype=dtype)
    return load_torchvision(key, root=root, download=download, flatten=not image, dtype=dtype)
