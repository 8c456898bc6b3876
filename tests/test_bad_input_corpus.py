"""The bad-input corpus: every case ends cleanly, leaves no file and loses nothing.

Each script case runs ``scripts/<name>.py``'s ``main(argv)`` in-process through
:func:`denoised_drs.cli.run_script` (what ``python scripts/<name>.py`` does) and must
end with exit status 2, exactly one line on stderr, no new file anywhere it could
write, and every file that existed before (inputs, earlier results, checkpoints)
byte for byte unchanged. Each API case must raise ValueError or TypeError (or
FileNotFoundError, the documented error for a missing file).

``python tests/test_bad_input_corpus.py`` prints the tally of outcomes (cases tried /
clean error / silent wrong / data lost / other) for whichever ``denoised_drs`` is
on the path, the scripts taken from the same tree; that is how the figures before
and after a change are measured.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from module_files import load_module

import denoised_drs
from denoised_drs.cli import run_script

REPO = Path(denoised_drs.__file__).resolve().parents[1]
CLEAN, SILENT, LOST, OTHER = "clean error", "silent wrong", "data lost", "other"


@dataclass
class Case:
    """One bad input: a script and its argv (``{NAME}`` placeholders), or an API call."""

    name: str
    script: str = ""
    argv: list[str] = field(default_factory=list)
    setup: tuple[str, ...] = ()  # files copied into the run's folder first (fault cases)
    call: object = None  # API cases: a function of the fixture paths


# -- script cases --------------------------------------------------------------

CERTIFY = ["--dataset", "sample", "--mode", "rs", "--classifier", "{FULL}", "--sigma", "0.25",
           "--N0", "10", "--N", "20", "--max", "2", "--device", "cpu", "--outfile",
           "{WORK}/out.tsv"]
DRS = ["--dataset", "sample", "--mode", "drs", "--classifier-l", "{L}", "--classifier-r", "{R}",
       "--sigma", "0.25", "--N0", "10", "--N", "20", "--max", "2", "--device", "cpu",
       "--outfile", "{WORK}/out.tsv"]
TRAIN = ["--dataset", "sample", "--epochs", "1", "--max-train", "16", "--max-test", "8", "--batch",
         "8", "--no-progress", "--cpu", "--out", "{WORK}/m.pt"]
DENOISER = ["--dataset", "sample", "--epochs", "1", "--max-train", "4", "--batch", "2",
            "--num-channels", "32", "--num-head-channels", "32", "--attention-resolutions", "",
            "--timesteps", "50",
            "--out", "{WORK}/d.pt"]
ANALYZE = ["{TSV}", "--out", "{WORK}/analysis"]

BAD_FILES = {
    "missing": "{INPUTS}/missing.pt", "text": "{TEXT}", "truncated": "{TRUNCATED}",
    "empty": "{EMPTY}", "directory": "{INPUTS}", "fifo": "{WORK}/fifo", "json": "{BROKEN}",
}


def certify_cases() -> list[Case]:
    cases = []
    flags = {
        "sigma": ["0", "-1", "nan", "inf", "abc", "1e39"],
        "N0": ["0", "-5", "1.5"],
        "N": ["0", "-1", "x"],
        "alpha": ["0", "1", "1.5", "-0.1", "nan"],
        "batch": ["0", "-1"],
        "seed": ["-1", "abc"],
        "skip": ["0", "-1"],
        "mode": ["xx"],
        "denoise": ["triple"],
        "device": ["tpu9", "cuda:7"],
        "denoiser-chunk": ["0"],
        "dataset": ["mnist3d"],
    }
    for flag, values in flags.items():
        for value in values:
            cases.append(Case(f"certify --{flag} {value}", "certify_diffusion",
                              [*CERTIFY, f"--{flag}", value]))
    cases.append(Case("certify --batch beyond memory", "certify_diffusion",
                      [*CERTIFY, "--N", "100000000000", "--batch", "100000000000"]))
    cases.append(Case("certify --N0 > --N", "certify_diffusion",
                      [*CERTIFY, "--N0", "500", "--N", "100"]))
    cases.append(Case("certify unknown flag", "certify_diffusion", [*CERTIFY, "--frobnicate"]))
    for kind, path in BAD_FILES.items():
        cases.append(Case(f"certify classifier {kind}", "certify_diffusion",
                          [*CERTIFY, "--classifier", path]))
        cases.append(Case(f"certify DRS l-branch {kind}", "certify_diffusion",
                          [*DRS, "--classifier-l", path]))
        cases.append(Case(f"certify denoiser {kind}", "certify_diffusion",
                          [*CERTIFY, "--denoiser", path]))
        if kind != "fifo":  # reading a FIFO would wait for a writer
            cases.append(Case(f"certify --config {kind}", "certify_diffusion",
                              [*CERTIFY, "--config", path]))
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null", "fifo": "{WORK}/fifo",
                       "empty path": "", "under a file": "{TEXT}/out.tsv"}.items():
        cases.append(Case(f"certify --outfile {kind}", "certify_diffusion",
                          [*CERTIFY, "--outfile", path]))
    cases += [
        Case("certify classifier is a denoiser", "certify_diffusion",
             [*CERTIFY, "--classifier", "{DEN}"]),
        Case("certify classifier without arch", "certify_diffusion",
             [*CERTIFY, "--classifier", "{PLAIN}"]),
        Case("certify classifier with flipped bytes", "certify_diffusion",
             [*CERTIFY, "--classifier", "{FLIPPED}"]),
        Case("certify denoiser with flipped bytes", "certify_diffusion",
             [*CERTIFY, "--denoiser", "{FLIPPED_DEN}"]),
        Case("certify denoiser whose UNet cannot take 28 px", "certify_diffusion",
             [*CERTIFY, "--denoiser", "{DEEP}"]),
        Case("certify unknown denoiser preset", "certify_diffusion",
             [*CERTIFY, "--denoiser", "imagenet512"]),
        Case("certify preset without checkpoint", "certify_diffusion",
             [*CERTIFY, "--denoiser", "cifar10-uncond-50M"]),
        Case("certify preset with a text checkpoint", "certify_diffusion",
             [*CERTIFY, "--denoiser", "cifar10-uncond-50M", "--denoiser-checkpoint", "{TEXT}"]),
        Case("certify DRS without branches", "certify_diffusion",
             ["--dataset", "sample", "--mode", "drs", "--classifier", "{FULL}", "--sigma", "0.25",
              "--outfile", "{WORK}/out.tsv", "--device", "cpu"]),
        Case("certify DRS --sigma-r 0", "certify_diffusion", [*DRS, "--sigma-r", "0"]),
        Case("certify DRS --sigma-r nan", "certify_diffusion", [*DRS, "--sigma-r", "nan"]),
        Case("certify missing data folder", "certify_diffusion",
             [*CERTIFY, "--dataset", "fashion-mnist", "--data-dir", "{INPUTS}/none"]),
        Case("certify empty data folder", "certify_diffusion",
             [*CERTIFY, "--dataset", "cifar10", "--data-dir", "{EMPTY_DIR}"]),
        Case("certify config of the wrong type", "certify_diffusion",
             [*CERTIFY, "--config", "{WRONG_TYPE}"]),
        Case("certify config with an unknown key", "certify_diffusion",
             [*CERTIFY, "--config", "{UNKNOWN_KEY}"]),
        Case("certify config that is a list", "certify_diffusion",
             [*CERTIFY, "--config", "{LIST_JSON}"]),
        # Fault cases: an earlier result must survive.
        Case("certify resume under another sigma", "certify_diffusion",
             [*CERTIFY, "--sigma", "0.5"], setup=("out.tsv", "out.tsv.config.json")),
        Case("certify resume with another seed", "certify_diffusion", [*CERTIFY, "--seed", "7"],
             setup=("out.tsv", "out.tsv.config.json")),
        Case("certify resume in DRS mode", "certify_diffusion", DRS,
             setup=("out.tsv", "out.tsv.config.json")),
        Case("certify resume onto a damaged result", "certify_diffusion", CERTIFY,
             setup=("damaged/out.tsv", "out.tsv.config.json")),
        Case("certify resume with another classifier file", "certify_diffusion",
             [*CERTIFY, "--classifier", "{FULL2}"], setup=("out.tsv", "out.tsv.config.json"),),
        Case("certify resume with another data folder", "certify_diffusion",
             [*CERTIFY, "--dataset", "fashion-mnist", "--data-dir", "{FMNIST_COPY}"],
             setup=("out.tsv", "out.tsv.config.json"),),
        Case("certify --outfile with glob characters", "certify_diffusion",
             [*CERTIFY, "--outfile", "{WORK}/r[1].tsv", "--sigma", "0.5"],
             setup=("r[1].tsv", "r[1].tsv.config.json")),
    ]
    return cases


def train_cases() -> list[Case]:
    cases = []
    flags = {
        "sigma": ["-1", "0", "nan", "inf", "1e300"],
        "epochs": ["0", "-1", "x"],
        "lr": ["0", "-1", "nan"],
        "gamma": ["0", "2"],
        "batch": ["0", "-1"],
        "milestones": ["a,b", "0"],
        "num-noise": ["0"],
        "lbd": ["-1", "nan"],
        "eta": ["-1"],
        "weight-decay": ["-1", "inf"],
        "epsilon": ["0"],
        "attack-steps": ["0"],
        "warmup": ["-1"],
        "max-train": ["0"],
        "max-test": ["0"],
        "workers": ["-1"],
        "arch": ["resnet9000", "cifar_resnet20x"],
        "target": ["xx"],
        "strategy": ["xx"],
        "dataset": ["xx"],
        "optimizer": ["xx"],
        "interpolation": ["xx"],
        "seed": ["abc"],
    }
    for flag, values in flags.items():
        for value in values:
            cases.append(Case(f"train --{flag} {value}", "train_base",
                              [*TRAIN, f"--{flag}", value]))
    for kind, path in BAD_FILES.items():
        cases.append(Case(f"train --init {kind}", "train_base", [*TRAIN, "--init", path]))
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null", "fifo": "{WORK}/fifo",
                       "under a file": "{TEXT}/m.pt"}.items():
        cases.append(Case(f"train --out {kind}", "train_base", [*TRAIN, "--out", path]))
        cases.append(Case(f"train --log {kind}", "train_base", [*TRAIN, "--log", path]))
    cases += [
        Case("train --init with flipped bytes", "train_base", [*TRAIN, "--init", "{FLIPPED}"]),
        Case("train --init of another arch", "train_base",
             [*TRAIN, "--init", "{FULL}", "--arch", "cifar_resnet20"]),
        Case("train rs with branch l", "train_base", [*TRAIN, "--target", "rs", "--branch", "l"]),
        Case("train consistency with one noise", "train_base",
             [*TRAIN, "--strategy", "consistency", "--num-noise", "1"]),
        Case("train --out with a bad template", "train_base",
             [*TRAIN, "--out", "{WORK}/m{{branch}}{{x}}.pt"]),
        Case("train --out empty", "train_base", [*TRAIN, "--out", ""]),
        Case("train --resume without state", "train_base", [*TRAIN, "--resume"]),
        Case("train --resume and --overwrite", "train_base", [*TRAIN, "--resume", "--overwrite"]),
        Case("train missing data folder", "train_base",
             [*TRAIN, "--dataset", "fashion-mnist", "--data-dir", "{INPUTS}/none"]),
        Case("train --log is --out", "train_base", [*TRAIN, "--log", "{WORK}/m.pt"]),
        Case("train --log is --out spelled differently", "train_base",
             [*TRAIN, "--log", "{WORK}/./m.pt"]),
        Case("train --log is a link to --out", "train_base", [*TRAIN, "--log", "{WORK}/link.pt"],
             setup=("link.pt",)),
        Case("train both branches, --log is --out", "train_base",
             [*TRAIN, "--target", "drs", "--branch", "both", "--log", "{WORK}/m.pt"]),
        # Fault cases: an existing checkpoint, log or training state must survive.
        Case("train over an existing checkpoint", "train_base", TRAIN, setup=("m.pt",)),
        Case("train over an existing log", "train_base", TRAIN, setup=("m.csv",)),
        Case("train both branches over an existing one", "train_base",
             [*TRAIN, "--target", "drs", "--branch", "both"], setup=("m_r.pt",)),
        Case("train --resume with another sigma", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--sigma", "0.5"],
             setup=("m.pt", "m.csv", "m.pt.state.pt")),
        Case("train --resume with another lr", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--lr", "0.5"],
             setup=("m.pt", "m.csv", "m.pt.state.pt")),
        Case("train --resume with another strategy", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--strategy", "consistency"],
             setup=("m.pt", "m.csv", "m.pt.state.pt")),
        Case("train --resume with another seed", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--seed", "3"],
             setup=("m.pt", "m.csv", "m.pt.state.pt")),
        Case("train --resume of a finished run", "train_base", [*TRAIN, "--resume"],
             setup=("m.pt", "m.csv", "m.pt.state.pt")),
    ]
    return cases


def denoiser_cases() -> list[Case]:
    cases = []
    flags = {
        "epochs": ["0"], "max-train": ["0"], "lr": ["inf", "0", "-1", "nan"], "ema": ["1", "-0.1"],
        "num-head-channels": ["0"], "num-channels": ["0"], "num-res-blocks": ["0"],
        "timesteps": ["0"],
        "batch": ["0", "64"], "sigma-min": ["0", "2"], "sigma-max": ["inf"], "schedule": ["xx"],
        "dataset": ["xx"], "channel-mult": ["a,b"], "seed": ["x"],
    }
    for flag, values in flags.items():
        for value in values:
            cases.append(Case(f"train_denoiser --{flag} {value}", "train_denoiser",
                              [*DENOISER, f"--{flag}", value]))
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null", "fifo": "{WORK}/fifo",
                       "under a file": "{TEXT}/d.pt", "its own log": "{WORK}/d.csv"}.items():
        cases.append(Case(f"train_denoiser --out {kind}", "train_denoiser",
                          [*DENOISER, "--out", path]))
    cases += [
        Case("train_denoiser missing data folder", "train_denoiser",
             [*DENOISER, "--dataset", "fashion-mnist", "--data-dir", "{INPUTS}/none"]),
        Case("train_denoiser over an existing checkpoint", "train_denoiser", DENOISER,
             setup=("d.pt",)),
        Case("train_denoiser over an existing log", "train_denoiser", DENOISER, setup=("d.csv",)),
    ]
    return cases


def analyze_cases() -> list[Case]:
    cases = []
    for kind, path in {"missing": "{INPUTS}/missing.tsv", "directory": "{INPUTS}",
                       "empty": "{EMPTY}", "text": "{TEXT}", "header only": "{HEADER_ONLY}",
                       "junk row": "{JUNK_ROW}",
                       "NaN radius": "{NAN_RADIUS}", "negative radius": "{NEG_RADIUS}",
                       "repeated idx": "{DUP_IDX}", "binary": "{TRUNCATED}"}.items():
        cases.append(Case(f"analyze input {kind}", "analyze", [path, "--out", "{WORK}/analysis"]))
    flags = {"radii": ["-1", "x"], "every": ["0", "-1"], "bound-p": ["1.5", "nan"],
             "bound-noise-norm": ["-1"], "bound-family": ["xx"], "names": ["a", "b"]}
    for flag, values in flags.items():
        for value in values:
            argv = ([*ANALYZE, "--names", "a", value, "c"] if flag == "names"
                    else [*ANALYZE, "--bounds-plot", "{WORK}/bounds.png", f"--{flag}", value])
            cases.append(Case(f"analyze --{flag} {value}", "analyze", argv))
    for kind, path in {"device node": "{WORK}/null", "a file": "{TEXT}",
                       "under a fifo": "{WORK}/fifo"}.items():
        cases.append(Case(f"analyze --out {kind}", "analyze", [*ANALYZE[:1], "--out", path]))
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null",
                       "fifo": "{WORK}/fifo"}.items():
        cases.append(Case(f"analyze --bounds-plot {kind}", "analyze", ["--bounds-plot", path]))
    cases += [
        Case("analyze nothing to do", "analyze", []),
        Case("analyze --bounds-plot is the table", "analyze",
             [*ANALYZE, "--bounds-plot", "{WORK}/analysis/table.md"]),
        Case("analyze --bounds-plot is the input", "analyze",
             ["{WORK}/r.tsv", "--bounds-plot", "{WORK}/r.tsv"], setup=("r.tsv",)),
        Case("analyze --out holds a directory named table.md", "analyze", ANALYZE,
             setup=("analysis/table.md/x",)),
    ]
    return cases


# -- API cases -----------------------------------------------------------------

def api_cases() -> list[Case]:
    from denoised_drs import DualSmooth, Pipeline, PipelineConfig, Smooth, analysis, bounds
    from denoised_drs.models import create_model, load_classifier

    def smooth(p):
        return Smooth(load_classifier(p["FULL"]), 10, 0.25)

    def dual(p):
        return DualSmooth(load_classifier(p["L"]), load_classifier(p["R"]), 10, 0.25)

    image = torch.rand(1, 28, 28)
    calls = {
        "Smooth(None)": lambda p: Smooth(None, 10, 0.25),
        "Smooth num_classes 0": lambda p: Smooth(torch.nn.Identity(), 0, 0.25),
        "Smooth sigma -1": lambda p: Smooth(torch.nn.Identity(), 10, -1),
        "Smooth sigma 'a'": lambda p: Smooth(torch.nn.Identity(), 10, "a"),
        "Smooth sigma nan": lambda p: Smooth(torch.nn.Identity(), 10, math.nan),
        "certify a 2-d image": lambda p: smooth(p).certify(image[0], 10, 20, 0.01, 10),
        "certify a batch of images": lambda p: smooth(p).certify(image[None], 10, 20, 0.01, 10),
        "certify a numpy image": lambda p: smooth(p).certify(image.numpy(), 10, 20, 0.01, 10),
        "certify a list image": lambda p: smooth(p).certify(image.tolist(), 10, 20, 0.01, 10),
        "certify n0 0": lambda p: smooth(p).certify(image, 0, 20, 0.01, 10),
        "certify n -1": lambda p: smooth(p).certify(image, 10, -1, 0.01, 10),
        "certify n 'many'": lambda p: smooth(p).certify(image, 10, "many", 0.01, 10),
        "certify alpha 2": lambda p: smooth(p).certify(image, 10, 20, 2.0, 10),
        "certify alpha nan": lambda p: smooth(p).certify(image, 10, 20, math.nan, 10),
        "certify batch 0": lambda p: smooth(p).certify(image, 10, 20, 0.01, 0),
        "certify wrong channels": lambda p: smooth(p).certify(
            torch.rand(3, 28, 28), 10, 20, 0.01, 10),
        "certify NaN pixel": lambda p: smooth(p).certify(
            image.clone().index_fill_(1, torch.tensor([3]), math.nan), 10, 20, 0.01, 10),
        "certify 0..255 image": lambda p: smooth(p).certify(image * 255, 10, 20, 0.01, 10),
        "predict n 0": lambda p: smooth(p).predict(image, 0, 0.01, 10),
        "DualSmooth odd width": lambda p: dual(p).certify(torch.rand(1, 28, 27), 10, 20, 0.01, 10),
        "DualSmooth sigma_r 0": lambda p: DualSmooth(
            torch.nn.Identity(), torch.nn.Identity(), 10, 0.25, 0.0),
        "DualSmooth 1-d image": lambda p: dual(p).certify(torch.rand(28), 10, 20, 0.01, 10),
        "PipelineConfig mode xx": lambda p: PipelineConfig(mode="xx"),
        "PipelineConfig n 'abc'": lambda p: PipelineConfig.from_dict(
            {"mode": "rs", "classifier": "c.pt", "n": "abc"}),
        "PipelineConfig unknown key": lambda p: PipelineConfig.from_dict(
            {"mode": "rs", "bogus": 1}),
        "PipelineConfig from a list": lambda p: PipelineConfig.from_dict(["mode", "rs"]),
        "PipelineConfig sigma -1": lambda p: PipelineConfig(
            mode="rs", classifier=p["FULL"], sigma=-1.0),
        "Pipeline classifier 123": lambda p: Pipeline(mode="rs", classifier=123, device="cpu"),
        "Pipeline missing classifier": lambda p: Pipeline(
            mode="rs", classifier=p["INPUTS"] + "/none.pt", device="cpu"),
        "Pipeline certify mismatched lengths": lambda p: Pipeline(
            mode="rs", classifier=p["FULL"], n0=10, n=20, device="cpu").certify([image], [1, 2]),
        "Pipeline check_image_shape 2-d": lambda p: Pipeline(
            mode="rs", classifier=p["FULL"], device="cpu").check_image_shape((28, 28)),
        "create_model unknown": lambda p: create_model("xx", num_classes=10),
        "create_model 0 classes": lambda p: create_model("small_cnn", num_classes=0),
        "create_model classes '10'": lambda p: create_model("small_cnn", num_classes="10"),
        "create_model arch None": lambda p: create_model(None, num_classes=10),
        "create_model input_size 5": lambda p: create_model(
            "small_cnn", num_classes=10, in_chans=1, input_size=5),
        "load_classifier 123": lambda p: load_classifier(123),
        "load_classifier missing": lambda p: load_classifier(p["INPUTS"] + "/none.pt"),
        "load_classifier directory": lambda p: load_classifier(p["INPUTS"]),
        "load_classifier text": lambda p: load_classifier(p["TEXT"]),
        "load_classifier flipped bytes": lambda p: load_classifier(p["FLIPPED"]),
        "load_classifier bad branch": lambda p: load_classifier(p["FULL"], branch="middle"),
        "load_results missing": lambda p: analysis.load_results(p["INPUTS"] + "/none.tsv"),
        "load_results None": lambda p: analysis.load_results(None),
        "load_results junk": lambda p: analysis.load_results(p["JUNK_ROW"]),
        "certified_accuracy shapes": lambda p: analysis.certified_accuracy([1, 0], [0.1], [0.0]),
        "certified_accuracy negative radii": lambda p: analysis.certified_accuracy(
            [1], [0.1], [-1.0]),
        "certified_accuracy strings": lambda p: analysis.certified_accuracy(["a"], [0.1], [0.0]),
        "certified_table no runs": lambda p: analysis.certified_table([], [0.0]),
        "certified_table not runs": lambda p: analysis.certified_table([1, 2], [0.0]),
        "rs_radius_upper_bound p 2": lambda p: analysis.rs_radius_upper_bound(2.0, 1.0, 784),
        "radius_bounds_figure family xx": lambda p: analysis.radius_bounds_figure(family="xx"),
        "rs_radius nan": lambda p: bounds.rs_radius(math.nan, 0.25),
        "rs_radius p 1.5": lambda p: bounds.rs_radius(1.5, 0.25),
        "drs_radius sigma 0": lambda p: bounds.drs_radius(0.9, 0.9, 0.0),
        "coupled_radius nan": lambda p: bounds.coupled_radius(math.nan, 0.9, 0.25),
        "clopper_pearson k > n": lambda p: bounds.clopper_pearson_lower(5, 3, 0.01),
        "clopper_pearson k < 0": lambda p: bounds.clopper_pearson_lower(-1, 10, 0.01),
        "clopper_pearson alpha 0": lambda p: bounds.clopper_pearson_lower(5, 10, 0.0),
        "clopper_pearson k 'x'": lambda p: bounds.clopper_pearson_lower("x", 10, 0.01),
    }
    return [Case(f"API {name}", call=call) for name, call in calls.items()]


def all_cases() -> list[Case]:
    return certify_cases() + train_cases() + denoiser_cases() + analyze_cases() + api_cases()


# -- fixtures: tiny models, bad files, earlier results ----------------------------

def _flip_middle_bytes(path: Path, count: int = 64) -> None:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    offset = info.header_offset
    start = (offset + 30 + int.from_bytes(data[offset + 26: offset + 28], "little")
             + int.from_bytes(data[offset + 28: offset + 30], "little") + info.file_size // 2)
    data[start: start + count] = bytes(b ^ 0xFF for b in data[start: start + count])
    path.write_bytes(bytes(data))


RESULT_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA\tcount\n"


def build_inputs(root: Path) -> dict[str, str]:
    """Every input file the cases name, and the earlier results fault cases copy."""
    from denoised_drs.diffusion import openai_unet
    from denoised_drs.diffusion.checkpoint import save_denoiser_checkpoint
    from denoised_drs.models import ClassifierSpec, create_model, save_classifier

    inputs, faults = root / "inputs", root / "faults"
    inputs.mkdir()
    (faults / "damaged").mkdir(parents=True)
    (faults / "analysis" / "table.md").mkdir(parents=True)
    (faults / "analysis" / "table.md" / "x").write_text("keep me\n")
    paths = {"INPUTS": str(inputs), "FAULTS": str(faults)}
    for name, branch, seed in (("FULL", "full", 0), ("L", "l", 1), ("R", "r", 2),
                               ("FULL2", "full", 3)):
        torch.manual_seed(seed)
        spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", branch=branch, sigma=0.25)
        save_classifier(inputs / f"{name.lower()}.pt",
                        create_model(spec.arch, **spec.model_options()).eval(), spec)
        paths[name] = str(inputs / f"{name.lower()}.pt")
    torch.save(torch.load(paths["FULL"], weights_only=True)["state_dict"], inputs / "plain.pt")
    paths["PLAIN"] = str(inputs / "plain.pt")
    flags = {"image_size": 28, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1,
             "channel_mult": "1,2", "attention_resolutions": "", "num_head_channels": 32,
             "learn_sigma": False,
             "use_scale_shift_norm": True, "dropout": 0.0}
    # DEEP downsamples by 8: 28-px images are no multiple of that.
    for name, changes in (("DEN", {}), ("DEEP", {"image_size": 32, "channel_mult": "1,1,1,1"})):
        torch.manual_seed(0)
        save_denoiser_checkpoint(inputs / f"{name.lower()}.pt", openai_unet(**{**flags, **changes}),
                                 {**flags, **changes}, "cosine", 1000)
        paths[name] = str(inputs / f"{name.lower()}.pt")
    for name, source in (("FLIPPED", "FULL"), ("FLIPPED_DEN", "DEN")):
        shutil.copy(paths[source], inputs / f"{name.lower()}.pt")
        _flip_middle_bytes(inputs / f"{name.lower()}.pt")
        paths[name] = str(inputs / f"{name.lower()}.pt")
    files = {
        "TEXT": ("text.pt", "not a checkpoint\n"), "EMPTY": ("empty", ""),
        "BROKEN": ("broken.json", '{"mode": "rs",\n'),
        "WRONG_TYPE": ("wrong_type.json", '{"mode": "rs", "classifier": "c.pt", "n": "abc"}'),
        "UNKNOWN_KEY": ("unknown_key.json", '{"mode": "rs", "classifier": "c.pt", "bogus": 1}'),
        "LIST_JSON": ("list.json", '["mode", "rs"]'),
        "TSV": ("good.tsv", RESULT_HEADER + "0\t1\t1\t0.5\t1\t0.1\t0.9\t18\n"
                "1\t2\t3\t0.2\t0\t0.1\t0.7\t14\n"),
        "HEADER_ONLY": ("header.tsv", RESULT_HEADER),
        "JUNK_ROW": ("junk.tsv", RESULT_HEADER + "0\tjunk\n"),
        "NAN_RADIUS": ("nan.tsv", RESULT_HEADER + "0\t1\t1\tnan\t1\t0.1\t0.9\t18\n"),
        "NEG_RADIUS": ("neg.tsv", RESULT_HEADER + "0\t1\t1\t-0.5\t1\t0.1\t0.9\t18\n"),
        "DUP_IDX": ("dup.tsv", RESULT_HEADER + "0\t1\t1\t0.5\t1\t0.1\t0.9\t18\n"
                    "0\t1\t1\t0.5\t1\t0.1\t0.9\t18\n"),
    }
    for key, (name, text) in files.items():
        (inputs / name).write_text(text)
        paths[key] = str(inputs / name)
    torch.save({"w": torch.zeros(1000)}, inputs / "truncated.pt")
    (inputs / "truncated.pt").write_bytes((inputs / "truncated.pt").read_bytes()[:300])
    paths["TRUNCATED"] = str(inputs / "truncated.pt")
    (inputs / "empty_dir").mkdir()
    paths["EMPTY_DIR"] = str(inputs / "empty_dir")
    paths["FMNIST_COPY"] = str(inputs / "empty_dir")

    # Earlier results and checkpoints, written by the code under test itself.
    certify_args = [a.format(**paths, WORK=str(faults)) for a in CERTIFY]
    _run_script("certify_diffusion", certify_args)
    shutil.copy(faults / "out.tsv", faults / "damaged" / "out.tsv")
    with open(faults / "damaged" / "out.tsv", "a") as handle:
        handle.write("7\tjunk\n")
    _run_script("certify_diffusion", [*certify_args[:-1], str(faults / "r[1].tsv")])
    _run_script("train_base",
                [*(a.format(**paths, WORK=str(faults)) for a in TRAIN), "--keep-state"])
    shutil.copy(faults / "m.pt", faults / "m_r.pt")
    (faults / "link.pt").symlink_to("m.pt")
    _run_script("train_denoiser", [a.format(**paths, WORK=str(faults)) for a in DENOISER])
    shutil.copy(paths["TSV"], faults / "r.tsv")
    return paths


_SCRIPTS: dict[str, object] = {}


def _script(name: str):
    if name not in _SCRIPTS:
        _SCRIPTS[name] = load_module(REPO / "scripts" / f"{name}.py", f"corpus_{name}")
    return _SCRIPTS[name]


def _run_script(name: str, argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``python scripts/<name>.py argv``, run in-process."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_script(lambda: _script(name).main(argv), f"{name}.py")
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    return code, err.getvalue()


def _snapshot(*folders: Path) -> dict[str, bytes | None]:
    state = {}
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_symlink() or path.is_dir():
                state[str(path)] = None
            elif path.is_file():
                state[str(path)] = path.read_bytes()
            else:
                state[str(path)] = b"<special>"
    return state


def run_case(case: Case, paths: dict[str, str], work: Path) -> tuple[str, str]:
    """(outcome, detail) of one case, in the empty folder ``work``."""
    if case.call is not None:
        try:
            case.call(paths)
        except (ValueError, TypeError, FileNotFoundError):  # a missing file: the documented error
            return CLEAN, ""
        except Exception as error:  # noqa: BLE001 - the outcome being measured
            return OTHER, f"{type(error).__name__}: {error}"
        return SILENT, "no error"
    faults = Path(paths["FAULTS"])
    for name in case.setup:
        source, target = faults / name, work / Path(name).name
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
            shutil.copy(faults / os.readlink(source), work / os.readlink(source))
        elif source.is_dir() or Path(name).parent.name == "table.md":
            shutil.copytree(faults / Path(name).parts[0], work / Path(name).parts[0],
                            dirs_exist_ok=True)
        else:
            shutil.copy(source, target)
    # Special files of the run's own: a FIFO, and a device node like /dev/null (which
    # the code before the fix replaced; the machine's own must never be at risk).
    os.mkfifo(work / "fifo")
    try:
        os.mknod(work / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        if "{WORK}/null" in case.argv:
            pytest.skip("cannot create a device node here")
    before = _snapshot(work, Path(paths["INPUTS"]))
    argv = [a.format(**paths, WORK=str(work)) for a in case.argv]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        code, err = _run_script(case.script, argv)
    finally:
        os.chdir(cwd)
    after = _snapshot(work, Path(paths["INPUTS"]))
    if any(after.get(path) != content for path, content in before.items()):
        return LOST, err.strip()[-200:]
    if code == 0 or set(after) - set(before):
        return SILENT, f"exit {code}, new files {sorted(set(after) - set(before))}"
    lines = err.strip().splitlines()
    if code != 2 or len(lines) != 1:
        return OTHER, f"exit {code}: {err.strip()[-300:]}"
    return CLEAN, lines[0]


CASES = all_cases()


@pytest.fixture(scope="module")
def corpus_paths(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("corpus"))


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 150
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: c.name,
)
def test_bad_input_ends_cleanly(case, corpus_paths, tmp_path):
    outcome, detail = run_case(case, corpus_paths, tmp_path)
    assert outcome == CLEAN, detail


def main() -> int:
    """Print the tally of outcomes for the denoised_drs on the path."""
    with tempfile.TemporaryDirectory() as root:
        paths = build_inputs(Path(root))
        tally: Counter[str] = Counter()
        for index, case in enumerate(CASES):
            work = Path(root) / f"case{index}"
            work.mkdir()
            started = time.perf_counter()
            outcome, detail = run_case(case, paths, work)
            if time.perf_counter() - started > 2:
                print(f"slow ({time.perf_counter() - started:.0f} s): {case.name}")
            tally[outcome] += 1
            if outcome != CLEAN:
                print(f"{outcome:12} {case.name}: {' '.join(detail.split())[:160]}")
    print(f"\nrepo {REPO}: tried {len(CASES)}, "
          + ", ".join(f"{k} {tally[k]}" for k in (CLEAN, SILENT, LOST, OTHER)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
