"""Data folders: ImageNet at small sizes (whole images downsampled) and damaged CIFAR-10."""

import contextlib
import hashlib
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from module_files import load_module
from PIL import Image
from torchvision.datasets import CIFAR10
from torchvision.transforms import functional as TF

from denoised_drs.cli import run_script
from denoised_drs.data import get_dataset

SCRIPT = str(Path(__file__).resolve().parents[1] / "scripts" / "certify_diffusion.py")


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """An ImageFolder ``val/`` of non-square RGB images (random pixels, seeded)."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for label, (height, width) in enumerate([(300, 500), (480, 260)]):
        folder = root / "val" / f"class{label}"
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "image.png")
    return root


def test_small_imagenet_sizes_are_whole_images_downsampled(imagenet_folder):
    dataset = get_dataset("imagenet", "test", imagenet_folder, image_size=64)
    for (image, _), (path, _) in zip(dataset, dataset.samples):
        original = Image.open(path).convert("RGB")
        # ImageNet 64x64 (Chrabaszcz et al. 2017): the whole image, box-resized, no crop.
        whole = TF.to_tensor(original.resize((64, 64), Image.Resampling.BOX))
        assert torch.equal(image, whole)
        cropped = TF.to_tensor(TF.center_crop(TF.resize(original, 256), 64))
        assert (image - cropped).abs().max() > 0.1
    # From 224 up, as before: short side to max(S, 256), the centre S x S.
    image, _ = get_dataset("imagenet", "test", imagenet_folder, image_size=224)[0]
    original = Image.open(dataset.samples[0][0]).convert("RGB")
    assert torch.equal(image, TF.to_tensor(TF.center_crop(TF.resize(original, 256), 224)))


def write_cifar10(root: Path) -> dict[str, str]:
    """A CIFAR-10 folder in torchvision's format, tiny and seeded: {file name: MD5}."""
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(1)
    names = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list]
    for name in names:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, 4)]}
        (batches / name).write_bytes(pickle.dumps(entry))
    (batches / CIFAR10.meta["filename"]).write_bytes(
        pickle.dumps({CIFAR10.meta["key"]: [f"class{i}" for i in range(10)]}))
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in batches.iterdir()}


@pytest.fixture
def cifar10_folder(tmp_path, monkeypatch):
    """A tiny CIFAR-10 folder whose checksums torchvision is told to expect."""
    md5 = write_cifar10(tmp_path / "cifar10")
    monkeypatch.setattr(CIFAR10, "train_list", [[n, md5[n]] for n, _ in CIFAR10.train_list])
    monkeypatch.setattr(CIFAR10, "test_list", [[n, md5[n]] for n, _ in CIFAR10.test_list])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5["batches.meta"]})
    return tmp_path / "cifar10"


def test_a_damaged_cifar10_file_is_named(cifar10_folder):
    assert len(get_dataset("cifar10", "test", cifar10_folder)) == 4
    damaged = cifar10_folder / "cifar-10-batches-py" / "test_batch"
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"x")
    with pytest.raises(ValueError, match=r"CIFAR-10 file .*test_batch is damaged: its MD5"):
        get_dataset("cifar10", "test", cifar10_folder)
    # torchvision checks every file whichever split is read, and so does the message.
    with pytest.raises(ValueError, match="test_batch is damaged"):
        get_dataset("cifar10", "train", cifar10_folder)
    (cifar10_folder / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3 is missing"):
        get_dataset("cifar10", "test", cifar10_folder)


def test_the_script_refuses_a_damaged_cifar10_folder_in_one_line(cifar10_folder,
                                                                 tiny_checkpoints, tmp_path):
    damaged = cifar10_folder / "cifar-10-batches-py" / "test_batch"
    damaged.write_bytes(b"not the CIFAR-10 test batch")
    out = tmp_path / "out.tsv"
    args = ["--dataset", "cifar10", "--data-dir", str(cifar10_folder), "--mode", "rs",
            "--classifier", tiny_checkpoints["full"], "--N0", "4", "--N", "8",
            "--device", "cpu", "--outfile", str(out)]
    main = load_module(SCRIPT, "certify_diffusion_data").main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as stop:
            run_script(lambda: main(args), SCRIPT)
    lines = err.getvalue().strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1, err.getvalue()
    assert lines[0].startswith("certify_diffusion.py: error: CIFAR-10 file ")
    assert "test_batch is damaged" in lines[0]
    assert not out.exists()
