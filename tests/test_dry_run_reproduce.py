"""benchmarks/dry_run_reproduce.py: every command of docs/reproduce.md runs on stand-ins."""

from pathlib import Path

import pytest
from module_files import load_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dry_run_reproduce.py"


@pytest.fixture(scope="module")
def dry_run():
    return load_module(SCRIPT, "dry_run_reproduce")


def test_every_command_of_the_document_is_found(dry_run, tmp_path):
    commands = dry_run.extract_commands(dry_run.DOC.read_text())
    # Table 1: 2 sigmas x (CIFAR-10, ImageNet) x (DRS joint, denoised RS); Carlini:
    # 3 sigmas x (CIFAR-10, ImageNet); one ImageNet-64 command.
    assert len(commands) == 15
    outfiles = set()
    for command in commands:
        argv, _ = dry_run.stand_in_argv(command, tmp_path, full_size=False)
        values = dry_run.option_values(argv)
        assert values["--N0"] == ["2"] and values["--N"] == ["4"] and values["--max"] == ["2"]
        assert "$" not in " ".join(argv)
        outfiles.add(values["--outfile"][0])
    assert len(outfiles) == 15


def test_the_commands_compute_what_the_references_compute(dry_run):
    """ImageNet on the 224 crop (Carlini et al. and DRS: Resize 256, CenterCrop 224) or,
    for the 64-px denoiser, the whole image at 64; DRS ImageNet on the authors' own
    partition with nearest upsampling; Carlini's resizes bicubic."""
    commands = [dry_run.option_values(command.split())
                for command in dry_run.extract_commands(dry_run.DOC.read_text())]
    imagenet = [c for c in commands if c["--dataset"] == ["imagenet"]]
    assert imagenet and all(
        c["--image-size"] == (["64"] if "imagenet64-uncond" in c["--denoiser"] else ["224"])
        for c in imagenet)
    drs_imagenet = [c for c in imagenet if c["--mode"] == ["drs"]]
    assert drs_imagenet and all(c["--partition"] == ["drs-release"]
                                and c["--interpolation"] == ["nearest"] for c in drs_imagenet)
    carlini = [c for c in commands if "results/carlini" in c["--outfile"][0]]
    assert carlini and all(c["--interpolation"] == ["bicubic"] for c in carlini)


@pytest.mark.slow
def test_every_command_runs_and_writes_its_tsv(dry_run, tmp_path):
    results = dry_run.dry_run(tmp_path, full_size=False)
    assert [(r["outfile"], r["status"], r["rows"]) for r in results] == [
        (r["outfile"], 0, 1) for r in results
    ]
