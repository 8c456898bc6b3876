"""The bad-input corpus: every case ends cleanly, leaves no file and loses nothing.

Each script case runs ``scripts/<name>.py``'s ``main(argv)`` in-process through
:func:`denoised_drs.cli.run_script` (what ``python scripts/<name>.py`` does) and must
end with exit status 2, exactly one line on stderr, no new file anywhere it could
write, and every file that existed before (inputs, earlier results, checkpoints)
byte for byte unchanged. Each API case must raise ValueError or TypeError (or
FileNotFoundError, the documented error for a missing file). Either way the message
must hold the case's expected fragment (``Case.expect``: the flag, file, field or
reason at fault), so that a case refused for another reason fails as "wrong reason".
Cases whose message today does not speak to the bad input say so in ``Case.known``
and are expected failures (strict: fixing the message makes them pass, and the
marker must then go).

``python tests/test_bad_input_corpus.py`` prints the tally of outcomes (cases tried /
clean error / wrong reason / silent wrong / data lost / other) for whichever ``denoised_drs`` is
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
CLEAN, WRONG, SILENT, LOST, OTHER = (
    "clean error", "wrong reason", "silent wrong", "data lost", "other")


@dataclass
class Case:
    """One bad input: a script and its argv (``{NAME}`` placeholders), or an API call.

    ``expect`` is a fragment of the message the refusal must give (the one stderr line
    of a script, the exception's message in the API), compared case-insensitively after
    its ``{NAME}`` placeholders are filled in like the argv's: it names what is wrong
    with this input (the flag, the file, the field, the reason), so that a case
    refused for another reason is a failure ("wrong reason"). ``known`` is set on the
    cases whose message today does not speak to the bad input: it says what the
    message is instead, and the test is an expected failure until the message is fixed.
    """

    name: str
    script: str = ""
    argv: list[str] = field(default_factory=list)
    setup: tuple[str, ...] = ()  # files copied into the run's folder first (fault cases)
    call: object = None  # API cases: a function of the fixture paths
    expect: str = field(kw_only=True)
    known: str = field(default="", kw_only=True)


# -- script cases --------------------------------------------------------------

CERTIFY = ["--dataset", "sample", "--mode", "rs", "--classifier", "{FULL}", "--sigma", "0.25",
           "--N0", "10", "--N", "20", "--max", "2", "--device", "cpu", "--outfile",
           "{WORK}/out.tsv"]
DRS = ["--dataset", "sample", "--mode", "drs", "--classifier-l", "{L}", "--classifier-r", "{R}",
       "--sigma", "0.25", "--N0", "10", "--N", "20", "--max", "2", "--device", "cpu",
       "--outfile", "{WORK}/out.tsv"]
DRS_DEFAULT_SIGMA = DRS[:8] + DRS[10:]  # without --sigma 0.25 (the default sigma, 0.25)
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

# Expected message fragments. In the flag tables a value is a string (the flag's
# fragment applies) or (value, fragment) or (value, fragment, known); "{flag}" and
# "{value}" in a fragment are filled in per case, "{file}" by the bad file's path.
CHOICE = "argument --{flag}: invalid choice: '{value}'"
NOT_INT = "argument --{flag}: invalid int value: '{value}'"
SAMPLE_CAP = "N0 and N must be at most 1,000,000,000 samples per image"
FILE_FRAGMENTS = {
    "classifier": {  # certify --classifier, --classifier-l
        "missing": "classifier checkpoint not found: {file}",
        "text": "{file} is not a checkpoint this library reads",
        "truncated": "cannot read {file} as a weights-only PyTorch checkpoint",
        "empty": "{file} is empty, not a checkpoint",
        "directory": "{file} is a folder but holds no config.json",
        "fifo": "checkpoint not found (or not a file): {file}",
        "json": "{file} is not a checkpoint this library reads",
    },
    "denoiser": {  # certify --denoiser
        "missing": "unknown denoiser '{file}': not a preset",
        "text": "{file} is not a denoiser checkpoint this library reads",
        "truncated": "cannot read {file} as a weights-only PyTorch denoiser checkpoint",
        "empty": "{file} is empty, not a denoiser checkpoint",
        "directory": "not a diffusers denoiser directory: found no {file}/unet/config.json",
        "fifo": "unknown denoiser '{file}': not a preset",
        "json": "{file} is not a denoiser checkpoint this library reads",
    },
    "config": {  # certify --config
        "missing": "configuration file not found: {file}",
        "text": "cannot parse configuration file {file}",
        "truncated": "cannot parse configuration file {file}: it is not UTF-8 text",
        "empty": "cannot parse configuration file {file}",
        "directory": "configuration file not found: {file}",
        "json": "cannot parse configuration file {file}",
    },
    "init": {  # train --init
        "missing": "checkpoint not found (or not a file): {file}",
        "text": "{file} is not a checkpoint this library reads",
        "truncated": "cannot read {file} as a weights-only PyTorch checkpoint",
        "empty": "{file} is empty, not a checkpoint",
        "directory": "checkpoint not found (or not a file): {file}",
        "fifo": "checkpoint not found (or not a file): {file}",
        "json": "{file} is not a checkpoint this library reads",
    },
}
OUT_FRAGMENTS = {  # an output path that cannot be written
    "directory": "cannot write {file}: it is a directory; pass a file path",
    "device node": "cannot write {file}: it exists and is not a regular file",
    "fifo": "cannot write {file}: it exists and is not a regular file",
    "under a file": "cannot write {file}: {TEXT} is not a directory",
    "trailing slash": "cannot write {file}: it names a directory; pass a file path",
    "empty path": "--outfile is empty",
}


def _fragment(template: object, **fill: str) -> tuple[str, str]:
    """(fragment, known) of a table entry, ``{flag}`` / ``{value}`` / ``{file}`` filled in."""
    template, known = template if isinstance(template, tuple) else (template, "")
    for key, value in fill.items():
        template = template.replace("{" + key + "}", value)
    return template, known


def flag_cases(prefix: str, script: str, base: list[str], table: dict) -> list[Case]:
    """One case per bad value of each flag: ``{flag: (fragment, [value, ...])}``."""
    cases = []
    for flag, (fragment, values) in table.items():
        for entry in values:
            value, *own = entry if isinstance(entry, tuple) else (entry,)
            template = fragment if not own else own[0] if len(own) == 1 else tuple(own)
            expect, known = _fragment(template, flag=flag, value=value)
            cases.append(Case(f"{prefix} --{flag} {value}", script, [*base, f"--{flag}", value],
                              expect=expect, known=known))
    return cases


def file_case(name: str, script: str, argv: list[str], role: str, kind: str,
              path: str) -> Case:
    expect, known = _fragment(FILE_FRAGMENTS[role][kind], file=path)
    return Case(name, script, argv, expect=expect, known=known)


def certify_cases() -> list[Case]:
    cases = flag_cases("certify", "certify_diffusion", CERTIFY, {
        "sigma": ("sigma", ["0", "-1", "nan", "inf", "abc", "1e39",
                            ("1e30", "sigma must be at most 10 (pixel values lie in [0, 1])")]),
        "N0": ("N0", ["0", "-5", "1.5"]),
        "N": ("N={value}", ["0", "-1", ("x", NOT_INT), ("9223372036854775808", SAMPLE_CAP)]),
        "alpha": ("alpha must", ["0", "1", "1.5", "-0.1", "nan"]),
        "batch": ("batch must be positive or 'auto', got {value}",
                  ["0", "-1", ("many", "expected a positive integer or auto")]),
        "compile-mode": (CHOICE, ["fast"]),
        "seed": ("seed", ["-1", "abc"]),
        "skip": ("skip must be a positive integer, got {value}", ["0", "-1"]),
        "mode": (CHOICE, ["xx"]),
        "denoise": (CHOICE, ["triple"]),
        "device": ("device '{value}'", ["tpu9", "cuda:7"]),
        "denoiser-chunk": ("denoiser_chunk must be positive, got {value}", ["0"]),
        "dataset": ("unknown dataset '{value}'", ["mnist3d"]),
    })
    cases += [
        # Within the sample cap (10^9), beyond any machine's memory: the memory check.
        Case("certify --batch beyond memory", "certify_diffusion",
             [*CERTIFY, "--N", "1000000000", "--batch", "1000000000"],
             expect="GiB available; pass --batch"),
        Case("certify --N0 > --N", "certify_diffusion", [*CERTIFY, "--N0", "500", "--N", "100"],
             expect="N0 (500) must not exceed N (100)"),
        Case("certify --N0 beyond 64 bits with --adaptive", "certify_diffusion",
             [*CERTIFY, "--N0", "9223372036854775808", "--adaptive"], expect=SAMPLE_CAP),
        Case("certify --N0 huge with --adaptive", "certify_diffusion",
             [*CERTIFY, "--N0", "100000000000", "--N", "200000000000", "--adaptive"],
             expect=SAMPLE_CAP),
        Case("certify --radii beyond a float", "certify_diffusion",
             [*CERTIFY, "--adaptive", "--radii", "1e400"],
             expect="radii must be positive finite numbers"),
        Case("certify unknown flag", "certify_diffusion", [*CERTIFY, "--frobnicate"],
             expect="unrecognized arguments: --frobnicate"),
    ]
    for kind, path in BAD_FILES.items():
        cases.append(file_case(f"certify classifier {kind}", "certify_diffusion",
                               [*CERTIFY, "--classifier", path], "classifier", kind, path))
        cases.append(file_case(f"certify DRS l-branch {kind}", "certify_diffusion",
                               [*DRS, "--classifier-l", path], "classifier", kind, path))
        cases.append(file_case(f"certify denoiser {kind}", "certify_diffusion",
                               [*CERTIFY, "--denoiser", path], "denoiser", kind, path))
        if kind != "fifo":  # reading a FIFO would wait for a writer
            cases.append(file_case(f"certify --config {kind}", "certify_diffusion",
                                   [*CERTIFY, "--config", path], "config", kind, path))
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null", "fifo": "{WORK}/fifo",
                       "empty path": "", "under a file": "{TEXT}/out.tsv",
                       "trailing slash": "{WORK}/res/"}.items():
        cases.append(Case(f"certify --outfile {kind}", "certify_diffusion",
                          [*CERTIFY, "--outfile", path],
                          expect=_fragment(OUT_FRAGMENTS[kind], file=path)[0]))
    cases += [
        Case("certify classifier is a denoiser", "certify_diffusion",
             [*CERTIFY, "--classifier", "{DEN}"],
             expect="{DEN} is not a classifier checkpoint this library can rebuild: it records "
                    "no architecture"),
        Case("certify classifier without arch", "certify_diffusion",
             [*CERTIFY, "--classifier", "{PLAIN}"],
             expect="{PLAIN} is not a classifier checkpoint this library can rebuild: it "
                    "records no architecture"),
        Case("certify classifier with flipped bytes", "certify_diffusion",
             [*CERTIFY, "--classifier", "{FLIPPED}"],
             expect="{FLIPPED} is corrupt: its weights do not match the content hash"),
        Case("certify denoiser with flipped bytes", "certify_diffusion",
             [*CERTIFY, "--denoiser", "{FLIPPED_DEN}"],
             expect="{FLIPPED_DEN} is corrupt: its weights do not match the content hash"),
        Case("certify denoiser whose UNet cannot take 28 px", "certify_diffusion",
             [*CERTIFY, "--denoiser", "{DEEP}"],
             expect="do not fit the denoiser: height and width must be multiples of 8"),
        Case("certify unknown denoiser preset", "certify_diffusion",
             [*CERTIFY, "--denoiser", "imagenet512"], expect="unknown denoiser 'imagenet512'"),
        Case("certify preset without checkpoint", "certify_diffusion",
             [*CERTIFY, "--denoiser", "cifar10-uncond-50M"],
             expect="denoiser 'cifar10-uncond-50M' needs a checkpoint file"),
        Case("certify preset with a text checkpoint", "certify_diffusion",
             [*CERTIFY, "--denoiser", "cifar10-uncond-50M", "--denoiser-checkpoint", "{TEXT}"],
             expect="{TEXT} is not a denoiser checkpoint this library reads"),
        Case("certify DRS without branches", "certify_diffusion",
             ["--dataset", "sample", "--mode", "drs", "--classifier", "{FULL}", "--sigma", "0.25",
              "--outfile", "{WORK}/out.tsv", "--device", "cpu"],
             expect="mode 'drs' needs classifier_l and classifier_r checkpoints"),
        # --sigma-r beside the default sigma (with --sigma, see the case below).
        Case("certify DRS --sigma-r 0", "certify_diffusion",
             [*DRS_DEFAULT_SIGMA, "--sigma-r", "0"], expect="sigma must be positive, got "
             "sigma=0.25, sigma_r=0.0"),
        Case("certify DRS --sigma-r nan", "certify_diffusion",
             [*DRS_DEFAULT_SIGMA, "--sigma-r", "nan"],
             expect="sigma_r must be a finite number, got nan"),
        Case("certify DRS --sigma 0.25 --sigma-r 0", "certify_diffusion",
             [*DRS, "--sigma-r", "0"], expect="sigma_r=0.0"),
        Case("certify missing data folder", "certify_diffusion",
             [*CERTIFY, "--dataset", "fashion-mnist", "--data-dir", "{INPUTS}/none"],
             expect="Fashion-MNIST folder {INPUTS}/none not found"),
        Case("certify empty data folder", "certify_diffusion",
             [*CERTIFY, "--dataset", "cifar10", "--data-dir", "{EMPTY_DIR}"],
             expect="CIFAR-10 not found: expected {EMPTY_DIR}/cifar-10-batches-py"),
        Case("certify image folder with a FIFO named like an image", "certify_diffusion",
             [*CERTIFY, "--dataset", "imagenet", "--data-dir", "{IMG_FIFO}"],
             expect="{IMG_FIFO}/val/class1/trap.JPEG is not a regular file"),
        Case("certify image folder with a link to its parent", "certify_diffusion",
             [*CERTIFY, "--dataset", "imagenet", "--data-dir", "{IMG_LINK}"],
             expect="{IMG_LINK}/val/class0/link is a link to a directory"),
        Case("certify image folder with a decompression bomb", "certify_diffusion",
             [*CERTIFY, "--dataset", "imagenet", "--data-dir", "{IMG_BOMB}"],
             expect="{IMG_BOMB}/val/class0/a_bomb.png is refused as a possible decompression "
                    "bomb"),
        Case("certify config of the wrong type", "certify_diffusion",
             [*CERTIFY, "--config", "{WRONG_TYPE}"], expect="n must be an integer, got 'abc'"),
        Case("certify config with an unknown key", "certify_diffusion",
             [*CERTIFY, "--config", "{UNKNOWN_KEY}"],
             expect="unknown configuration keys ['bogus']"),
        Case("certify config that is a list", "certify_diffusion",
             [*CERTIFY, "--config", "{LIST_JSON}"],
             expect="{LIST_JSON} must hold a mapping of configuration keys"),
        Case("certify config with a data_dir of the wrong type", "certify_diffusion",
             [*CERTIFY, "--config", "{DATA_DIR_TYPE}"], expect="data_dir must be a path"),
        Case("certify classifier with num_classes '10'", "certify_diffusion",
             [*CERTIFY, "--classifier", "{CLASSES_STR}"],
             expect="{CLASSES_STR}: num_classes must be a positive integer, got '10'"),
        Case("certify denoiser without flags", "certify_diffusion",
             [*CERTIFY, "--denoiser", "{NO_FLAGS}"], expect="with no 'flags'"),
        # A pickle that would run a shell command (creating a file) if unpickled.
        Case("certify classifier pickling os.system", "certify_diffusion",
             [*CERTIFY, "--classifier", "{PWN}"],
             expect="{PWN} is not a checkpoint this library reads"),
        Case("certify denoiser pickling os.system", "certify_diffusion",
             [*CERTIFY, "--denoiser", "{PWN}"],
             expect="{PWN} is not a denoiser checkpoint this library reads"),
        # Fault cases: an earlier result must survive.
        Case("certify resume under another sigma", "certify_diffusion",
             [*CERTIFY, "--sigma", "0.5"], setup=("out.tsv", "out.tsv.config.json"),
             expect="sigma was 0.25, now 0.5"),
        Case("certify resume with another seed", "certify_diffusion", [*CERTIFY, "--seed", "7"],
             setup=("out.tsv", "out.tsv.config.json"), expect="seed was 0, now 7"),
        Case("certify resume in DRS mode", "certify_diffusion", DRS,
             setup=("out.tsv", "out.tsv.config.json"), expect="mode was 'rs', now 'drs'"),
        Case("certify resume onto a damaged result", "certify_diffusion", CERTIFY,
             setup=("damaged/out.tsv", "out.tsv.config.json"),
             expect="{WORK}/out.tsv line 4 is not a result row of this run"),
        Case("certify resume with another classifier file", "certify_diffusion",
             [*CERTIFY, "--classifier", "{FULL2}"], setup=("out.tsv", "out.tsv.config.json"),
             expect="the classifier file {FULL2} changed since the run began"),
        Case("certify resume with another data folder", "certify_diffusion",
             [*CERTIFY, "--dataset", "fashion-mnist", "--data-dir", "{FMNIST_COPY}"],
             setup=("out.tsv", "out.tsv.config.json"),
             expect="dataset was 'sample', now 'fashion-mnist'"),
        Case("certify --outfile with glob characters", "certify_diffusion",
             [*CERTIFY, "--outfile", "{WORK}/r[1].tsv", "--sigma", "0.5"],
             setup=("r[1].tsv", "r[1].tsv.config.json"),
             expect="{WORK}/r[1].tsv was started with another configuration: sigma was 0.25, "
                    "now 0.5"),
        # Another run's result named like a part file of this one: never merged or deleted.
        Case("certify resume beside another run's result named OUT.part0", "certify_diffusion",
             CERTIFY, setup=("out.tsv", "out.tsv.config.json", "foreign/out.tsv.part0",
                             "foreign/out.tsv.part0.config.json"),
             expect="{WORK}/out.tsv.part0 is not a part file of this run"),
        Case("certify a new run beside a part file of another run", "certify_diffusion",
             CERTIFY, setup=("foreign_id/out.tsv.part0", "foreign_id/out.tsv.part0.id"),
             expect="{WORK}/out.tsv.part0 exists without the configuration file "
                    "out.tsv.config.json"),
        Case("certify resume onto a part file of another run", "certify_diffusion", CERTIFY,
             setup=("out.tsv", "out.tsv.config.json", "foreign_id/out.tsv.part0",
                    "foreign_id/out.tsv.part0.id"),
             expect="{WORK}/out.tsv.part0 belongs to another run"),
    ]
    return cases


def train_cases() -> list[Case]:
    cases = flag_cases("train", "train_base", TRAIN, {
        "sigma": ("sigma must be positive, finite and a float32", ["-1", "0", "nan", "inf",
                                                                  "1e300"]),
        "epochs": ("epochs", ["0", "-1", "x"]),
        # 1e30 passes the check and diverges: one line, nothing saved.
        "lr": ("lr must be positive and finite", ["0", "-1", "nan", (
            "1e30", "training diverged in epoch 1 of branch full: the mean train loss is nan")]),
        "gamma": ("gamma must lie in (0, 1]", ["0", "2"]),
        "batch": ("batch must be >= 1", ["0", "-1"]),
        "milestones": ("milestones must be", ["a,b", "0"]),
        "num-noise": ("num-noise must be >= 1", ["0"]),
        "lbd": ("lbd and eta must be non-negative and finite", ["-1", "nan"]),
        "eta": ("lbd and eta must be non-negative and finite", ["-1"]),
        "weight-decay": ("weight-decay and momentum must be non-negative and finite",
                         ["-1", "inf"]),
        "epsilon": ("finite epsilon > 0", ["0"]),
        "attack-steps": ("attack-steps >= 1", ["0"]),
        "warmup": ("warmup >= 0", ["-1"]),
        "max-train": ("max-train must be >= 1", ["0"]),
        "max-test": ("max-test must be >= 1", ["0"]),
        "workers": ("workers must lie in 0 ", ["-1", "1000000"]),
        "arch": ("unknown architecture '{value}'", ["resnet9000", "cifar_resnet20x"]),
        "target": (CHOICE, ["xx"]),
        "strategy": (CHOICE, ["xx"]),
        "dataset": (CHOICE, ["xx"]),
        "optimizer": (CHOICE, ["xx"]),
        "interpolation": (CHOICE, ["xx"]),
        "seed": (NOT_INT, ["abc"]),
    })
    for kind, path in BAD_FILES.items():
        cases.append(file_case(f"train --init {kind}", "train_base", [*TRAIN, "--init", path],
                               "init", kind, path))
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null", "fifo": "{WORK}/fifo",
                       "under a file": "{TEXT}/m.pt"}.items():
        expect = _fragment(OUT_FRAGMENTS[kind], file=path)[0]
        cases.append(Case(f"train --out {kind}", "train_base", [*TRAIN, "--out", path],
                          expect=expect))
        cases.append(Case(f"train --log {kind}", "train_base", [*TRAIN, "--log", path],
                          expect=expect))
    cases += [
        Case("train --init with flipped bytes", "train_base", [*TRAIN, "--init", "{FLIPPED}"],
             expect="{FLIPPED} is corrupt: its weights do not match the content hash"),
        Case("train --init of another arch", "train_base",
             [*TRAIN, "--init", "{FULL}", "--arch", "cifar_resnet20"],
             expect="--init {FULL} holds a 'small_cnn', but arch is 'cifar_resnet20'"),
        Case("train --init with NaN weights", "train_base", [*TRAIN, "--init", "{NAN_INIT}"],
             expect="--init {NAN_INIT} holds non-finite weights"),
        Case("train --init pickling os.system", "train_base", [*TRAIN, "--init", "{PWN}"],
             expect="{PWN} is not a checkpoint this library reads"),
        Case("train --epsilon inf with smoothadv", "train_base",
             [*TRAIN, "--strategy", "smoothadv", "--epsilon", "inf"],
             expect="finite epsilon > 0"),
        Case("train rs with branch l", "train_base", [*TRAIN, "--target", "rs", "--branch", "l"],
             expect="target rs trains the full image: branch must be 'full'"),
        Case("train consistency with one noise", "train_base",
             [*TRAIN, "--strategy", "consistency", "--num-noise", "1"],
             expect="consistency needs num-noise >= 2"),
        Case("train --out with a bad template", "train_base",
             [*TRAIN, "--out", "{WORK}/m{{branch}}{{x}}.pt"],
             expect="only {{branch}} can be filled in (got 'x')"),
        Case("train --out empty", "train_base", [*TRAIN, "--out", ""],
             expect="--out is empty"),
        Case("train --resume without state", "train_base", [*TRAIN, "--resume"],
             expect="--resume: no training state at {WORK}/m.pt.state.pt"),
        Case("train --resume and --overwrite", "train_base", [*TRAIN, "--resume", "--overwrite"],
             expect="give --resume or --overwrite, not both"),
        Case("train missing data folder", "train_base",
             [*TRAIN, "--dataset", "fashion-mnist", "--data-dir", "{INPUTS}/none"],
             expect="Fashion-MNIST folder {INPUTS}/none not found"),
        Case("train --log is --out", "train_base", [*TRAIN, "--log", "{WORK}/m.pt"],
             expect="--out and --log name the same file ({WORK}/m.pt)"),
        Case("train --log is --out spelled differently", "train_base",
             [*TRAIN, "--log", "{WORK}/./m.pt"],
             expect="--out and --log name the same file ({WORK}/m.pt)"),
        Case("train --log is a link to --out", "train_base", [*TRAIN, "--log", "{WORK}/link.pt"],
             setup=("link.pt",), expect="--out and --log name the same file ({WORK}/link.pt)"),
        Case("train both branches, --log is --out", "train_base",
             [*TRAIN, "--target", "drs", "--branch", "both", "--log", "{WORK}/m.pt"],
             expect="--out (l) and --log (l) name the same file ({WORK}/m_l.pt)"),
        # Fault cases: an existing checkpoint, log or training state must survive.
        Case("train over an existing checkpoint", "train_base", TRAIN, setup=("m.pt",),
             expect="--out {WORK}/m.pt exists; pass --resume"),
        Case("train over an existing log", "train_base", TRAIN, setup=("m.csv",),
             expect="--log {WORK}/m.csv exists; pass --resume"),
        Case("train both branches over an existing one", "train_base",
             [*TRAIN, "--target", "drs", "--branch", "both"], setup=("m_r.pt",),
             expect="--out (r) {WORK}/m_r.pt exists; pass --resume"),
        Case("train --resume with another sigma", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--sigma", "0.5"],
             setup=("m.pt", "m.csv", "m.pt.state.pt"),
             expect="the training settings differ from those of {WORK}/m.pt.state.pt: "
                    "sigma 0.25 -> 0.5"),
        Case("train --resume with another lr", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--lr", "0.5"],
             setup=("m.pt", "m.csv", "m.pt.state.pt"),
             expect="the training settings differ from those of {WORK}/m.pt.state.pt: "
                    "lr 0.001 -> 0.5"),
        Case("train --resume with another strategy", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--strategy", "consistency"],
             setup=("m.pt", "m.csv", "m.pt.state.pt"),
             expect="the training settings differ from those of {WORK}/m.pt.state.pt: "
                    "strategy 'gaussian' -> 'consistency'"),
        Case("train --resume with another seed", "train_base",
             [*TRAIN, "--epochs", "2", "--resume", "--seed", "3"],
             setup=("m.pt", "m.csv", "m.pt.state.pt"),
             expect="the training settings differ from those of {WORK}/m.pt.state.pt: "
                    "seed 0 -> 3"),
        Case("train --resume of a finished run", "train_base", [*TRAIN, "--resume"],
             setup=("m.pt", "m.csv", "m.pt.state.pt"),
             expect="--resume: {WORK}/m.pt.state.pt already finished 1 epoch(s)"),
    ]
    return cases


def denoiser_cases() -> list[Case]:
    positive = "--{flag} must be positive, got {value}"
    cases = flag_cases("train_denoiser", "train_denoiser", DENOISER, {
        "epochs": (positive, ["0"]), "max-train": (positive, ["0"]),
        "lr": ("--lr must be a positive finite number", ["inf", "0", "-1", "nan"]),
        "ema": ("--ema must lie in [0, 1)", ["1", "-0.1"]),
        "num-head-channels": (positive, ["0"]), "num-channels": (positive, ["0"]),
        "num-res-blocks": (positive, ["0"]), "timesteps": (positive, ["0"]),
        "batch": (positive, ["0", ("64", "--batch 64 exceeds the 4 training images")]),
        "sigma-min": ("--sigma-min <= --sigma-max", ["0", "2"]),
        "sigma-max": ("--sigma-min <= --sigma-max", ["inf"]),
        "schedule": (CHOICE, ["xx"]),
        "dataset": ("unknown dataset '{value}'", ["xx"]),
        "channel-mult": ("channel_mult must be comma-separated integers, got '{value}'",
                         ["a,b"]),
        "seed": (NOT_INT, ["x"]),
    })
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null", "fifo": "{WORK}/fifo",
                       "under a file": "{TEXT}/d.pt"}.items():
        cases.append(Case(f"train_denoiser --out {kind}", "train_denoiser",
                          [*DENOISER, "--out", path],
                          expect=_fragment(OUT_FRAGMENTS[kind], file=path)[0]))
    cases += [
        Case("train_denoiser --out its own log", "train_denoiser",
             [*DENOISER, "--out", "{WORK}/d.csv"],
             expect="--out and its log name the same file ({WORK}/d.csv)"),
        Case("train_denoiser missing data folder", "train_denoiser",
             [*DENOISER, "--dataset", "fashion-mnist", "--data-dir", "{INPUTS}/none"],
             expect="Fashion-MNIST folder {INPUTS}/none not found"),
        Case("train_denoiser over an existing checkpoint", "train_denoiser", DENOISER,
             setup=("d.pt",), expect="--out {WORK}/d.pt exists; pass --overwrite"),
        Case("train_denoiser over an existing log", "train_denoiser", DENOISER, setup=("d.csv",),
             expect="its log {WORK}/d.csv exists; pass --overwrite"),
    ]
    return cases


def analyze_cases() -> list[Case]:
    cases = []
    for kind, (path, expect) in {
        "missing": ("{INPUTS}/missing.tsv", "{file}: no such file"),
        "directory": ("{INPUTS}", "{file}: not a regular file"),
        "empty": ("{EMPTY}", "{file}: empty file"),
        "text": ("{TEXT}", "{file}:1: header must start with"),
        "header only": ("{HEADER_ONLY}", "{file}: no result rows"),
        "junk row": ("{JUNK_ROW}", "{file}:2: expected 8 tab-separated fields, got 2"),
        "NaN radius": ("{NAN_RADIUS}", "{file}:2: bad value 'nan' in column 'radius'"),
        "negative radius": ("{NEG_RADIUS}", "{file}:2: bad value '-0.5' in column 'radius'"),
        "repeated idx": ("{DUP_IDX}", "{file}:3: idx 0 already appeared on line 2"),
        "binary": ("{TRUNCATED}", "{file}: not a UTF-8 text file"),
        "negative n_used": ("{NEG_N_USED}", "{file}:2: bad value '-20' in column 'n_used'"),
        "pA 1.5": ("{PA_BIG}", "{file}:2: bad value '1.5' in column 'pA'"),
        "count above n_used": ("{COUNT_OVER}", "{file}:2: count 30 exceeds n_used 20"),
    }.items():
        cases.append(Case(f"analyze input {kind}", "analyze", [path, "--out", "{WORK}/analysis"],
                          expect=_fragment(expect, file=path)[0]))
    flags = {"radii": ("--radii must be non-negative",
                       ["-1", ("x", "argument --radii: invalid float value: 'x'")]),
             "every": ("step must be a positive integer, got {value}", ["0", "-1"]),
             "bound-p": ("p_a must lie in (1/2, 1), got {value}", ["1.5", "nan"]),
             "bound-noise-norm": ("noise_norm must be positive and finite", ["-1"]),
             "bound-family": (CHOICE, ["xx"]),
             "names": ("--names has 3 entries for 1 TSV files", ["a", "b"])}
    for flag, (fragment, values) in flags.items():
        for entry in values:
            value, fragment_here = entry if isinstance(entry, tuple) else (entry, fragment)
            argv = ([*ANALYZE, "--names", "a", value, "c"] if flag == "names"
                    else [*ANALYZE, "--bounds-plot", "{WORK}/bounds.png", f"--{flag}", value])
            cases.append(Case(f"analyze --{flag} {value}", "analyze", argv,
                              expect=_fragment(fragment_here, flag=flag, value=value)[0]))
    for kind, path in {"device node": "{WORK}/null", "a file": "{TEXT}",
                       "under a fifo": "{WORK}/fifo"}.items():
        cases.append(Case(f"analyze --out {kind}", "analyze", [*ANALYZE[:1], "--out", path],
                          expect=f"cannot write {path}/table.md: {path} is not a directory"))
    for kind, path in {"directory": "{INPUTS}", "device node": "{WORK}/null",
                       "fifo": "{WORK}/fifo"}.items():
        cases.append(Case(f"analyze --bounds-plot {kind}", "analyze", ["--bounds-plot", path],
                          expect=_fragment(OUT_FRAGMENTS[kind], file=path)[0]))
    cases += [
        Case("analyze nothing to do", "analyze", [],
             expect="give at least one TSV file or --bounds-plot PATH"),
        Case("analyze --bounds-plot is the table", "analyze",
             [*ANALYZE, "--bounds-plot", "{WORK}/analysis/table.md"],
             expect="table.md and --bounds-plot name the same file ({WORK}/analysis/table.md)"),
        Case("analyze --bounds-plot is the input", "analyze",
             ["{WORK}/r.tsv", "--bounds-plot", "{WORK}/r.tsv"], setup=("r.tsv",),
             expect="--bounds-plot and the input {WORK}/r.tsv name the same file"),
        Case("analyze --bounds-plot onto an existing checkpoint", "analyze",
             ["--bounds-plot", "{WORK}/m.pt"], setup=("m.pt",),
             expect="{WORK}/m.pt exists; pass --overwrite to replace it"),
        Case("analyze --out holds a directory named table.md", "analyze", ANALYZE,
             setup=("analysis/table.md/x",),
             expect="cannot write {WORK}/analysis/table.md: it is a directory"),
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

    def pipe(p, **settings):
        return Pipeline(mode="rs", classifier=p["FULL"], n0=10, n=20, device="cpu", **settings)

    image = torch.rand(1, 28, 28)
    # name: (expected fragment, call) or (expected fragment, call, known)
    calls = {
        "Smooth(None)": ("classifiers must be torch.nn.Module objects, got NoneType",
                         lambda p: Smooth(None, 10, 0.25)),
        "Smooth num_classes 0": ("num_classes must be at least 2, got 0",
                                 lambda p: Smooth(torch.nn.Identity(), 0, 0.25)),
        "Smooth sigma -1": ("sigma must be positive and finite, got (-1.0,)",
                            lambda p: Smooth(torch.nn.Identity(), 10, -1)),
        "Smooth sigma 'a'": ("sigma must be a number, got 'a'",
                             lambda p: Smooth(torch.nn.Identity(), 10, "a")),
        "Smooth sigma nan": ("sigma must be positive and finite, got (nan,)",
                             lambda p: Smooth(torch.nn.Identity(), 10, math.nan)),
        "certify a 2-d image": ("expected one image of shape (C, H, W), got (28, 28)",
                                lambda p: smooth(p).certify(image[0], 10, 20, 0.01, 10)),
        "certify a batch of images": (
            "expected one image of shape (C, H, W), got (1, 1, 28, 28)",
            lambda p: smooth(p).certify(image[None], 10, 20, 0.01, 10)),
        "certify a numpy image": ("expected the image as a torch.Tensor, got ndarray",
                                  lambda p: smooth(p).certify(image.numpy(), 10, 20, 0.01, 10)),
        "certify a list image": ("expected the image as a torch.Tensor, got list",
                                 lambda p: smooth(p).certify(image.tolist(), 10, 20, 0.01, 10)),
        "certify an image on the meta device": (
            "the image is on the meta device",
            lambda p: smooth(p).certify(torch.empty(1, 28, 28, device="meta"), 10, 20, 0.01,
                                        10)),
        "certify n0 0": ("sample counts must be positive, got n0=0, n=20",
                         lambda p: smooth(p).certify(image, 0, 20, 0.01, 10)),
        "certify n -1": ("sample counts must be positive, got n0=10, n=-1",
                         lambda p: smooth(p).certify(image, 10, -1, 0.01, 10)),
        "certify n 'many'": ("n must be an integer, got 'many'",
                             lambda p: smooth(p).certify(image, 10, "many", 0.01, 10)),
        "certify n 2**63": ("sample counts must be at most 1,000,000,000 per image",
                            lambda p: smooth(p).certify(image, 10, 2**63, 0.01, 10)),
        "certify alpha 2": ("alpha must lie in (0, 1), got 2.0",
                            lambda p: smooth(p).certify(image, 10, 20, 2.0, 10)),
        "certify alpha nan": ("alpha must lie in (0, 1), got nan",
                              lambda p: smooth(p).certify(image, 10, 20, math.nan, 10)),
        "certify batch 0": ("batch_size must be positive, got 0",
                            lambda p: smooth(p).certify(image, 10, 20, 0.01, 0)),
        "certify wrong channels": ("images of shape (3, 28, 28) do not fit the models",
                                   lambda p: smooth(p).certify(torch.rand(3, 28, 28), 10, 20,
                                                               0.01, 10)),
        "certify NaN pixel": ("the image holds non-finite pixel values", lambda p: smooth(
            p).certify(image.clone().index_fill_(1, torch.tensor([3]), math.nan), 10, 20, 0.01,
                       10)),
        "certify 0..255 image": ("pixel values must lie in [0, 1]",
                                 lambda p: smooth(p).certify(image * 255, 10, 20, 0.01, 10)),
        "predict n 0": ("sample counts must be positive, got n0=None, n=0",
                        lambda p: smooth(p).predict(image, 0, 0.01, 10)),
        "DualSmooth odd width": ("the checkerboard split needs even height and width",
                                 lambda p: dual(p).certify(torch.rand(1, 28, 27), 10, 20, 0.01,
                                                           10)),
        "DualSmooth sigma_r 0": ("sigma must be positive and finite, got (0.25, 0.0)",
                                 lambda p: DualSmooth(torch.nn.Identity(), torch.nn.Identity(),
                                                      10, 0.25, 0.0)),
        "DualSmooth 1-d image": ("expected one image of shape (C, H, W), got (28,)",
                                 lambda p: dual(p).certify(torch.rand(28), 10, 20, 0.01, 10)),
        "PipelineConfig mode xx": ("mode must be one of ('rs', 'drs'), got 'xx'",
                                   lambda p: PipelineConfig(mode="xx")),
        "PipelineConfig n 'abc'": ("n must be an integer, got 'abc'",
                                   lambda p: PipelineConfig.from_dict(
                                       {"mode": "rs", "classifier": "c.pt", "n": "abc"})),
        "PipelineConfig unknown key": ("unknown configuration keys ['bogus']",
                                       lambda p: PipelineConfig.from_dict(
                                           {"mode": "rs", "bogus": 1})),
        "PipelineConfig from a list": ("a configuration is a mapping of configuration keys, "
                                       "got a list",
                                       lambda p: PipelineConfig.from_dict(["mode", "rs"])),
        "PipelineConfig sigma -1": ("sigma must be positive, got sigma=-1.0",
                                    lambda p: PipelineConfig(mode="rs", classifier=p["FULL"],
                                                             sigma=-1.0)),
        "PipelineConfig sigma 1e30": ("sigma must be at most 10 (pixel values lie in [0, 1])",
                                      lambda p: PipelineConfig(mode="rs", classifier=p["FULL"],
                                                               sigma=1e30)),
        "PipelineConfig radii [1e400]": ("radii must be positive finite numbers",
                                         lambda p: PipelineConfig(
                                             mode="rs", classifier=p["FULL"], adaptive=True,
                                             radii=[1e400])),
        "PipelineConfig radii [10**400]": ("radii must be positive finite numbers",
                                           lambda p: PipelineConfig(
                                               mode="rs", classifier=p["FULL"], adaptive=True,
                                               radii=[10**400])),
        "PipelineConfig seed 1.5": ("seed must be", lambda p: PipelineConfig(
            mode="rs", classifier=p["FULL"], seed=1.5)),
        "Pipeline classifier 123": ("checkpoints must be a path or a list of paths, got 123",
                                    lambda p: Pipeline(mode="rs", classifier=123, device="cpu")),
        "Pipeline missing classifier": ("classifier checkpoint not found: {INPUTS}/none.pt",
                                        lambda p: Pipeline(mode="rs",
                                                           classifier=p["INPUTS"] + "/none.pt",
                                                           device="cpu")),
        "Pipeline certify mismatched lengths": (
            "need as many images, labels and indices, got 1, 2, 2",
            lambda p: pipe(p).certify([image], [1, 2])),
        "Pipeline certify label 9.7": ("label must be an integer, got 9.7",
                                       lambda p: pipe(p).certify([image], [9.7])),
        "Pipeline certify label True": ("label must be an integer, got True",
                                        lambda p: pipe(p).certify([image], [True])),
        "Pipeline certify label '3'": ("label must be an integer, got '3'",
                                       lambda p: pipe(p).certify([image], ["3"])),
        "Pipeline certify index 1.5": ("image index must be an integer",
                                       lambda p: pipe(p).certify([image], [1], [1.5])),
        "Pipeline certify index -1": ("image index must be non-negative",
                                      lambda p: pipe(p).certify([image], [1], [-1])),
        "Pipeline check_image_shape 2-d": ("images must have shape (C, H, W), got (28, 28)",
                                           lambda p: Pipeline(
                                               mode="rs", classifier=p["FULL"],
                                               device="cpu").check_image_shape((28, 28))),
        "create_model unknown": ("unknown architecture 'xx'",
                                 lambda p: create_model("xx", num_classes=10)),
        "create_model 0 classes": ("num_classes and in_chans must be positive, got 0",
                                   lambda p: create_model("small_cnn", num_classes=0)),
        "create_model classes '10'": ("num_classes must be an integer, got '10'",
                                      lambda p: create_model("small_cnn", num_classes="10")),
        "create_model arch None": ("arch must be a model name (str), got NoneType",
                                   lambda p: create_model(None, num_classes=10)),
        "create_model input_size 5": ("input_size must be two positive integers",
                                      lambda p: create_model("small_cnn", num_classes=10,
                                                             in_chans=1, input_size=5)),
        "load_classifier 123": ("expected str, bytes or os.PathLike object, not int",
                                lambda p: load_classifier(123)),
        "load_classifier missing": ("checkpoint not found (or not a file): {INPUTS}/none.pt",
                                    lambda p: load_classifier(p["INPUTS"] + "/none.pt")),
        "load_classifier directory": ("{INPUTS} is a folder but holds no config.json",
                                      lambda p: load_classifier(p["INPUTS"])),
        "load_classifier text": ("{TEXT} is not a checkpoint this library reads",
                                 lambda p: load_classifier(p["TEXT"])),
        "load_classifier flipped bytes": ("{FLIPPED} is corrupt",
                                          lambda p: load_classifier(p["FLIPPED"])),
        "load_classifier bad branch": ("branch must be one of ('full', 'l', 'r')",
                                       lambda p: load_classifier(p["FULL"], branch="middle")),
        "load_classifier num_classes '10'": (
            "{CLASSES_STR}: num_classes must be a positive integer, got '10'",
            lambda p: load_classifier(p["CLASSES_STR"])),
        "load_classifier pickling os.system": ("{PWN} is not a checkpoint this library reads",
                                               lambda p: load_classifier(p["PWN"])),
        "load_results missing": ("{INPUTS}/none.tsv: no such file",
                                 lambda p: analysis.load_results(p["INPUTS"] + "/none.tsv")),
        "load_results None": ("expected str, bytes or os.PathLike object, not NoneType",
                              lambda p: analysis.load_results(None)),
        "load_results junk": ("{JUNK_ROW}:2: expected 8 tab-separated fields, got 2",
                              lambda p: analysis.load_results(p["JUNK_ROW"])),
        "load_results negative n_used": ("{NEG_N_USED}:2: bad value '-20' in column 'n_used'",
                                         lambda p: analysis.load_results(p["NEG_N_USED"])),
        "certified_accuracy shapes": (
            "correct and radius must be non-empty 1-d arrays of one length, got shapes (2,) "
            "and (1,)", lambda p: analysis.certified_accuracy([1, 0], [0.1], [0.0])),
        "certified_accuracy negative radii": (
            "radii must be finite and non-negative, got [-1.]",
            lambda p: analysis.certified_accuracy([1], [0.1], [-1.0])),
        "certified_accuracy strings": ("correct must hold only 0 and 1",
                                       lambda p: analysis.certified_accuracy(["a"], [0.1],
                                                                             [0.0])),
        "certified_table no runs": ("need at least one run",
                                    lambda p: analysis.certified_table([], [0.0])),
        "certified_table not runs": ("runs must be Run objects, got ['int']",
                                     lambda p: analysis.certified_table([1, 2], [0.0])),
        "rs_radius_upper_bound p 2": ("p_a must lie in (1/2, 1)",
                                      lambda p: analysis.rs_radius_upper_bound(2.0, 1.0, 784)),
        "radius_bounds_figure family xx": (
            "family must be one of ('gaussian', 'symmetric'), got 'xx'",
            lambda p: analysis.radius_bounds_figure(family="xx")),
        "rs_radius nan": ("p_lower must be probabilities in [0, 1], got nan",
                          lambda p: bounds.rs_radius(math.nan, 0.25)),
        "rs_radius p 1.5": ("p_lower must be probabilities in [0, 1], got 1.5",
                            lambda p: bounds.rs_radius(1.5, 0.25)),
        "drs_radius sigma 0": ("sigma must be positive and finite, got 0.0",
                               lambda p: bounds.drs_radius(0.9, 0.9, 0.0)),
        "coupled_radius nan": ("p_lower_l must be probabilities in [0, 1], got nan",
                               lambda p: bounds.coupled_radius(math.nan, 0.9, 0.25)),
        "clopper_pearson k > n": ("need 0 <= k <= n and n >= 1, got k=5, n=3",
                                  lambda p: bounds.clopper_pearson_lower(5, 3, 0.01)),
        "clopper_pearson k < 0": ("need 0 <= k <= n and n >= 1, got k=-1, n=10",
                                  lambda p: bounds.clopper_pearson_lower(-1, 10, 0.01)),
        "clopper_pearson alpha 0": ("alpha must lie in (0, 1), got 0.0",
                                    lambda p: bounds.clopper_pearson_lower(5, 10, 0.0)),
        "clopper_pearson k 'x'": ("k and n must be numbers",
                                  lambda p: bounds.clopper_pearson_lower("x", 10, 0.01)),
    }
    cases = []
    for name, (expect, call, *known) in calls.items():
        cases.append(Case(f"API {name}", call=call, expect=expect,
                          known=known[0] if known else ""))
    return cases


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
N_USED_HEADER = RESULT_HEADER.replace("count\n", "count\tn_used\n")


def _idx_file(path: Path, code: int, array) -> None:
    """``array`` (uint8) as an IDX file of ``code`` dimensions' type 0x08."""
    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    path.write_bytes(bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
                     + array.tobytes())


def _image_folders(root: Path, paths: dict[str, str]) -> None:
    """ImageNet-style folders (``val/<class>/``) with a FIFO named like an image, a link
    to a parent folder, and a decompression-bomb header as the first image."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    def folder(key: str) -> Path:
        path = root / key.lower()
        for label in range(2):
            (path / "val" / f"class{label}").mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
                path / "val" / f"class{label}" / "image0.png")
        paths[key] = str(path)
        return path

    os.mkfifo(folder("IMG_FIFO") / "val" / "class1" / "trap.JPEG")
    link = folder("IMG_LINK")
    (link / "val" / "class0" / "link").symlink_to(link / "val", target_is_directory=True)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    side = int((Image.MAX_IMAGE_PIXELS * 100) ** 0.5) + 1  # PNG header only, no pixels
    (folder("IMG_BOMB") / "val" / "class0" / "a_bomb.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", b""))


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
        "NEG_N_USED": ("neg_n_used.tsv", N_USED_HEADER + "0\t1\t1\t0.5\t1\t0.1\t0.9\t18\t-20\n"),
        "PA_BIG": ("pa_big.tsv", N_USED_HEADER + "0\t1\t1\t0.5\t1\t0.1\t1.5\t18\t20\n"),
        "COUNT_OVER": ("count_over.tsv", N_USED_HEADER + "0\t1\t1\t0.5\t1\t0.1\t0.9\t30\t20\n"),
        "DATA_DIR_TYPE": ("data_dir.json", '{"mode": "rs", "classifier": "c.pt", "data_dir": 5}'),
    }
    for key, (name, text) in files.items():
        (inputs / name).write_text(text)
        paths[key] = str(inputs / name)
    torch.save({"w": torch.zeros(1000)}, inputs / "truncated.pt")
    (inputs / "truncated.pt").write_bytes((inputs / "truncated.pt").read_bytes()[:300])
    paths["TRUNCATED"] = str(inputs / "truncated.pt")
    (inputs / "empty_dir").mkdir()
    paths["EMPTY_DIR"] = str(inputs / "empty_dir")
    # A valid Fashion-MNIST folder (four test images): a resume from it must be refused
    # because the run was made on other data, not because the folder cannot be read.
    (inputs / "fmnist").mkdir()
    _idx_file(inputs / "fmnist" / "t10k-images-idx3-ubyte", 3,
              torch.arange(4 * 28 * 28).reshape(4, 28, 28).remainder(256).numpy())
    _idx_file(inputs / "fmnist" / "t10k-labels-idx1-ubyte", 1, [0, 1, 2, 3])
    paths["FMNIST_COPY"] = str(inputs / "fmnist")
    _image_folders(root / "images", paths)
    # Checkpoints whose metadata is wrong, and a pickle that would run a shell command
    # (creating a file in inputs/, which the snapshot would show) if it were unpickled.
    checkpoint = torch.load(paths["FULL"], weights_only=True)
    torch.save({**checkpoint, "num_classes": "10"}, inputs / "classes_str.pt")
    paths["CLASSES_STR"] = str(inputs / "classes_str.pt")
    checkpoint = torch.load(paths["DEN"], weights_only=True)
    torch.save({k: v for k, v in checkpoint.items() if k != "flags"}, inputs / "no_flags.pt")
    paths["NO_FLAGS"] = str(inputs / "no_flags.pt")
    (inputs / "pwn.pt").write_bytes(b"cos\nsystem\n(S'touch " + str(inputs / "ran").encode()
                                    + b"'\ntR.")
    paths["PWN"] = str(inputs / "pwn.pt")
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", branch="full", sigma=0.25)
    model = create_model(spec.arch, **spec.model_options()).eval()
    with torch.no_grad():
        next(model.parameters()).fill_(math.nan)
    save_classifier(inputs / "nan_init.pt", model, spec)
    paths["NAN_INIT"] = str(inputs / "nan_init.pt")

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
    # Another run's result named like a part file of out.tsv (it has a configuration of
    # its own), and a part file whose identity file names another run.
    for folder in ("foreign", "foreign_id"):
        (faults / folder).mkdir()
        shutil.copy(faults / "out.tsv", faults / folder / "out.tsv.part0")
    shutil.copy(faults / "out.tsv.config.json", faults / "foreign" / "out.tsv.part0.config.json")
    (faults / "foreign_id" / "out.tsv.part0.id").write_text(f"denoised_drs run {'0' * 64}\n")
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
    """(outcome, detail) of one case, in the empty folder ``work``: CLEAN only when the
    refusal's message holds the case's expected fragment (WRONG otherwise)."""
    expect = case.expect.format(**paths, WORK=str(work))
    if case.call is not None:
        try:
            case.call(paths)
        except (ValueError, TypeError, FileNotFoundError) as error:  # FileNotFoundError: the
            message = f"{type(error).__name__}: {error}"  # documented error for a missing file
            if expect.lower() not in str(error).lower():
                return WRONG, f"expected {expect!r} in {message}"
            return CLEAN, message
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
    if expect.lower() not in lines[0].lower():
        return WRONG, f"expected {expect!r} in {lines[0]}"
    return CLEAN, lines[0]


CASES = all_cases()


@pytest.fixture(scope="module")
def corpus_paths(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("corpus"))


GENERIC = {"error", "invalid", "must", "not", "cannot", "refused", "bad", "file", "value"}
"""Words any refusal may hold: a fragment must say more than these."""


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 150
    assert len({case.name for case in CASES}) == len(CASES)
    for case in CASES:
        assert isinstance(case.expect, str) and case.expect.strip(), case.name
        assert case.expect.strip().lower() not in GENERIC, case.name


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, id=case.name, marks=pytest.mark.xfail(
        strict=True, reason=f"refused for an unclear or wrong reason: {case.known}"))
     if case.known else pytest.param(case, id=case.name) for case in CASES],
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
                known = " (known)" if case.known and outcome == WRONG else ""
                print(f"{outcome:12} {case.name}{known}: {' '.join(detail.split())[:160]}")
    print(f"\nrepo {REPO}: tried {len(CASES)}, "
          + ", ".join(f"{k} {tally[k]}" for k in (CLEAN, WRONG, SILENT, LOST, OTHER)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
