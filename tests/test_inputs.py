"""Where the (g, h) pair and the data meet: every input checked before the expensive work."""

import numpy as np
import pytest
import torch

from asmix import AsmixError
from asmix.experiments.inputs import PairSource, load_pair


@pytest.fixture
def small_file(tmp_path):
    """Four MNIST-shaped images with labels 0..3."""
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 28, 28), np.uint8), y=np.arange(4))
    return tmp_path / "small.npz"


def test_a_default_count_takes_what_there_is_and_an_asked_count_must_exist(small_file):
    assert len(load_pair(PairSource(data=str(small_file), default_n_examples=100)).x) == 4
    assert len(load_pair(PairSource()).x) == 500  # the demo dataset's own default
    assert len(load_pair(PairSource(default_n_examples=100)).x) == 100
    assert load_pair(PairSource(data=str(small_file), n_examples=3)).y.tolist() == [0, 1, 2]
    with pytest.raises(AsmixError, match=f"n-examples 5 is more than the 4 examples in {small_file}"):
        load_pair(PairSource(data=str(small_file), n_examples=5))


def test_from_end_takes_the_last_examples_of_the_split(small_file):
    assert load_pair(PairSource(data=str(small_file), n_examples=3, from_end=True)).y.tolist() == [1, 2, 3]
    assert load_pair(PairSource(data=str(small_file), default_n_examples=100, from_end=True)).y.tolist() == [0, 1, 2, 3]
    demo = load_pair(PairSource(n_examples=2000))
    tail = load_pair(PairSource(n_examples=3, from_end=True))
    assert torch.equal(tail.x, demo.x[-3:]) and torch.equal(tail.y, demo.y[-3:])
    assert len(load_pair(PairSource(from_end=True)).x) == 500  # the demo's default count, from the end
    with pytest.raises(AsmixError, match="n-examples 5 is more than the 4 examples of the test split"):
        load_pair(PairSource(data=str(small_file), n_examples=5, from_end=True))


@pytest.mark.parametrize("n", [0, -3])
def test_n_examples_must_be_positive_before_anything_loads(n):
    with pytest.raises(AsmixError, match=f"n-examples must be positive, got {n}"):
        PairSource(n_examples=n, data="/nonexistent.npz")


def test_labels_out_of_range_stop_before_the_models_load(tmp_path, monkeypatch):
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 28, 28), np.uint8), y=np.array([1, 2, 10, 3, 11]))
    import asmix.experiments.inputs as inputs

    monkeypatch.setattr(inputs, "load_model", lambda *args, **kwargs: pytest.fail("models loaded before the check"))
    with pytest.raises(AsmixError, match=r"bad\.npz: label 10 at index 2 is outside \[0, 10\) \(2 such labels"):
        load_pair(PairSource(data=str(tmp_path / "bad.npz")))


def test_the_loaded_pair_fits_the_data():
    pair = load_pair(PairSource(n_examples=8))
    assert pair.x.shape == (8, 1, 28, 28) and pair.names == {"std": "demo-std", "rob": "demo-rob"}
    with torch.no_grad():
        assert pair.std(pair.x).shape == (8, 10) and pair.rob(pair.x).shape == (8, 10)


def test_default_eps_follows_dataset_and_norm_in_any_case():
    assert PairSource(dataset="cifar10", norm="L2").default_eps == 0.5  # was 8/255 whatever the norm
    assert PairSource(dataset="cifar10", norm="Linf").norm == "linf"
    assert PairSource(dataset="imagenet").default_eps == 4 / 255
    with pytest.raises(AsmixError, match="imagenet has no standard l2 radius"):
        _ = PairSource(dataset="imagenet", norm="l2").default_eps
    with pytest.raises(AsmixError, match="norm must be one of linf, l2, got 'l1'"):
        PairSource(norm="l1")
