import errno
import hashlib
import pickle

import numpy as np
import pytest
import torch

from asmix import AsmixError, load_data
from asmix.data import check_labels, dataset_info, load_array_file, standard_eps


def test_shipped_demo_data():
    x, y = load_data("demo")
    assert x.shape == (2000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0 <= x.min() and x.max() <= 1 and x.max() == 1.0
    x_train, y_train = load_data("demo", split="train", n_examples=500)
    assert x_train.shape == (500, 1, 28, 28) and set(y_train.tolist()) == set(range(10))
    # the first N examples, in file order
    assert torch.equal(load_data("demo", n_examples=7)[0], x[:7])


@pytest.mark.parametrize(
    "shape, to_nchw",
    [
        ((5, 6, 7), lambda a: a[:, None]),
        ((5, 6, 7, 3), lambda a: a.transpose(0, 3, 1, 2)),
        ((5, 3, 6, 7), lambda a: a),
    ],
)
def test_array_layouts(tmp_path, shape, to_nchw):
    x = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(5))
    loaded, labels = load_array_file(tmp_path / "d.npz")
    np.testing.assert_allclose(loaded.numpy(), to_nchw(x).astype(np.float32) / 255, rtol=1e-6)
    assert labels.tolist() == [0, 1, 2, 3, 4]


def test_float_and_pt_files(tmp_path):
    x = torch.rand(4, 3, 8, 8)
    torch.save({"x": x, "y": torch.tensor([1, 2, 3, 4])}, tmp_path / "d.pt")
    loaded, labels = load_data(data_path=tmp_path / "d.pt", n_examples=2)
    assert torch.equal(loaded, x[:2]) and labels.tolist() == [1, 2]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((2, 4, 4), np.uint8)}, "must contain arrays 'x' and 'y'"),
        ({"x": np.full((2, 4, 4), 2.0), "y": np.zeros(2, int)}, r"must lie in \[0, 1\]"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.zeros(3, int)}, "labels must be 2 integers"),
    ],
)
def test_bad_data_files(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(AsmixError, match=message):
        load_array_file(tmp_path / "d.npz")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AsmixError, match="data file not found"):
        load_data(data_path=tmp_path / "absent.npz")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(AsmixError, match="cannot read data file"):
        load_data(data_path=tmp_path / "bad.npz")
    with pytest.raises(AsmixError, match="unknown dataset 'svhn'"):
        dataset_info("svhn")
    with pytest.raises(AsmixError, match="n-examples must be positive"):
        load_data("demo", n_examples=0)


def test_more_examples_than_there_are_is_an_error_not_a_cut(tmp_path):
    with pytest.raises(AsmixError, match="n-examples 2001 is more than the 2000 examples in the demo test split"):
        load_data("demo", n_examples=2001)
    assert len(load_data("demo", n_examples=2000)[0]) == 2000
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.arange(3))
    with pytest.raises(AsmixError, match=f"n-examples 4 is more than the 3 examples in {tmp_path / 'd.npz'}"):
        load_data(data_path=tmp_path / "d.npz", n_examples=4)


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_non_finite_pixels_are_refused_with_count_and_first_example(tmp_path, suffix):
    x = np.random.default_rng(0).random((5, 1, 4, 4)).astype(np.float32)
    x[3, 0, 1, 2] = np.inf
    x[2, 0, 0, 0] = np.nan
    x[4, 0, 3, 3] = -np.inf
    if suffix == ".npz":
        np.savez(tmp_path / f"d{suffix}", x=x, y=np.arange(5))
    else:
        torch.save({"x": torch.from_numpy(x).double(), "y": torch.arange(5)}, tmp_path / f"d{suffix}")
    with pytest.raises(AsmixError, match=r"3 pixels are NaN or infinite, the first in example 2$") as refused:
        load_array_file(tmp_path / f"d{suffix}")
    assert str(refused.value).startswith(str(tmp_path / f"d{suffix}"))


def test_labels_outside_the_classes_are_refused_with_value_and_index():
    y = torch.tensor([0, 9, 3, 10, -1, 12])
    with pytest.raises(AsmixError, match=r"d\.npz: label 10 at index 3 is outside \[0, 10\) \(3 such labels"):
        check_labels(y, 10, source="d.npz")
    assert torch.equal(check_labels(y[:3], 10), y[:3])
    with pytest.raises(AsmixError, match="label -1 at index 0"):
        check_labels(torch.tensor([-1, 0]), 2)


def no_download(monkeypatch):
    """torchvision's CIFAR downloader, failing as it does offline (and recording that it was asked)."""
    import torchvision.datasets.cifar

    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    return calls


def fake_cifar(root, name, monkeypatch, n=6):
    """A tiny CIFAR folder in torchvision's layout, with the class's checksums pointed at its files, so
    torchvision verifies and reads it as it would the real one. Returns {split: (images NHWC, labels)}."""
    from torchvision import datasets

    cifar = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cifar.base_folder
    folder.mkdir()
    rng = np.random.default_rng(1)
    classes, label_key = (10, "labels") if name == "cifar10" else (100, "fine_labels")

    def write(filename, content):
        (folder / filename).write_bytes(pickle.dumps(content))
        return hashlib.md5((folder / filename).read_bytes()).hexdigest()

    arrays, lists = {}, {}
    for split, (filename, _) in (("train", cifar.train_list[0]), ("test", cifar.test_list[0])):
        images = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, classes, size=n).tolist()
        lists[split] = [[filename, write(filename, {"data": images, label_key: labels})]]
        arrays[split] = images.reshape(n, 3, 32, 32), labels
    meta_md5 = write(cifar.meta["filename"], {cifar.meta["key"]: [f"class{i}" for i in range(classes)]})
    monkeypatch.setattr(cifar, "train_list", lists["train"])
    monkeypatch.setattr(cifar, "test_list", lists["test"])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": meta_md5})
    return arrays


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_names_the_folder_with_or_without_a_network(tmp_path, monkeypatch, name, folder):
    calls = no_download(monkeypatch)
    with pytest.raises(AsmixError, match=f"{name} not found in {tmp_path / folder} and the download failed"):
        load_data(name, data_dir=tmp_path)
    assert len(calls) == 1


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_folder_is_read_in_order_as_nchw_in_unit_range(tmp_path, monkeypatch, name):
    calls = no_download(monkeypatch)
    arrays = fake_cifar(tmp_path, name, monkeypatch)
    for split in ("test", "train"):
        x, y = load_data(name, data_dir=tmp_path, split=split, n_examples=4)
        images, labels = arrays[split]
        assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(images[:4]).float() / 255)
        assert y.tolist() == labels[:4]
    with pytest.raises(AsmixError, match=f"n-examples 7 is more than the 6 examples in the {name} test split"):
        load_data(name, data_dir=tmp_path, n_examples=7)
    assert calls == []  # verified and read locally


@pytest.mark.parametrize(
    "dataset, norm, eps",
    [
        ("cifar10", "linf", 8 / 255),
        ("cifar10", "l2", 0.5),
        ("cifar100", "linf", 8 / 255),
        ("imagenet", "linf", 4 / 255),
        ("mnist", "linf", 0.3),
        ("demo", "Linf", 0.3),
        ("cifar10", "L2", 0.5),
    ],
)
def test_standard_radius_per_dataset_and_norm(dataset, norm, eps):
    # RobustBench's leaderboards (model_info/<dataset>/<threat>/*.json "eps"); AutoAttack's for MNIST
    assert standard_eps(dataset, norm) == eps


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet", "mnist", "demo"])
def test_no_standard_radius_asks_for_eps(dataset):
    with pytest.raises(AsmixError, match=f"{dataset} has no standard l2 radius .*: give --eps"):
        standard_eps(dataset, "l2")
    with pytest.raises(AsmixError, match="norm must be one of linf, l2, got 'l1'"):
        standard_eps(dataset, "l1")


def test_imagenet_loads_in_h_input_space_and_fails_offline_in_one_line(tmp_path, monkeypatch):
    from asmix.compat import import_robustbench
    from asmix.preprocessing import Preprocessing, from_torchvision

    import_robustbench()
    import robustbench.data

    with pytest.raises(
        AsmixError,
        match=f"cannot read ImageNet validation images under {tmp_path / 'val'}: put "
        r"the ILSVRC2012 validation set there as val/<wnid>/",
    ) as missing:
        load_data("imagenet", data_dir=tmp_path, n_examples=2)
    assert len(str(missing.value).splitlines()) == 1
    with pytest.raises(AsmixError, match="n-examples 5001 is more than the 5000"):
        load_data("imagenet", data_dir=tmp_path, n_examples=5001)
    seen = []

    def fake_load(n_examples, data_dir, transforms_test):
        seen.append(from_torchvision(transforms_test))
        return torch.rand(n_examples, 3, 8, 8), torch.arange(n_examples)

    monkeypatch.setattr(robustbench.data, "load_imagenet", fake_load)
    bicubic = Preprocessing(resize=256, crop=(224, 224), interpolation="bicubic")
    x, y = load_data("imagenet", data_dir=tmp_path, n_examples=3, preprocessing=bicubic)
    load_data("imagenet", data_dir=tmp_path, n_examples=3)
    assert x.shape == (3, 3, 8, 8) and y.tolist() == [0, 1, 2]
    assert [(p.resize, p.crop, p.interpolation) for p in seen] == [
        (256, (256, 256), "bicubic"),
        (256, (224, 224), "bilinear"),
    ]
