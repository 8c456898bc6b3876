"""Datasets: IDX parsing, Fashion-MNIST folders, the bundled sample, missing-data messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from denoised_drs.data import (
    FASHION_MNIST_DIR,
    SAMPLE_PATH,
    fashion_mnist,
    get_dataset,
    load_sample,
    make_sample,
    read_idx,
)


def _idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    ints = np.array([-7, 0, 123456], dtype=">i4")
    floats = np.array([[0.5, -1.25]], dtype=">f4")
    for name, array in (("images", images), ("ints", ints), ("floats", floats)):
        _write_idx(tmp_path / name, array, compress)
    assert np.array_equal(read_idx(tmp_path / "images"), images)
    assert read_idx(tmp_path / "images").shape == (3, 4, 5)
    assert read_idx(tmp_path / "ints").tolist() == [-7, 0, 123456]
    assert read_idx(tmp_path / "floats").tolist() == [[0.5, -1.25]]


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    short = _idx_bytes(np.zeros((2, 3), dtype=np.uint8))[:-1]
    (tmp_path / "short").write_bytes(short)
    with pytest.raises(ValueError, match="promises"):
        read_idx(tmp_path / "short")


def _fake_fashion_folder(folder: Path, n_test: int = 250, n_train: int = 40) -> None:
    rng = np.random.default_rng(1)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress=False)


def test_fashion_mnist_from_a_folder(tmp_path):
    _fake_fashion_folder(tmp_path)
    train = fashion_mnist("train", tmp_path)
    test = get_dataset("fashion-mnist", "test", tmp_path)
    assert len(train) == 40 and len(test) == 250
    image, label = test[13]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and label == 3
    raw = read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert torch.allclose(image[0], torch.from_numpy(raw[13]).float() / 255)


def test_missing_data_messages_say_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        get_dataset("fashion-mnist", "train", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        get_dataset("fashion-mnist", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        get_dataset("cifar10", "test", tmp_path)
    with pytest.raises(FileNotFoundError, match="ImageNet val folder"):
        get_dataset("imagenet", "test", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("mnist", "test")
    with pytest.raises(ValueError, match="split"):
        get_dataset("sample", "validation")


def test_bundled_sample():
    sample = load_sample()
    assert SAMPLE_PATH.stat().st_size < 100_000
    assert len(sample) == 100
    assert sample.indices.tolist() == list(range(0, 10_000, 100))
    image, label = sample[0]
    assert image.shape == (1, 28, 28) and 0 <= label < 10
    assert sorted(set(sample.labels.tolist())) == list(range(10))
    same = get_dataset("sample", "test")
    assert torch.equal(same[42][0], sample[42][0])


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="Fashion-MNIST not installed")
def test_bundled_sample_matches_the_test_set():
    test = fashion_mnist("test")
    sample = load_sample()
    for position in (0, 37, 99):
        index = int(sample.indices[position])
        assert torch.equal(sample[position][0], test[index][0])
        assert sample[position][1] == test[index][1]


def test_make_sample_recreates_the_file(tmp_path):
    _fake_fashion_folder(tmp_path)
    out = make_sample(tmp_path / "out" / "sample.npz", root=tmp_path, every=100)
    sample = load_sample(out)
    assert sample.indices.tolist() == [0, 100, 200]
    assert [sample[i][1] for i in range(3)] == [0, 0, 0]
    assert not list((tmp_path / "out").glob("*.tmp*"))
    with pytest.raises(FileNotFoundError, match="make_sample"):
        load_sample(tmp_path / "absent.npz")


def test_a_file_that_is_not_a_sample_gets_one_clear_message(tmp_path):
    text = tmp_path / "text.npz"
    text.write_text("hello")
    np.savez(tmp_path / "no_images.npz", labels=np.zeros(3))
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        load_sample(text)
    with pytest.raises(ValueError, match="images"):
        load_sample(tmp_path / "no_images.npz")


def _write_sample(path: Path, images: np.ndarray, labels=None) -> Path:
    labels = np.arange(len(images)) % 10 if labels is None else np.asarray(labels)
    np.savez(path, images=images, labels=labels, indices=np.arange(len(images)))
    return path


def test_labels_outside_the_classes_are_refused(tmp_path):
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    for labels, message in (([0, -1, 2], r"outside \[0, 10\), e.g. -1"), ([0, 10, 2], "e.g. 10"),
                            (np.array([0.0, 1.0, 2.0]), "labels must be integers")):
        with pytest.raises(ValueError, match=message):
            load_sample(_write_sample(tmp_path / "s.npz", images, labels))
    _fake_fashion_folder(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(250, 10, dtype=np.uint8),
               compress=False)
    with pytest.raises(ValueError,
                       match=r"t10k-labels-idx1-ubyte: 250 label\(s\) lie outside \[0, 10\)"):
        fashion_mnist("test", tmp_path)


def test_float_images_in_the_unit_interval_are_used_as_they_are(tmp_path):
    rng = np.random.default_rng(0)
    floats = rng.random((4, 28, 28))
    sample = load_sample(_write_sample(tmp_path / "f.npz", floats))
    assert torch.equal(sample[2][0],
                       torch.from_numpy(floats[2:3]).float())  # not cast to uint8 (black)
    sample[2][0].zero_()  # a served image is a copy
    assert sample[2][0].max() > 0
    _fake_fashion_folder(tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.random((250, 28, 28)).astype(">f4"),
               compress=True)
    image = fashion_mnist("test", tmp_path)[7][0]
    assert torch.equal(image[0],
                       torch.from_numpy(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz")[7]))


@pytest.mark.parametrize("images, message", [
    (np.full((2, 28, 28), 200.0), r"must lie in \[0, 1\].*200"),
    (np.full((2, 28, 28), -0.5, dtype=np.float32), r"must lie in \[0, 1\]"),
    (np.full((2, 28, 28), np.nan), "NaN or infinite"),
    (np.ones((2, 28, 28), dtype=np.int32), "must be uint8 .* got int32"),
    (np.ones((2, 28, 28), dtype=bool), "got bool"),
    (np.zeros((2, 28, 28, 3), dtype=np.uint8), "channels-last"),
])
def test_other_pixel_types_are_refused(tmp_path, images, message):
    with pytest.raises(ValueError, match=message):
        load_sample(_write_sample(tmp_path / "s.npz", images))


def test_truncated_or_damaged_archives_give_a_value_error(tmp_path):
    raw = SAMPLE_PATH.read_bytes()
    for cut in (100, len(raw) // 2, len(raw) - 10):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="not a readable .npz archive"):
            load_sample(tmp_path / "cut.npz")
    damaged = bytearray(raw)
    damaged[500:600] = bytes(100)
    (tmp_path / "damaged.npz").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="not a readable .npz archive"):
        load_sample(tmp_path / "damaged.npz")
    _write_idx(tmp_path / "images", np.zeros((50, 28, 28), dtype=np.uint8), compress=True)
    packed = (tmp_path / "images").read_bytes()
    (tmp_path / "images").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match="truncated or damaged gzip file"):
        read_idx(tmp_path / "images")
