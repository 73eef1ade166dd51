"""Tests for lib.book.data (loaders, caching), lib.book.split and lib.book.synthetic (generators)."""

import random
import sys
import types
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from lib.book import data, synthetic
from lib.book.batches import batches
from lib.book.data import Split, load_digits, load_mnist1d, load_torchvision


# --------------------------------------------------------------------------- #
# Split
# --------------------------------------------------------------------------- #
def _toy_split():
    return Split(torch.zeros(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]),
                 torch.zeros(2, 3), torch.tensor([4, 0]))


def test_split_properties():
    split = _toy_split()
    assert split.n_features == 3
    assert split.n_classes == 5  # max label over train and test + 1
    assert split.train[0] is split.X_train and split.test[1] is split.y_test
    moved = split.to("cpu")
    assert isinstance(moved, Split) and moved.n_classes == 5
    assert "n_classes=5" in repr(split)


def test_split_regression_has_no_classes():
    split = Split(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(2, 1), torch.zeros(2, 1))
    assert split.n_classes is None


def test_split_rejects_inconsistent_tensors():
    with pytest.raises(ValueError, match="X_train has 3 examples but y_train has 2"):
        Split(torch.zeros(3, 2), torch.zeros(2), torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="feature shape"):
        Split(torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 4), torch.zeros(1))
    with pytest.raises(TypeError, match="X_test"):
        Split(torch.zeros(3, 2), torch.zeros(3), np.zeros((1, 2)), torch.zeros(1))


# --------------------------------------------------------------------------- #
# Digits
# --------------------------------------------------------------------------- #
def test_load_digits_shapes_and_standardization():
    split = load_digits()
    assert split.X_train.shape == (1347, 64) and split.X_test.shape == (450, 64)
    assert split.y_train.dtype == torch.long and split.n_classes == 10
    assert split.X_train.dtype == torch.float32
    # Standardized with training statistics: per-pixel mean 0, std 1 (or 0 for blank pixels).
    assert split.X_train.mean(0).abs().max() < 1e-5
    stds = split.X_train.std(0, unbiased=False)
    assert torch.all(((stds - 1).abs() < 1e-4) | (stds < 1e-6))
    assert set(split.y_train.tolist()) == set(range(10))


def test_load_digits_image_and_reproducible():
    flat = load_digits(seed=3)
    image = load_digits(seed=3, image=True, dtype=torch.float64)
    assert image.X_train.shape == (1347, 1, 8, 8) and image.X_train.dtype == torch.float64
    assert torch.allclose(image.X_train.reshape(-1, 64).float(), flat.X_train)
    assert torch.equal(load_digits(seed=3).X_train, flat.X_train)
    assert not torch.equal(load_digits(seed=4).y_train, flat.y_train)


@pytest.mark.parametrize("kwargs, error", [
    ({"test_size": 0.0}, ValueError), ({"test_size": 1.5}, ValueError),
    ({"test_size": "0.2"}, TypeError), ({"seed": -1}, ValueError), ({"seed": 0.5}, TypeError),
    ({"dtype": torch.int64}, TypeError), ({"dtype": "float32"}, TypeError),
])
def test_load_digits_bad_input(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        load_digits(**kwargs)


# --------------------------------------------------------------------------- #
# MNIST-1D (generated once per test session into a temporary cache)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist1d_cache")


@pytest.fixture(scope="module")
def mnist1d(mnist1d_root):
    return load_mnist1d(root=mnist1d_root)


def test_mnist1d_standard_shapes(mnist1d):
    assert mnist1d.X_train.shape == (4000, 40) and mnist1d.X_test.shape == (1000, 40)
    assert mnist1d.n_classes == 10 and set(mnist1d.y_train.tolist()) == set(range(10))
    assert abs(mnist1d.X_train.mean().item()) < 1e-4
    assert abs(mnist1d.X_train.std(unbiased=False).item() - 1) < 1e-4


def test_mnist1d_cache_is_plain_npz_and_reused(mnist1d, mnist1d_root, monkeypatch):
    files = sorted(p.name for p in mnist1d_root.iterdir())
    assert files == ["mnist1d_seed42_v1.npz"]  # no temporary files left behind
    with np.load(mnist1d_root / files[0], allow_pickle=False) as cache:
        assert set(cache.files) == {"x", "y", "x_test", "y_test"}

    def fail(seed):
        raise AssertionError("should have read the cache")

    monkeypatch.setattr(data, "_generate_mnist1d", fail)
    again = load_mnist1d(root=mnist1d_root, image=True)
    assert again.X_train.shape == (4000, 1, 40)
    assert torch.equal(again.X_train[:, 0], mnist1d.X_train)


def test_mnist1d_generation_leaves_global_rng_alone(mnist1d_root, monkeypatch):
    # Generation is real but small: shrink the data set to keep the test fast.
    import mnist1d.data as package

    original = package.get_dataset_args

    def small_args(*args, **kwargs):
        result = original(*args, **kwargs)
        result.num_samples = 100
        return result

    monkeypatch.setattr(package, "get_dataset_args", small_args)
    random.seed(0)
    np.random.seed(0)
    expected = (random.random(), np.random.rand())
    random.seed(0)
    np.random.seed(0)
    split = load_mnist1d(root=mnist1d_root / "small", seed=7)
    assert (random.random(), np.random.rand()) == expected
    assert split.X_train.shape == (80, 40)


def test_mnist1d_corrupt_cache_is_regenerated(tmp_path, monkeypatch):
    fake = {"x": np.ones((8, 40)), "y": np.arange(8) % 10, "x_test": np.zeros((2, 40)),
            "y_test": np.array([1, 2])}
    monkeypatch.setattr(data, "_generate_mnist1d", lambda seed: fake)
    path = tmp_path / "mnist1d_seed42_v1.npz"
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable"):
        split = load_mnist1d(root=tmp_path)
    assert split.X_train.shape == (8, 40)
    with np.load(path, allow_pickle=False) as cache:
        assert cache["x"].shape == (8, 40)


def test_mnist1d_bad_input(tmp_path):
    with pytest.raises(ValueError, match="seed"):
        load_mnist1d(root=tmp_path, seed=-2)
    with pytest.raises(TypeError, match="dtype"):
        load_mnist1d(root=tmp_path, dtype=torch.long)


# --------------------------------------------------------------------------- #
# torchvision (no network here: only fakes and the not-downloaded path)
# --------------------------------------------------------------------------- #
def test_torchvision_missing_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as missing:
        load_torchvision("mnist", root=tmp_path)
    # it says which files to fetch and where they go
    assert "train-images-idx3-ubyte.gz" in str(missing.value)
    assert f"{tmp_path / 'MNIST' / 'raw'}/" in str(missing.value)
    with pytest.raises(FileNotFoundError) as missing:
        load_torchvision("cifar10", root=tmp_path)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in str(missing.value)
    assert f"into {tmp_path}/" in str(missing.value)


def test_torchvision_unknown_name():
    with pytest.raises(ValueError, match="imagenet"):
        load_torchvision("imagenet")


def _fake_torchvision(monkeypatch, dataset_class):
    import torchvision

    fake_module = types.SimpleNamespace(MNIST=dataset_class, CIFAR10=dataset_class)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake_module)
    monkeypatch.setattr(torchvision, "datasets", fake_module)


def test_torchvision_download_failure_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        mirrors, resources = torchvision.datasets.MNIST.mirrors, torchvision.datasets.MNIST.resources

        def __init__(self, root, train, download):
            if download:
                raise URLError("Name or service not known")
            raise RuntimeError("Dataset not found or corrupted.")

    _fake_torchvision(monkeypatch, Offline)
    with pytest.raises(RuntimeError, match="no network") as failed:
        load_torchvision("mnist", root=tmp_path, download=True)
    assert "t10k-labels-idx1-ubyte.gz" in str(failed.value) and "offline" in str(failed.value)
    with pytest.raises(FileNotFoundError):
        load_torchvision("MNIST", root=tmp_path)


def test_torchvision_arrays_are_standardized(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)

    class FakeGrey:
        def __init__(self, root, train, download):
            n = 20 if train else 5
            self.data = torch.as_tensor(rng.integers(0, 256, (n, 6, 6)), dtype=torch.uint8)
            self.targets = torch.arange(n) % 10

    class FakeColour:
        def __init__(self, root, train, download):
            n = 20 if train else 5
            self.data = rng.integers(0, 256, (n, 4, 4, 3)).astype(np.uint8)
            self.targets = list(range(n))

    monkeypatch.setattr(data, "_open_torchvision", lambda cls, root, train, download:
                        (FakeColour if cls.startswith("CIFAR") else FakeGrey)(root, train, download))
    grey = load_torchvision("mnist", root=tmp_path)
    assert grey.X_train.shape == (20, 1, 6, 6) and grey.n_classes == 10
    assert abs(grey.X_train.mean().item()) < 1e-5
    colour = load_torchvision("cifar100", root=tmp_path, flatten=True)
    assert colour.X_train.shape == (20, 48) and colour.n_classes == 100
    per_channel = colour.X_train.reshape(20, 3, 16).transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(3), atol=1e-4)


# --------------------------------------------------------------------------- #
# batches
# --------------------------------------------------------------------------- #
def test_batches_cover_data_in_order():
    X, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    parts = batches(X, y, 4)
    assert [len(b[1]) for b in parts] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in parts]), y)


def test_batches_shuffle_is_seeded_and_a_permutation():
    X, y = torch.arange(10.0).reshape(10, 1), torch.arange(10)
    first = batches(X, y, 3, shuffle=True, generator=torch.Generator().manual_seed(1))
    second = batches(X, y, 3, shuffle=True, generator=torch.Generator().manual_seed(1))
    labels = torch.cat([b[1] for b in first])
    assert torch.equal(labels, torch.cat([b[1] for b in second]))
    assert sorted(labels.tolist()) == list(range(10)) and not torch.equal(labels, y)
    for X_batch, y_batch in first:  # inputs stay paired with their labels
        assert torch.equal(X_batch[:, 0].long(), y_batch)


@pytest.mark.parametrize("args, kwargs, error", [
    ((torch.zeros(3, 1), torch.zeros(2), 2), {}, ValueError),
    ((torch.zeros(3, 1), torch.zeros(3), 0), {}, ValueError),
    ((torch.zeros(3, 1), torch.zeros(3), 1.5), {}, TypeError),
    ((np.zeros((3, 1)), torch.zeros(3), 2), {}, TypeError),
    ((torch.zeros(3, 1), torch.zeros(3), 2), {"shuffle": True, "generator": 1}, TypeError),
])
def test_batches_bad_input(args, kwargs, error):
    with pytest.raises(error):
        batches(*args, **kwargs)


# --------------------------------------------------------------------------- #
# Synthetic data
# --------------------------------------------------------------------------- #
def test_make_sine():
    X, y = synthetic.make_sine(500, seed=1)
    assert X.shape == (500, 1) and y.shape == (500, 1)
    assert X.min() >= 0 and X.max() <= 8
    residual = y - torch.sin(X)
    assert abs(residual.std().item() - 0.3) < 0.05
    assert torch.equal(synthetic.make_sine(500, seed=1)[1], y)
    assert not torch.equal(synthetic.make_sine(500, seed=2)[1], y)
    X0, y0 = synthetic.make_sine(10, noise=0.0)
    assert torch.allclose(y0, torch.sin(X0))


def test_make_regression():
    X, y, w = synthetic.make_regression(200, 4, noise=0.0, seed=0, return_coef=True)
    assert X.shape == (200, 4) and y.shape == (200, 1) and w.shape == (4, 1)
    assert torch.allclose(X @ w, y, atol=1e-5)
    assert len(synthetic.make_regression(10, 2)) == 2


def test_make_teacher_classification():
    X, y = synthetic.make_teacher_classification(300, 5, 4, seed=0)
    assert X.shape == (300, 5) and y.shape == (300,) and y.dtype == torch.long
    assert y.min() >= 0 and y.max() < 4 and len(set(y.tolist())) > 1
    assert torch.equal(synthetic.make_teacher_classification(300, 5, 4, seed=0)[1], y)


@pytest.mark.parametrize("call, error", [
    (lambda: synthetic.make_sine(0), ValueError),
    (lambda: synthetic.make_sine(10, noise=-1), ValueError),
    (lambda: synthetic.make_sine(10, low=2, high=1), ValueError),
    (lambda: synthetic.make_sine(10, dtype=torch.int32), TypeError),
    (lambda: synthetic.make_regression(10, 0), ValueError),
    (lambda: synthetic.make_regression("10"), TypeError),
    (lambda: synthetic.make_teacher_classification(10, 2, 1), ValueError),
    (lambda: synthetic.make_teacher_classification(10, 2, 3, hidden=0), ValueError),
])
def test_synthetic_bad_input(call, error):
    with pytest.raises(error):
        call()


# --------------------------------------------------------------------------- #
# load(name): one entry point
# --------------------------------------------------------------------------- #
def test_load_by_name_matches_the_loaders(mnist1d_root, mnist1d):
    digits = data.load("digits", image=True)
    torch.testing.assert_close(digits.X_train, load_digits(image=True).X_train)
    m1d = data.load("MNIST-1D", image=True, root=mnist1d_root)
    assert m1d.X_train.shape == (4000, 1, 40)
    torch.testing.assert_close(m1d.X_train[:, 0], mnist1d.X_train)


def test_load_by_name_passes_download_to_torchvision(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.load("CIFAR-10", root=tmp_path)


@pytest.mark.parametrize("name, error", [("imagenet", ValueError), (3, TypeError)])
def test_load_by_name_bad_input(name, error):
    with pytest.raises(error, match="imagenet|string"):
        data.load(name)


# --------------------------------------------------------------------------- #
# Sloppy Gaussian with a teacher
# --------------------------------------------------------------------------- #
def test_sloppy_eigenvalues_formula():
    lam = synthetic.sloppy_eigenvalues(4, 0.5)
    expected = torch.tensor([50 * 0.5 * np.exp(-0.5 * i) for i in range(1, 5)], dtype=torch.float64)
    torch.testing.assert_close(lam, expected)


def test_make_sloppy_gaussian_shapes_and_labels():
    split = synthetic.make_sloppy_gaussian(300, 100, d=20, seed=1)
    assert split.X_train.shape == (300, 20) and split.X_test.shape == (100, 20)
    assert split.y_train.dtype == torch.long and split.X_train.dtype == torch.float32
    assert split.n_classes == 5
    for c in (0.001, 0.5):
        split = synthetic.make_sloppy_gaussian(2000, 500, c=c, seed=0)
        counts = torch.bincount(split.y_train, minlength=5)
        # No class empty or dominant: the teacher's scaling keeps labels balanced.
        assert counts.min() > 0.05 * 2000 and counts.max() < 0.6 * 2000, counts
        assert torch.bincount(split.y_test, minlength=5).min() > 0


@pytest.mark.parametrize("c", [0.001, 0.5])
def test_make_sloppy_gaussian_covariance(c):
    split = synthetic.make_sloppy_gaussian(20000, 10, d=10, c=c, seed=2, dtype=torch.float64)
    X = split.X_train
    lam = synthetic.sloppy_eigenvalues(10, c)
    # Not standardized: the sample covariance is diag(lambda) up to sampling error.
    covariance = X.T @ X / X.shape[0]
    torch.testing.assert_close(covariance.diagonal(), lam, rtol=0.05, atol=0)
    off = covariance - torch.diag(covariance.diagonal())
    assert (off.abs() / torch.outer(lam, lam).sqrt()).max() < 0.05
    torch.testing.assert_close(torch.linalg.eigvalsh(covariance).flip(0), lam, rtol=0.06, atol=0)


def test_make_sloppy_gaussian_seeded():
    a, b = synthetic.make_sloppy_gaussian(50, 20, seed=3), synthetic.make_sloppy_gaussian(50, 20, seed=3)
    c = synthetic.make_sloppy_gaussian(50, 20, seed=4)
    assert torch.equal(a.X_train, b.X_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.X_train, c.X_train)


@pytest.mark.parametrize("kwargs, error", [
    ({"c": 0.0}, ValueError),
    ({"c": "big"}, TypeError),
    ({"n_classes": 1}, ValueError),
    ({"d": 0}, ValueError),
    ({"n_train": 2.5}, TypeError),
])
def test_make_sloppy_gaussian_bad_input(kwargs, error):
    with pytest.raises(error):
        synthetic.make_sloppy_gaussian(**kwargs)


# --------------------------------------------------------------------------- #
# Sparse regression (diagonal networks)
# --------------------------------------------------------------------------- #
def test_make_sparse_regression_shapes_sparsity_and_labels():
    split, beta = synthetic.make_sparse_regression(30, 40, 200, sparsity=0.9, seed=1,
                                              dtype=torch.float64, return_coef=True)
    assert isinstance(split, Split) and split.n_classes is None
    assert split.X_train.shape == (30, 200) and split.y_train.shape == (30,)
    assert split.X_test.shape == (40, 200) and split.y_test.shape == (40,)
    assert beta.shape == (200,) and int((beta != 0).sum()) == 20
    # Noise-free labels are exactly linear in the inputs, train and test alike.
    torch.testing.assert_close(split.X_train @ beta, split.y_train)
    torch.testing.assert_close(split.X_test @ beta, split.y_test)
    assert split.X_train.dtype == torch.float64
    assert synthetic.make_sparse_regression(5, 5, 10).X_train.dtype == torch.float32


def test_make_sparse_regression_noise_and_seeding():
    a = synthetic.make_sparse_regression(2000, 10, 5, sparsity=0.0, noise=0.5, seed=3,
                                    dtype=torch.float64, return_coef=True)
    split, beta = a
    residual = split.y_train - split.X_train @ beta
    assert abs(residual.std().item() - 0.5) < 0.05
    b = synthetic.make_sparse_regression(2000, 10, 5, sparsity=0.0, noise=0.5, seed=3,
                                    dtype=torch.float64)
    assert torch.equal(b.X_train, split.X_train) and torch.equal(b.y_test, split.y_test)
    c = synthetic.make_sparse_regression(2000, 10, 5, sparsity=0.0, noise=0.5, seed=4,
                                    dtype=torch.float64)
    assert not torch.equal(c.X_train, split.X_train)
    all_zero = synthetic.make_sparse_regression(4, 4, 6, sparsity=1.0)
    assert torch.equal(all_zero.y_train, torch.zeros(4))


@pytest.mark.parametrize("kwargs, error", [
    ({"sparsity": 1.5}, ValueError),
    ({"sparsity": -0.1}, ValueError),
    ({"noise": -1.0}, ValueError),
    ({"d": 0}, ValueError),
    ({"n_train": 2.5}, TypeError),
    ({"dtype": torch.int64}, TypeError),
    ({"seed": -1}, ValueError),
])
def test_make_sparse_regression_bad_input(kwargs, error):
    arguments = {"n_train": 10, "n_test": 5, "d": 20, **kwargs}
    with pytest.raises(error):
        synthetic.make_sparse_regression(**arguments)


def test_generators_take_num_points():
    assert synthetic.make_sine(num_points=7)[0].shape == (7, 1)
    assert synthetic.make_regression(num_points=6, n_features=2)[0].shape == (6, 2)
    assert synthetic.make_teacher_classification(num_points=5)[1].shape == (5,)
    with pytest.raises(ValueError, match="num_points"):
        synthetic.make_sine(0)
    with pytest.raises(TypeError, match="num_points"):
        synthetic.make_regression("10")


def test_split_from_arrays_casts_inputs_and_labels():
    split = Split.from_arrays(np.zeros((4, 2)), [0, 1, 2, 1], np.ones((2, 2)), [1, 0], torch.float32)
    assert split.X_train.dtype == torch.float32 and split.y_test.dtype == torch.long
    assert split.n_classes == 3
    assert data.IMAGE_SHAPES["cifar100"] == (3, 32, 100)


# --------------------------------------------------------------------------- #
# Tiny ImageNet, from an archive laid out as the real one (3 classes, a few images)
# --------------------------------------------------------------------------- #
def _fake_tiny_imagenet(path: Path, wnids=("n01", "n02", "n03"), per_class=2):
    import io
    import zipfile

    from PIL import Image
    rng = np.random.default_rng(0)

    def jpeg(mode):
        shape = (64, 64, 3) if mode == "RGB" else (64, 64)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, "JPEG")
        return buffer.getvalue()

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        lines = []
        for c, wnid in enumerate(wnids):
            for i in range(per_class):
                mode = "L" if (c, i) == (1, 0) else "RGB"  # the real set has a few grey images
                archive.writestr(f"tiny-imagenet-200/train/{wnid}/images/{wnid}_{i}.JPEG", jpeg(mode))
            archive.writestr(f"tiny-imagenet-200/val/images/val_{c}.JPEG", jpeg("RGB"))
            lines.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
        archive.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(reversed(lines)) + "\n")


def test_tiny_imagenet_is_decoded_once_cached_and_standardized(tmp_path):
    _fake_tiny_imagenet(tmp_path / "tiny-imagenet-200.zip")
    split = data.load("tiny_imagenet", image=True, root=tmp_path)
    assert split.X_train.shape == (6, 3, 64, 64) and split.X_test.shape == (3, 3, 64, 64)
    assert split.n_classes == 3
    assert split.y_train.tolist() == [0, 0, 1, 1, 2, 2] and split.y_test.tolist() == [0, 1, 2]
    means = split.X_train.double().mean(dim=(0, 2, 3))
    assert float(means.abs().max()) < 1e-5  # per channel, training statistics
    assert (tmp_path / "tiny_imagenet_v1.pt").exists()
    (tmp_path / "tiny-imagenet-200.zip").unlink()  # the cache alone suffices from now on
    again = data.load_tiny_imagenet(root=tmp_path, flatten=True)
    assert torch.equal(again.X_train, split.X_train.flatten(1))


def test_tiny_imagenet_offline_errors_say_where_to_put_the_archive(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="download=True.*tiny-imagenet-200.zip"):
        data.load_tiny_imagenet(root=tmp_path)

    def no_network(url, timeout=None):
        raise URLError("no route to host")
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(RuntimeError, match="no network.*put it, as it is, at"):
        data.load_tiny_imagenet(root=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []  # no partial archive left behind
