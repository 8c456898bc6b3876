"""Training under hostile input (issue 23, items 6 and 10): NaN starting weights, a run
that diverges, non-finite settings and a worker count that cannot finish all end with one
line and exit 2, and nothing is saved as a finished run."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from module_files import load_module
from safetensors.torch import save_file

from denoised_drs.checkpoint_file import with_content_hash
from denoised_drs.cli import run_script
from denoised_drs.models import ClassifierSpec, create_model
from denoised_drs.training import (
    Gaussian,
    SmoothAdv,
    TrainConfig,
    TrainingDiverged,
    loop,
    max_workers,
    smoothadv_attack,
    train,
)
from denoised_drs.training.divergence import non_finite_tensor

ROOT = Path(__file__).resolve().parents[1]
TRAIN_BASE = ROOT / "scripts" / "train_base.py"
TRAIN_DENOISER = ROOT / "scripts" / "train_denoiser.py"

QUICK = ["--dataset", "sample", "--epochs", "1", "--max-train", "32", "--max-test", "16",
         "--batch", "16", "--no-progress", "--cpu"]
# A tiny denoiser: two steps of 8 images.
DENOISER = ["--dataset", "sample", "--epochs", "1", "--max-train", "16", "--batch", "8",
            "--attention-resolutions", ""]


def _exit_2_one_line(script: Path, name: str, argv: list[str], capsys) -> str:
    """Run ``script``'s main on ``argv`` as the command line does; return its one error line."""
    main = load_module(script, name).main
    with pytest.raises(SystemExit) as exit_:
        run_script(lambda: main(argv), str(script))
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    # Progress bars (redrawn with carriage returns) may come first; the error is one line.
    lines = [line for line in err.split("\n") if line and "\r" not in line]
    assert len(lines) == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert lines[0].startswith(f"{script.name}: error: "), err
    return lines[0]


def _small_cnn_state(poison: float) -> dict[str, torch.Tensor]:
    """The sample recipe's network as a plain state dict, one weight set to ``poison``."""
    spec = ClassifierSpec.for_dataset("small_cnn", "sample")
    state = create_model(spec.arch, **spec.model_options()).model.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = poison
    return {k: v.contiguous() for k, v in state.items()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_non_finite_init_weights_are_refused_naming_the_file(tmp_path, capsys, suffix, poison):
    init = tmp_path / f"init{suffix}"
    state = _small_cnn_state(poison)
    if suffix == ".pt":
        torch.save(state, init)
    else:
        save_file(state, str(init))
    out = tmp_path / "out"
    out.mkdir()
    err = _exit_2_one_line(TRAIN_BASE, "train_base",
                           [*QUICK, "--init", str(init), "--out", str(out / "m.pt")], capsys)
    assert str(init) in err and "non-finite" in err
    assert list(out.iterdir()) == []


def test_a_resume_state_with_nan_weights_is_refused(tmp_path):
    config = TrainConfig.from_recipe("sample", str(tmp_path / "m.pt"), epochs=1, batch=16,
                                     max_train=32, max_test=16, progress=False, cpu=True,
                                     keep_state=True)
    train(config)
    state_file = tmp_path / "m.pt.state.pt"
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][name].view(-1)[0] = math.nan
    torch.save(with_content_hash(state), state_file)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=rf"--resume: .*m\.pt\.state\.pt .*non-finite.*{name}"):
        train(TrainConfig.from_recipe("sample", str(tmp_path / "m.pt"), epochs=2, batch=16,
                                      max_train=32, max_test=16, progress=False, cpu=True,
                                      resume=True))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_a_diverging_run_ends_with_one_line_and_saves_nothing(tmp_path, capsys, optimizer):
    out = tmp_path / "m.pt"
    err = _exit_2_one_line(
        TRAIN_BASE, "train_base",
        [*QUICK, "--epochs", "2", "--lr", "1e30", "--optimizer", optimizer, "--out", str(out)],
        capsys,
    )
    assert "diverged" in err and "--lr" in err
    assert list(tmp_path.iterdir()) == []


def test_one_step_to_finite_but_huge_weights_is_divergence_too(tmp_path, capsys):
    # One step at lr 1e30: the loss was measured before the step and every weight is
    # finite, but the network's test outputs are not, as the engine would see them.
    out = tmp_path / "m.pt"
    err = _exit_2_one_line(
        TRAIN_BASE, "train_base",
        [*QUICK, "--epochs", "1", "--max-train", "8", "--batch", "8", "--lr", "1e30",
         "--out", str(out)],
        capsys,
    )
    assert "diverged in epoch 1" in err and "outputs on" in err and "not finite" in err
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_denoiser_run_ends_with_one_line_and_saves_nothing(tmp_path, capsys):
    out = tmp_path / "d.pt"
    err = _exit_2_one_line(TRAIN_DENOISER, "train_denoiser",
                           [*DENOISER, "--lr", "1e30", "--out", str(out)], capsys)
    assert "diverged" in err and "--lr" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("flags", "message"), [
    (["--strategy", "smoothadv", "--epsilon", "inf"], "epsilon"),
    (["--strategy", "smoothadv", "--epsilon", "nan"], "epsilon"),
    (["--strategy", "smoothadv", "--epsilon", "-0.5"], "epsilon"),
    (["--lr", "nan"], "lr must be positive"),
    (["--lr", "inf"], "lr must be positive"),
    (["--lr", "0"], "lr must be positive"),
    (["--gamma", "nan"], "gamma"),
    (["--lbd", "inf"], "lbd"),
])
def test_impossible_training_settings_are_refused_before_work(tmp_path, capsys, flags,
                                                               message):
    err = _exit_2_one_line(TRAIN_BASE, "train_base",
                           [*QUICK, *flags, "--out", str(tmp_path / "m.pt")], capsys)
    assert message in err
    assert list(tmp_path.iterdir()) == []


def test_the_worker_count_is_bounded_by_the_cpus():
    limit = 4 * (os.cpu_count() or 1)
    assert max_workers() == limit
    assert TrainConfig.from_recipe("sample", "m.pt", workers=limit).workers == limit
    for workers in (limit + 1, 10**6):
        with pytest.raises(ValueError, match=f"workers must lie in 0 ... {limit}"):
            TrainConfig.from_recipe("sample", "m.pt", workers=workers)


def test_a_huge_worker_count_is_refused_before_work(tmp_path, capsys):
    # Before the bound, this spawned workers until the machine ran out of memory.
    err = _exit_2_one_line(TRAIN_BASE, "train_base",
                           [*QUICK, "--workers", str(10**6), "--out", str(tmp_path / "m.pt")],
                           capsys)
    assert "workers must lie in" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("epsilon", [math.inf, math.nan, -1.0])
def test_smoothadv_refuses_a_non_finite_or_negative_epsilon(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        SmoothAdv(epsilon=epsilon)
    x = torch.rand(2, 1, 4, 4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match="epsilon"):
        smoothadv_attack(model, x, torch.tensor([0, 1]), torch.zeros(1, *x.shape), epsilon, 1)


class _NanFromEpoch2(Gaussian):
    """The Gaussian objective whose loss turns NaN in the second epoch (epochs count from 0)."""

    def loss(self, model, x, y, sigma, epoch=0):
        value = super().loss(model, x, y, sigma, epoch)
        return value * math.nan if epoch >= 1 else value


def test_a_run_diverging_in_a_later_epoch_keeps_the_finite_files_unfinished(tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(loop, "make_strategy", lambda *args: _NanFromEpoch2())
    config = TrainConfig.from_recipe("sample", str(tmp_path / "m.pt"), epochs=3, batch=16,
                                     max_train=32, max_test=16, progress=False, cpu=True)
    with pytest.raises(TrainingDiverged, match="diverged in epoch 2 of branch full: the mean"):
        train(config)
    # Epoch 1's files stay; the checkpoint says so, and nothing in them is NaN.
    saved = torch.load(tmp_path / "m.pt", map_location="cpu", weights_only=True)
    assert saved["training"]["epochs_done"] == 1 and saved["training"]["epochs"] == 3
    state = torch.load(tmp_path / "m.pt.state.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert non_finite_tensor([saved["state_dict"], state["state_dict"], state["optimizer"]]) is None
    assert (tmp_path / "m.csv").read_text().count("\n") == 2  # header and epoch 1


def test_non_finite_weights_alone_mean_divergence():
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    loop.check_finite_epoch(0.5, net, optimizer, 1, "full")  # all finite: no error
    optimizer.state_dict()["state"][0]["exp_avg"][0, 0] = math.inf
    assert non_finite_tensor({"optimizer": optimizer.state_dict()}) == "optimizer.state.0.exp_avg"
    with pytest.raises(TrainingDiverged, match="optimizer.state.0.exp_avg holds a NaN"):
        loop.check_finite_epoch(0.5, net, optimizer, 1, "full")
    with torch.no_grad():
        net.bias[1] = math.nan
    with pytest.raises(TrainingDiverged, match="epoch 4 of branch l: weights.bias holds a NaN"):
        loop.check_finite_epoch(0.5, net, optimizer, 4, "l")


@pytest.mark.parametrize(("script", "argv"), [
    (TRAIN_BASE, QUICK),
    (TRAIN_DENOISER, DENOISER),
])
def test_a_stale_world_size_ends_training_in_one_line(tmp_path, script, argv):
    # No launcher started a peer: the join would wait forever. Warnings are left on, so
    # accelerate's OMP_NUM_THREADS advice would show up as extra lines.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                             "PYTHONWARNINGS")}
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(29600 + (os.getpid() % 300)), DENOISED_DRS_RENDEZVOUS_TIMEOUT="2")
    result = subprocess.run([sys.executable, str(script), *argv, "--out", str(tmp_path / "m.pt")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "did not all join within 2 s" in line
    assert list(tmp_path.iterdir()) == []
