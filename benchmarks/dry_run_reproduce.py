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
  552.8M-parameter one likewise; by default a small guided-diffusion UNet of the same
  depth (so it takes the 224 crop), in the OpenAI format, named by a flags file given
  as ``--denoiser-config`` in place of the preset (see SMALL below);
* ``checkpoints/official/imagenet64_uncond_100M_1500K.pt``: the full-size ImageNet-64
  state dict of the ``imagenet64-uncond`` preset (random weights);
* every ``--classifier*`` file, in the layout its name says: ``drs_imagenet_*`` as the
  DRS authors' training script saves it (``'arch': 'imagenet'``, keys
  ``1.module.*``), ``cohen_*`` as Cohen et al.'s (``'arch'`` recorded, keys ``1.*`` /
  ``1.module.*``), a name without a file suffix as a transformers ViT folder
  (``config.json``, ``model.safetensors``, ``preprocessor_config.json``; ViT-B/16's
  patch and image size with two small layers), and any other as a plain state dict of
  the command's ``--arch`` (torchvision, timm or the registry's), saved as
  ``torch.save`` or safetensors by its suffix;
* ``data/cifar10/cifar-10-batches-py``: torchvision's pickled batches with random
  images; torchvision checks the files' MD5 sums, which a stand-in cannot match, so it
  is given the stand-in's sums instead (its check still runs);
* ``$IMAGENET_DIR/val/<wnid>/*.JPEG``: two class folders of random JPEGs: RGB, a
  grayscale one, a CMYK one and one smaller than the crop. Every command certifies its
  first image; before the commands run, every image of the folder is read at each
  ``--image-size`` the document uses and must come out (3, S, S) in [0, 1].

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
    # BEiT-L/16 at 512 px: about 40 s a forward pass on one CPU core; BEiT-B/16 at its
    # native 224 has the same timm layout family at a tenth of the cost.
    "--arch": {"timm:beit_large_patch16_512": "timm:beit_base_patch16_224"},
    "--classifier-size": {"512": "224"},
}
# 552.8M parameters: about a minute per noisy 256-px image on one CPU core. Without
# --full-size the preset becomes this flags file (--denoiser-config): guided-diffusion's
# layout and schedule at the 552M's depth (six levels, so any side that is a multiple
# of 32, the 224 crop included), with 32 channels and attention only at 1/32 scale.
GIANT_DENOISER = "imagenet256-uncond"
SMALL_DENOISER_FLAGS = {
    "image_size": 256, "num_channels": 32, "num_res_blocks": 1,
    "channel_mult": "1,1,2,2,4,4", "attention_resolutions": "8", "num_head_channels": 16,
    "learn_sigma": True, "use_scale_shift_norm": True, "resblock_updown": True,
    "dropout": 0.0, "diffusion_steps": 1000, "noise_schedule": "linear",
    "rescale_timesteps": False,
}
SMALL_DENOISER_CONFIG = "standins/imagenet256_small_flags.json"
WNIDS = ("n01440764", "n01443537")
CLASSIFIER_SUFFIXES = (".pt", ".pth", ".tar", ".bin", ".safetensors")


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
        elif not full_size and option == "--denoiser" and value == GIANT_DENOISER:
            argv[i - 1: i + 1] = ["--denoiser-config", SMALL_DENOISER_CONFIG]
            changes.append(f"--denoiser {value} -> --denoiser-config {SMALL_DENOISER_CONFIG}")
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
    """Two class folders: RGB JPEGs, and in the second a grayscale, a CMYK and a small one
    (ImageNet's val set holds all three kinds)."""
    from PIL import Image

    for n, wnid in enumerate(WNIDS):
        folder = root / "val" / wnid
        folder.mkdir(parents=True)
        pixels = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_0000000{n + 1}.JPEG")
    odd = root / "val" / WNIDS[1]
    Image.fromarray(rng.integers(0, 256, (240, 330), dtype=np.uint8), "L").save(
        odd / "ILSVRC2012_val_00000003.JPEG")
    Image.fromarray(rng.integers(0, 256, (280, 250, 4), dtype=np.uint8), "CMYK").save(
        odd / "ILSVRC2012_val_00000004.JPEG")
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(
        odd / "ILSVRC2012_val_00000005.JPEG")


def check_imagenet_images(root: Path, commands: list[list[str]]) -> list[str]:
    """Every stand-in image read at each ``--image-size`` of the commands: problems found."""
    from denoised_drs.data import get_dataset

    problems: list[str] = []
    sizes = {int(option_values(argv)["--image-size"][0]) for argv in commands
             if "--image-size" in option_values(argv)}
    for size in sorted(sizes):
        dataset = get_dataset("imagenet", "test", root, image_size=size)
        for i in range(len(dataset)):
            image = dataset[i][0]
            if image.shape != (3, size, size) or not 0 <= image.min() <= image.max() <= 1:
                problems.append(f"image {i} at {size}: {tuple(image.shape)}")
    if sizes:
        print(f"ImageNet stand-ins (RGB, grayscale, CMYK, small) read at sizes "
              f"{sorted(sizes)}: {'; '.join(problems) or 'ok'}", flush=True)
    return problems


def write_denoiser(path: Path, preset: str | None, flags_file: Path | None = None) -> None:
    """An OpenAI-format state dict (random weights) for ``preset`` or the flags in
    ``flags_file``, as the official file."""
    from denoised_drs.diffusion.flags_file import read_denoiser_config
    from denoised_drs.diffusion.presets import get_preset

    spec = get_preset(preset) if flags_file is None else read_denoiser_config(flags_file)
    manifest = MANIFESTS / f"{Path(spec.checkpoint).stem}.keys.json"
    if spec.checkpoint and manifest.is_file():  # an official file, whose keys it lists
        shapes = json.loads(manifest.read_text())["state_dict"]
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


def write_authors_file(path: Path, dataset: str) -> None:
    """A branch classifier as the DRS authors' training script saves it: the dataset
    as 'arch', the state dict of Sequential(NormalizeLayer, DataParallel(network))."""
    from denoised_drs.models.loading import DATASET_ARCHS
    from denoised_drs.models.registry import create_model

    torch.manual_seed(0)
    network = create_model(DATASET_ARCHS[dataset], num_classes=NUM_CLASSES[dataset])
    state = {f"1.module.{key}": value for key, value in network.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 90, "arch": dataset, "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]}}, path)


def write_cohen_file(path: Path, dataset: str) -> None:
    """A Cohen et al. noise_<sigma> classifier: 'arch' recorded, the state dict of
    Sequential(NormalizeLayer, model) (ImageNet: the model under DataParallel)."""
    from denoised_drs.models.registry import create_model

    arch, prefix = {"cifar10": ("cifar_resnet110", "1."),
                    "imagenet": ("resnet50", "1.module.")}[dataset]
    torch.manual_seed(0)
    network = create_model(arch, num_classes=NUM_CLASSES[dataset])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 90, "arch": arch,
                "state_dict": {prefix + k: v for k, v in network.state_dict().items()}}, path)


def write_vit_folder(path: Path, num_classes: int) -> None:
    """A transformers ViTForImageClassification folder as the hub's CIFAR-10 ViT-B/16 is
    laid out (224 px, patch 16, its image processor's file), two small layers."""
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(image_size=224, patch_size=16, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128, num_labels=num_classes)
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor", "resample": 2,
        "rescale_factor": 1 / 255, "size": {"height": 224, "width": 224}}))


def write_inputs(argv: list[str], root: Path) -> None:
    """The checkpoints a command reads, unless an earlier command wrote them."""
    values = option_values(argv)
    denoiser = values.get("--denoiser-checkpoint")
    if denoiser and not (root / denoiser[0]).exists():
        flags = values.get("--denoiser-config")
        if flags and not (root / flags[0]).exists():
            (root / flags[0]).parent.mkdir(parents=True, exist_ok=True)
            (root / flags[0]).write_text(json.dumps(SMALL_DENOISER_FLAGS))
        write_denoiser(root / denoiser[0], (values.get("--denoiser") or [None])[0],
                       root / flags[0] if flags else None)
    dataset = values["--dataset"][0]
    num_classes = int(values.get("--num-classes", [NUM_CLASSES[dataset]])[0])
    size = int(values["--classifier-size"][0]) if "--classifier-size" in values else None
    for option in ("--classifier", "--classifier-l", "--classifier-r"):
        for name in values.get(option, []):
            path = root / name
            if path.exists():
                continue
            if path.name.startswith("drs_imagenet"):
                write_authors_file(path, dataset)
            elif path.name.startswith("cohen_"):
                write_cohen_file(path, dataset)
            elif not path.name.endswith(CLASSIFIER_SUFFIXES):
                write_vit_folder(path, num_classes)
            else:
                write_classifier(path, values["--arch"][0], num_classes, size)


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


def dry_run(root: Path, full_size: bool, only: str | None = None) -> list[dict]:
    """Run every command of docs/reproduce.md in ``root`` (those containing ``only``, if
    given); one result per command."""
    rng = np.random.default_rng(0)
    md5 = write_cifar10(root / "data" / "cifar10", rng)
    write_imagenet(root / "imagenet", rng)
    module = load_script()
    results = []
    commands = [stand_in_argv(command, root / "imagenet", full_size)
                for command in extract_commands(DOC.read_text())
                if only is None or only in command]
    if check_imagenet_images(root / "imagenet", [argv for argv, _ in commands]):
        results.append({"outfile": "ImageNet stand-in images", "status": 1, "rows": None,
                        "seconds": 0.0, "stand_ins": [], "argv": []})
    previous = Path.cwd()
    os.chdir(root)  # the commands' relative paths name the repository's layout
    try:
        with cifar10_md5s(md5):
            for argv, changes in commands:
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
    parser.add_argument("--only", metavar="TEXT",
                        help="run only the commands containing TEXT (e.g. an output name)")
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=False)
        results = dry_run(args.workdir.resolve(), args.full_size, args.only)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            results = dry_run(Path(scratch), args.full_size, args.only)
    failed = [r["outfile"] for r in results if r["status"] != 0 or r["rows"] != 1]
    print(f"{len(results) - len(failed)} of {len(results)} commands ran and wrote their TSV"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
