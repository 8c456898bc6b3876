"""Checkpoints we write carry a sha256 of their tensors; loading refuses altered weights."""

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from denoised_drs.checkpoint_file import HASH_KEY, load_weights_only, state_dict_digest
from denoised_drs.diffusion import load_denoiser_network
from denoised_drs.models import ClassifierSpec, create_model, load_classifier, save_classifier

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def flip_tensor_bytes(path: Path, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of the largest tensor storage of a torch zip file."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    # Stored (uncompressed) member: its bytes follow the 30-byte local header, name and extra field.
    name_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start: start + count] = bytes(b ^ 0xFF for b in data[start: start + count])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", sorted(p.name for p in CHECKPOINTS.glob("*.pt")))
def test_every_bundled_checkpoint_carries_a_hash_that_matches(name):
    payload = load_weights_only(CHECKPOINTS / name)
    assert payload[HASH_KEY] == state_dict_digest(payload["state_dict"])


def test_flipped_bytes_in_a_bundled_classifier_are_refused(tmp_path):
    copy = tmp_path / "rs.pt"
    shutil.copy(CHECKPOINTS / "fmnist_rs_gaussian_s0.25.pt", copy)
    load_classifier(copy)
    flip_tensor_bytes(copy)
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(copy)


def test_flipped_bytes_in_the_bundled_denoiser_are_refused(tmp_path):
    copy = tmp_path / "denoiser.pt"
    shutil.copy(CHECKPOINTS / "fmnist_denoiser.pt", copy)
    flip_tensor_bytes(copy)
    with pytest.raises(ValueError, match="corrupt"):
        load_denoiser_network(copy)


def test_written_checkpoints_are_hashed_and_files_without_a_hash_still_load(tmp_path):
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist")
    full = create_model(spec.arch, **spec.model_options()).eval()
    save_classifier(tmp_path / "ours.pt", full, spec)
    assert HASH_KEY in torch.load(tmp_path / "ours.pt", weights_only=True)
    # A third-party file: a plain state dict with no hash.
    torch.save(full.model.state_dict(), tmp_path / "plain.pt")
    model = load_classifier(tmp_path / "plain.pt", arch="small_cnn", dataset="fashion-mnist")
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model(x), load_classifier(tmp_path / "ours.pt")(x))


def test_the_digest_sees_every_bit_and_ignores_layout():
    weights = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    digest = state_dict_digest({"w": weights})
    assert state_dict_digest({"w": weights.t().contiguous().t()}) == digest
    changed = weights.clone()
    changed.view(torch.int32)[1, 2] ^= 1
    assert state_dict_digest({"w": changed}) != digest
    assert state_dict_digest({"v": weights}) != digest
    assert state_dict_digest({"w": weights.double()}) != digest
