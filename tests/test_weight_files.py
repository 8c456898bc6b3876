"""The one weight reader, the one atomic writer and the one state-dict check."""

import os

import pytest
import torch

from denoised_drs.atomic_file import atomic_write
from denoised_drs.checkpoint_file import load_state_dict, load_weights_only
from denoised_drs.state_dicts import StateDictMismatchError, check_state_dict, find_state_dict


def test_atomic_write_replaces_whole_files_of_bytes_text_and_torch(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    with atomic_write(path) as stream:
        stream.write(b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    with atomic_write(path, "w") as stream:
        stream.write("a\r\nb\n")  # no newline translation: CSV rows keep their \r\n
    assert path.read_bytes() == b"a\r\nb\n"
    with atomic_write(path) as stream:
        torch.save({"w": torch.ones(2)}, stream)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as stream:
        stream.write("half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with pytest.raises(ValueError, match="mode"), atomic_write(path, "a"):
        pass


def test_the_reader_finds_the_state_dict_and_strips_wrapper_prefixes(tmp_path):
    from safetensors.torch import save_file

    weights = {"conv.weight": torch.rand(2, 3), "conv.bias": torch.rand(2)}
    wrapped = {f"module._orig_mod.{k}": v for k, v in weights.items()}
    torch.save({"epoch": 3, "model": wrapped}, tmp_path / "nested.pt")
    save_file(wrapped, str(tmp_path / "flat.safetensors"))
    for name in ("nested.pt", "flat.safetensors"):
        loaded = load_state_dict(tmp_path / name)
        assert loaded.keys() == weights.keys()
        assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert find_state_dict({"state_dict": weights, "model": {}}).keys() == weights.keys()
    with pytest.raises(ValueError, match="x.pt does not hold a state dict"):
        find_state_dict({"arch": "resnet"}, "x.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_weights_only(tmp_path / "list.pt")
    (tmp_path / "bad.safetensors").write_text("not safetensors")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_weights_only(tmp_path / "bad.safetensors")


def test_one_line_names_each_kind_of_misfit():
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": (6,)}
    check_state_dict({"a": torch.ones(2), "b": torch.ones(3), "c": torch.ones(6)}, expected, "x")
    with pytest.raises(StateDictMismatchError) as error:
        check_state_dict({"b": torch.ones(3), "c": torch.ones(3), "d": torch.ones(1)}, expected,
                         "the weights do not fit N", hint="check N")
    assert str(error.value) == (
        "the weights do not fit N: 1 missing key(s), first 'a'; 1 unexpected key(s), first 'd'; "
        "1 shape mismatch(es), first 'c': (3,) in the file, (6,) expected; check N"
    )
    assert isinstance(error.value, ValueError)
