"""`arch` as one name per ensemble member: checked against the ensembles' sizes."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from module_files import load_module

from denoised_drs.cli import run_script
from denoised_drs.models.registry import create_model
from denoised_drs.pipeline_config import PipelineConfig

FAST = {"n0": 10, "n": 40, "batch": 25, "device": "cpu"}


def test_one_architecture_per_member_is_kept_and_one_name_stays_a_name():
    config = PipelineConfig(mode="rs", classifier=["a.pt", "b.pt"],
                            arch=["cifar_resnet20", "small_cnn"], **FAST)
    assert config.arch == ["cifar_resnet20", "small_cnn"]
    assert PipelineConfig(mode="rs", classifier=["a.pt"], arch=["resnet50"], **FAST).arch == (
        "resnet50")
    drs = PipelineConfig(mode="drs", classifier_l=["a.pt", "b.pt"],
                         classifier_r=["c.pt", "d.pt"], arch=["resnet50", "small_cnn"], **FAST)
    assert drs.arch == ["resnet50", "small_cnn"]


@pytest.mark.parametrize("settings, message", [
    ({"mode": "rs", "classifier": ["a.pt", "b.pt", "c.pt"], "arch": ["x", "y"]},
     "2 architectures.*classifier has 3"),
    ({"mode": "drs", "classifier_l": ["a.pt", "b.pt"], "classifier_r": ["c.pt"],
      "arch": ["x", "y"]}, "classifier_r has 1"),
    ({"mode": "rs", "classifier": ["a.pt"], "arch": []}, "arch must name"),
    ({"mode": "rs", "classifier": ["a.pt"], "arch": ["x", ""]}, "arch must name"),
    ({"mode": "rs", "classifier": ["a.pt"], "arch": 3}, "arch must name"),
])
def test_an_arch_list_that_does_not_fit_the_ensembles_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**settings, **FAST)


def test_the_script_certifies_an_ensemble_of_two_architectures(tmp_path):
    """--arch once per member: two plain state dicts of different networks, one ensemble."""
    files = []
    for arch in ("cifar_resnet20", "small_cnn"):
        torch.manual_seed(0)
        network = create_model(arch, num_classes=10, in_chans=1, input_size=(28, 28))
        files.append(tmp_path / f"{arch}.pt")
        torch.save(network.state_dict(), files[-1])
    script = Path(__file__).resolve().parents[1] / "scripts" / "certify_diffusion.py"
    main = load_module(script, "certify_diffusion_arch_per_member").main
    out = tmp_path / "ensemble.tsv"
    args = ["--dataset", "sample", "--mode", "rs", "--classifier", *map(str, files),
            "--arch", "cifar_resnet20", "small_cnn", "--sigma", "0.25", "--N0", "2", "--N", "4",
            "--max", "1", "--device", "cpu", "--outfile", str(out)]
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as stop:
            run_script(lambda: main(args), str(script))
    assert stop.value.code in (0, None)
    assert len(out.read_text().splitlines()) == 2
    saved = json.loads(Path(f"{out}.config.json").read_text())
    assert saved["arch"] == ["cifar_resnet20", "small_cnn"]
