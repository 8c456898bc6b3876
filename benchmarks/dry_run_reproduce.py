"""Dry-run every command of docs/reproduce.md on stand-ins in the official formats.

    python benchmarks/dry_run_reproduce.py                 # small stand-ins, a few minutes on a CPU
    python benchmarks/dry_run_reproduce.py --full-size     # the exact models (slow on a CPU)

Takes each command from the document's ```bash blocks (expanding its ``for S in ...``
loops and ``$IMAGENET_DIR``), builds what it reads at the paths it names, in a
scratch folder that plays the repository root, and runs it there:

* ``checkpoints/official/cifar10_uncond_50M_500K.pt``: the full 52.5M-parameter
  OpenAI-format state dict (random weights, keys and shapes from the manifest in
  tests/data), loaded through the ``cifar10-uncond-50M`` preset as the real file is;
* ``checkpoints/official/256x256_diffusion_uncond.pt``: with ``--full-size`` the
  552.8M-parameter one likewise; by default the OpenAI-format file of the small
  guided-diffusion preset ``guided-small`` (see SMALL below);
* every ``--classifier*`` file: a plain state dict with random weights, in the layout
  of the command's ``--arch`` (torchvision, timm or the registry's), saved as
  ``torch.save`` or safetensors by its suffix;
* ``data/cifar10/cifar-10-batches-py``: torchvision's pickled batches with random
  images; torchvision checks the files' MD5 sums, which a stand-in cannot match, so it
  is given the stand-in's sums instead (its check still runs);
* ``$IMAGENET_DIR/val/<wnid>/*.JPEG``: two class folders of random JPEGs.

Each command runs in this process through ``run_script``, as the command line runs
it, with ``--N0 2 --N 4 --max 2 --device cpu`` (the ``--skip`` of the document kept,
so one image each) and must exit with status 0 and write a TSV with Cohen's header and
one row. Commands that are not ``python scripts/certify_diffusion.py`` are refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shlex
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_suite import random_state_dict  # noqa: E402

from denoised_drs.cli import run_script  # noqa: E402

DOC = REPO / "docs" / "reproduce.md"
SCRIPT = REPO / "scripts" / "certify_diffusion.py"
MANIFESTS = REPO / "tests" / "data"
TINY_RUN = {"--N0": "2", "--N": "4", "--max": "2", "--device": "cpu"}
NUM_CLASSES = {"cifar10": 10, "imagenet": 1000}
# Without --full-size, what the two giants become, and why: option -> {value: stand-in}.
SMALL = {
    # 552.8M parameters at 256 px: about a minute per image on one CPU core. The small
    # guided-diffusion preset at 256 px attends over 128x128 positions (15 s an image),
    # so the images shrink to 64 px too.
    "--denoiser": {"imagenet256-uncond": "guided-small"},
    "--image-size": {"256": "64"},
    # BEiT-L/16 at 512 px: about 40 s a forward pass on one CPU core; BEiT-B/16 at its
    # native 224 has the same timm layout family at a tenth of the cost.
    "--arch": {"timm:beit_large_patch16_512": "timm:beit_base_patch16_224"},
    "--classifier-size": {"512": "224"},
}
WNIDS = ("n01440764", "n01443537")


def extract_commands(markdown: str) -> list[str]:
    """Every command of the ```bash blocks, one string each, loops expanded."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
        text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        for loop in re.finditer(r"for (\w+) in ([^;\n]+); do\n(.*?)\ndone", text, flags=re.S):
            variable, values, body = loop.groups()
            commands += [body.strip().replace(f"${variable}", value) for value in values.split()]
        rest = re.sub(r"for \w+ in [^;\n]+; do\n.*?\ndone", "", text, flags=re.S)
        commands += [line.strip() for line in rest.splitlines() if line.strip()]
    return commands


def option_values(argv: list[str]) -> dict[str, list[str]]:
    """``--option v1 v2 ...`` pairs of an argument list."""
    values: dict[str, list[str]] = {}
    current = None
    for token in argv:
        if token.startswith("--"):
            current = token
            values[current] = []
        elif current is not None:
            values[current].append(token)
    return values


def stand_in_argv(command: str, imagenet_dir: Path, full_size: bool) -> tuple[list[str], list[str]]:
    """The script's arguments for the dry run, and the substitutions made."""
    words = shlex.split(command.replace("$IMAGENET_DIR", str(imagenet_dir)))
    if words[:2] != ["python", "scripts/certify_diffusion.py"]:
        raise ValueError(f"not a certify_diffusion.py command: {command[:80]}")
    argv, changes = words[2:], []
    for i in range(1, len(argv)):
        option, value = argv[i - 1], argv[i]
        if option in TINY_RUN:
            argv[i] = TINY_RUN[option]
        elif not full_size and value in SMALL.get(option, {}):
            argv[i] = SMALL[option][value]
            changes.append(f"{option} {value} -> {argv[i]}")
    argv += [item for option, value in TINY_RUN.items() if option not in argv
             for item in (option, value)]
    return argv, changes


def write_cifar10(root: Path, rng: np.random.Generator) -> dict[str, str]:
    """torchvision's CIFAR-10 python layout with random images; returns file -> MD5."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sizes = {f"data_batch_{i}": 2 for i in range(1, 6)} | {"test_batch": 10}
    for name, count in sizes.items():
        # The real files were pickled by Python 2, so torchvision reads their keys as str.
        batch = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, count).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}


@contextmanager
def cifar10_md5s(md5: dict[str, str]):
    """torchvision's CIFAR-10 expecting the stand-in's MD5 sums instead of the real files'."""
    from torchvision.datasets import CIFAR10

    with mock.patch.multiple(
        CIFAR10,
        train_list=[[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)],
        test_list=[["test_batch", md5["test_batch"]]],
        meta={**CIFAR10.meta, "md5": md5["batches.meta"]},
    ):
        yield


def write_imagenet(root: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    for wnid in WNIDS:
        folder = root / "val" / wnid
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "ILSVRC2012_val_00000001.JPEG")


def write_denoiser(path: Path, preset: str) -> None:
    """An OpenAI-format state dict (random weights) for ``preset``, as the official file."""
    from denoised_drs.diffusion.presets import get_preset

    spec = get_preset(preset)
    if spec.checkpoint:  # an official file, whose keys the manifest lists
        shapes = json.loads(
            (MANIFESTS / f"{Path(spec.checkpoint).stem}.keys.json").read_text()
        )["state_dict"]
    else:
        shapes = spec.build_network().openai_state_dict_shapes()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state_dict(shapes, seed=0), path)


def write_classifier(path: Path, arch: str, num_classes: int, size: int | None) -> None:
    """A plain state dict of ``arch`` with random weights (what --arch files hold)."""
    from denoised_drs.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=num_classes, in_chans=3,
                         input_size=(size, size) if size else (224, 224))
    state_dict = {key: value.contiguous() for key, value in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save(state_dict, path)


def write_inputs(argv: list[str], root: Path) -> None:
    """The checkpoints a command reads, unless an earlier command wrote them."""
    values = option_values(argv)
    denoiser = values.get("--denoiser-checkpoint")
    if denoiser and not (root / denoiser[0]).exists():
        write_denoiser(root / denoiser[0], values["--denoiser"][0])
    arch = values["--arch"][0]
    num_classes = int(values.get("--num-classes", [NUM_CLASSES[values["--dataset"][0]]])[0])
    size = int(values["--classifier-size"][0]) if "--classifier-size" in values else None
    for option in ("--classifier", "--classifier-l", "--classifier-r"):
        for name in values.get(option, []):
            if not (root / name).exists():
                write_classifier(root / name, arch, num_classes, size)


def run_command(module, argv: list[str]) -> int:
    """The script's exit status for ``argv``, run as its command line runs it."""
    try:
        run_script(lambda: module.main(argv), str(SCRIPT))
    except SystemExit as exit_info:
        return int(exit_info.code or 0)
    return 0


def tsv_rows(path: Path) -> int | None:
    """Rows under Cohen's header, or None without a TSV that starts with it."""
    if not path.is_file():
        return None
    lines = path.read_text().splitlines()
    return len(lines) - 1 if lines and lines[0].startswith("idx\tlabel\tpredict") else None


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("certify_diffusion", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(root: Path, full_size: bool) -> list[dict]:
    """Run every command of docs/reproduce.md in ``root``; one result per command."""
    rng = np.random.default_rng(0)
    md5 = write_cifar10(root / "data" / "cifar10", rng)
    write_imagenet(root / "imagenet", rng)
    module = load_script()
    results = []
    previous = Path.cwd()
    os.chdir(root)  # the commands' relative paths name the repository's layout
    try:
        with cifar10_md5s(md5):
            for command in extract_commands(DOC.read_text()):
                argv, changes = stand_in_argv(command, root / "imagenet", full_size)
                write_inputs(argv, root)
                start = time.perf_counter()
                status = run_command(module, argv)
                rows = tsv_rows(root / option_values(argv)["--outfile"][0])
                results.append({"outfile": option_values(argv)["--outfile"][0], "status": status,
                                "rows": rows, "seconds": time.perf_counter() - start,
                                "stand_ins": changes, "argv": argv})
                print(f"rc {status}  rows {rows}  {results[-1]['seconds']:5.1f} s  "
                      f"{results[-1]['outfile']}  {'; '.join(changes)}", flush=True)
    finally:
        os.chdir(previous)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-size", action="store_true",
                        help="the exact models: 552.8M denoiser at 256 px, BEiT-L at 512 px")
    parser.add_argument("--workdir", type=Path,
                        help="scratch folder to keep (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
        results = dry_run(args.workdir.resolve(), args.full_size)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            results = dry_run(Path(scratch), args.full_size)
    failed = [r["outfile"] for r in results if r["status"] != 0 or r["rows"] != 1]
    print(f"{len(results) - len(failed)} of {len(results)} commands ran and wrote their TSV"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
