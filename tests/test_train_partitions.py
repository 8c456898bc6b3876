"""Training one classifier per part of a k-part partition (issue 22, section 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from module_files import load_module

from denoised_drs.checkpoint_file import with_content_hash
from denoised_drs.cli import run_script
from denoised_drs.models import SubImageClassifier, load_classifier
from denoised_drs.partition import get_partition
from denoised_drs.scheme import branch_names
from denoised_drs.training import TrainConfig, branch_input, train
from denoised_drs.training import loop as training_loop

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_base.py"
QUICK = ["--dataset", "sample", "--epochs", "1", "--max-train", "16", "--max-test", "8",
         "--batch", "16", "--no-progress", "--cpu"]


def _main(argv: list[str]) -> int:
    return load_module(SCRIPT, "train_base").main([*QUICK, *argv])


def _record(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _spy_on_inputs(monkeypatch) -> list[tuple[str, str, tuple[int, ...]]]:
    """Record (branch, partition, shape) of every batch the loop feeds a model, checking
    each is ``partition.split(x)[j]`` of the branch's part j."""
    seen = []
    real = training_loop.branch_input

    def spy(x, branch, partition=None):
        out = real(x, branch, partition)
        j = branch_names(partition.num_parts).index(branch)
        assert torch.equal(out, partition.split(x)[j])
        seen.append((branch, partition.name, tuple(out.shape[1:])))
        return out

    monkeypatch.setattr(training_loop, "branch_input", spy)
    return seen


def test_all_parts_of_polyphase_2x2_each_train_on_their_own_part(tmp_path, monkeypatch):
    seen = _spy_on_inputs(monkeypatch)
    assert _main(["--partition", "polyphase-2x2", "--branch", "all", "--sigma", "0.125",
                  "--out", str(tmp_path / "poly.pt")]) == 0
    names = ("1", "2", "3", "4")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"poly_{b}.pt" for b in names] + [f"poly_{b}.csv" for b in names]
    )
    # Every part trained (and evaluated) on its own 14 x 14 polyphase component.
    assert {(b, p) for b, p, _ in seen} == {(b, "polyphase-2x2") for b in names}
    assert {shape for *_, shape in seen} == {(1, 14, 14)}
    for branch in names:
        path = tmp_path / f"poly_{branch}.pt"
        record = _record(path)
        assert (record["branch"], record["partition"]) == (branch, "polyphase-2x2")
        assert (record["training"]["branch"], record["training"]["partition"]) == (
            branch, "polyphase-2x2")
        classifier = load_classifier(path)
        assert isinstance(classifier, SubImageClassifier)
        assert classifier(torch.rand(3, 1, 14, 14)).shape == (3, 10)
        with pytest.raises(ValueError, match=r"expected sub-images of shape \(N, C, 14, 14\)"):
            classifier(torch.rand(3, 1, 28, 14))


def test_one_part_of_diagonal_4_writes_one_file(tmp_path, monkeypatch):
    seen = _spy_on_inputs(monkeypatch)
    out = tmp_path / "diag.pt"
    assert _main(["--partition", "diagonal-4", "--branch", "3", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diag.csv", "diag.pt"]
    assert {(b, p, shape) for b, p, shape in seen} == {("3", "diagonal-4", (1, 28, 7))}
    record = _record(out)
    assert (record["branch"], record["partition"], record["training"]["target"]) == (
        "3", "diagonal-4", "drs")
    classifier = load_classifier(out)
    assert classifier(torch.rand(2, 1, 28, 7)).shape == (2, 10)
    for wrong in ((2, 1, 28, 14), (2, 1, 14, 14)):
        with pytest.raises(ValueError, match=r"expected sub-images of shape \(N, C, 28, 7\)"):
            classifier(torch.rand(wrong))


@pytest.mark.parametrize(
    "name", ["checkerboard", "drs-release", "diagonal-2", "diagonal-4", "polyphase-2x2",
             "polyphase-1x4"]
)
def test_branch_input_is_the_partitions_part(name):
    partition = get_partition(name)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    parts = partition.split(x)
    for j, branch in enumerate(branch_names(partition.num_parts)):
        assert torch.equal(branch_input(x, branch, partition), parts[j])
    assert torch.equal(branch_input(x, "full", partition), x)
    with pytest.raises(ValueError, match="has branches"):
        branch_input(x, "9", partition)


def test_part_numbers_and_aliases_are_recorded_as_today_for_two_parts():
    default = TrainConfig.from_recipe("sample", "m.pt", target="drs")
    named = TrainConfig.from_recipe("sample", "m.pt", partition="checkerboard", branch="all")
    assert named.record() == default.record()
    assert (default.partition, default.branch, default.branches) == (None, "both", ("l", "r"))
    for number, name in (("1", "l"), ("2", "r")):
        config = TrainConfig.from_recipe("sample", "m.pt", target="drs", branch=number)
        assert (config.branch, config.branches) == (name, (name,))
    release = TrainConfig.from_recipe("sample", "m.pt", partition="drs-release")
    assert (release.target, release.partition, release.branches) == ("drs", "drs-release",
                                                                     ("l", "r"))
    rs = TrainConfig.from_recipe("sample", "m.pt", partition="identity")
    assert (rs.target, rs.partition, rs.branches) == ("rs", None, ("full",))
    k4 = TrainConfig.from_recipe("sample", "m_{branch}.pt", partition="diagonal-4")
    assert k4.branches == ("1", "2", "3", "4")
    assert [k4.out_path(b).name for b in k4.branches] == [f"m_{j}.pt" for j in range(1, 5)]


def test_checkerboard_checkpoints_load_with_and_without_the_name(tmp_path):
    (path,) = train(TrainConfig.from_recipe(
        "sample", str(tmp_path / "cb.pt"), target="drs", branch="r", epochs=1, max_train=16,
        max_test=8, batch=16, progress=False, cpu=True))
    record = _record(path)
    assert (record["branch"], record["partition"], record["training"]["partition"]) == (
        "r", "", None)
    x = torch.rand(2, 1, 28, 14)
    for partition in (None, "", "checkerboard"):
        assert torch.equal(load_classifier(path, partition=partition)(x),
                           load_classifier(path)(x))


def _quick(tmp_path, **overrides) -> TrainConfig:
    settings = dict(epochs=1, batch=16, max_train=16, max_test=8, progress=False, cpu=True,
                    keep_state=True)
    return TrainConfig.from_recipe("sample", str(tmp_path / "m.pt"), **{**settings, **overrides})


def test_resume_refuses_another_partition_and_accepts_old_states(tmp_path):
    train(_quick(tmp_path, partition="diagonal-4", branch="1"))
    with pytest.raises(ValueError, match=r"partition 'diagonal-4' -> 'polyphase-2x2'$"):
        train(_quick(tmp_path, partition="polyphase-2x2", branch="1", epochs=2, resume=True))
    # A checkerboard state written before partitions were recorded still resumes.
    train(_quick(tmp_path, target="drs", branch="l", overwrite=True))
    state_file = tmp_path / "m.pt.state.pt"
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    del state["settings"]["partition"]
    torch.save(with_content_hash(state), state_file)
    (path,) = train(_quick(tmp_path, target="drs", branch="l", epochs=2, resume=True))
    assert _record(path)["training"]["epochs_done"] == 2


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--partition", "polyphase-2"], "unknown partition 'polyphase-2'"),
        (["--partition", "diagonal-4", "--branch", "5"], "needs branch in"),
        (["--partition", "polyphase-2x2", "--branch", "l"], "needs branch in"),
        (["--partition", "polyphase-2x2", "--branch", "both"], "needs branch in"),
        (["--partition", "polyphase-3x3"], "sample has 1x28x28 images: the polyphase-3x3"),
        (["--partition", "diagonal-3", "--branch", "1"], "width divisible by 3"),
        (["--target", "rs", "--partition", "checkerboard"], "partition must be identity"),
        (["--target", "drs", "--partition", "identity"], "2 or more parts"),
    ],
)
def test_bad_partitions_and_branches_are_one_line_and_exit_code_2(tmp_path, capsys, flags,
                                                                  message):
    with pytest.raises(SystemExit) as exit_:
        run_script(lambda: _main(["--out", str(tmp_path / "m.pt"), *flags]), str(SCRIPT))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
