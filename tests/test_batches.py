"""lib.book.batches: the one place where data becomes (X, y) batches."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lib.book.batches import as_batches, batch_source, check_batch
from lib.book.data import Split


def pair(n=5):
    return torch.arange(3.0 * n).reshape(n, 3), torch.arange(float(n))


def test_a_pair_is_cut_in_order_and_keeps_every_row():
    X, y = pair(5)
    out = as_batches((X, y), batch_size=2)
    assert [len(Xb) for Xb, _ in out] == [2, 2, 1]
    assert torch.equal(torch.cat([Xb for Xb, _ in out]), X)
    assert torch.equal(torch.cat([yb for _, yb in out]), y)
    assert len(as_batches((X, y))) == 1 and as_batches([X, y])[0][0] is X


def test_an_iterable_is_used_as_it_is_and_a_generator_is_replayable():
    X, y = pair(6)
    listed = [(X[:4], y[:4]), (X[4:], y[4:])]
    assert as_batches(listed) == listed
    source = batch_source(b for b in listed)
    assert isinstance(source, list) and len(list(source)) == len(list(source)) == 2


def test_a_dataloader_streams_instead_of_being_loaded_whole():
    loader = DataLoader(TensorDataset(*pair(6)), batch_size=4)
    assert batch_source(loader) is loader
    assert [len(Xb) for Xb, _ in as_batches(loader)] == [4, 2]


def test_device_moves_every_batch():
    out = as_batches(pair(4), batch_size=3, device="cpu")
    assert all(Xb.device.type == "cpu" for Xb, _ in out)


@pytest.mark.parametrize("data, kwargs, error, message", [
    (torch.zeros(3, 2), {}, TypeError, "pair of tensors or an iterable"),
    ("xy", {}, TypeError, "got str"),
    (5, {}, TypeError, "got int"),
    ((torch.zeros(3, 2), torch.zeros(2)), {}, ValueError, "same number of rows"),
    ([(torch.zeros(3, 2), torch.zeros(3)), (torch.zeros(3, 2), [0, 1, 2])], {}, TypeError, "batch 1"),
    ([(torch.zeros(3, 2),)], {}, TypeError, "batch 0 is not an"),
    ([], {}, ValueError, "data is empty"),
    ((torch.zeros(0, 2), torch.zeros(0)), {}, ValueError, "empty batch"),
    ([pair(3)], {"batch_size": 2}, ValueError, "batch_size applies only"),
    (pair(3), {"batch_size": 0}, ValueError, "batch_size"),
])
def test_bad_data_is_named(data, kwargs, error, message):
    with pytest.raises(error, match=message):
        as_batches(data, **kwargs)


def test_a_whole_split_is_refused_with_the_fix():
    split = Split(*pair(4), *pair(2))
    with pytest.raises(TypeError, match="split.train"):
        as_batches(split)
    with pytest.raises(TypeError, match="split.train"):
        batch_source(split)


def test_check_batch_returns_the_pair():
    X, y = pair(2)
    assert check_batch((X, y), 0) == (X, y)
