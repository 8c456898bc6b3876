"""Certify a dataset by RS or DRS, with or without a diffusion denoiser.

    accelerate launch scripts/certify_diffusion.py --dataset cifar10 --data-dir DIR \
        --mode drs --classifier-l l.pt --classifier-r r.pt --sigma 0.25 \
        --denoiser cifar10-uncond-50M --denoiser-checkpoint cifar10_uncond_50M_500K.pt \
        --denoise joint --skip 5 --N 100000 --outfile results/drs_joint.tsv
    python scripts/certify_diffusion.py ...            # one process
    python scripts/certify_diffusion.py                # the embedded default

`--denoiser none` (the default) runs the plain Gaussian / consistency paths. With no
classifier and no --config, the embedded default runs: RS, DRS, denoised RS, DRS
joint and DRS split on the bundled Fashion-MNIST sample with the checkpoints under
checkpoints/, and prints the certified-accuracy table. Results are TSV files in
Cohen's format (one row per image, flushed per row; see denoised_drs.results), with
the run's configuration saved beside each; rerunning the same command resumes.
`--config OUT.config.json` repeats a run from any folder: the checkpoints it records
must still hash to the recorded sha256. The processes of a launch wait at most
$DENOISED_DRS_RENDEZVOUS_TIMEOUT seconds (default 60) for each other.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from denoised_drs.cli import ArgumentParser, run_script
from denoised_drs.cpu_memory import keep_freed_memory
from denoised_drs.modes import COMPILE_MODES, Denoise, Mode, choices

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "checkpoints"

# The embedded default: (TSV name, row label, pipeline settings).
DEFAULT_RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("rs", "RS (Gaussian, sigma 0.25)",
     {"mode": "rs", "classifier": "fmnist_rs_gaussian_s0.25.pt", "sigma": 0.25}),
    ("drs", "DRS (Gaussian, sigma 0.18)",
     {"mode": "drs", "classifier_l": "fmnist_drs_l_gaussian_s0.18.pt",
      "classifier_r": "fmnist_drs_r_gaussian_s0.18.pt", "sigma": 0.18}),
    ("denoised_rs", "Denoised RS (sigma 0.25)",
     {"mode": "rs", "classifier": "fmnist_rs_gaussian_s0.25.pt", "sigma": 0.25,
      "denoiser": "fmnist_denoiser.pt"}),
    ("drs_joint", "DRS joint denoising (sigma 0.18)",
     {"mode": "drs", "classifier_l": "fmnist_drs_l_gaussian_s0.18.pt",
      "classifier_r": "fmnist_drs_r_gaussian_s0.18.pt", "sigma": 0.18,
      "denoiser": "fmnist_denoiser.pt", "denoise": "joint"}),
    ("drs_split", "DRS split denoising (sigma 0.18)",
     {"mode": "drs", "classifier_l": "fmnist_drs_l_gaussian_s0.18.pt",
      "classifier_r": "fmnist_drs_r_gaussian_s0.18.pt", "sigma": 0.18,
      "denoiser": "fmnist_denoiser.pt", "denoise": "split"}),
]
DEFAULT_SETTINGS = {"n0": 50, "n": 500, "alpha": 0.001, "batch": 550, "skip": 10}


def batch_size(text: str) -> int | str:
    """``--batch``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or auto, got {text!r}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    data = parser.add_argument_group("data")
    data.add_argument("--dataset",
                      help="sample (bundled, the default), fashion-mnist, cifar10 or imagenet")
    data.add_argument("--data-dir", help="local dataset folder (never downloaded)")
    data.add_argument("--skip", type=int, help="certify every skip-th image (default 1)")
    data.add_argument("--max", type=int, help="only indices below max")
    data.add_argument("--start", type=int,
                      help="first index (default 0); e.g. --start 10 --skip 20 certifies "
                      "the images an every-20th run left out of every-10th")
    model = parser.add_argument_group("models")
    model.add_argument("--config", help="a JSON or YAML pipeline configuration, e.g. the "
                       "OUT.config.json saved beside a result (its dataset, skip and max "
                       "too); flags override it")
    model.add_argument("--mode", choices=choices(Mode))
    model.add_argument("--classifier", nargs="+",
                       help="RS classifier checkpoint(s) or transformers folder(s); "
                       "several = ensemble")
    model.add_argument("--classifier-l", nargs="+", help="DRS l-branch checkpoint(s)")
    model.add_argument("--classifier-r", nargs="+", help="DRS r-branch checkpoint(s)")
    model.add_argument("--branch", dest="branches", action="append", nargs="+", metavar="PATH",
                       help="one part's classifier checkpoint(s), given once per part of "
                       "--partition in part order (several paths = an ensemble for that part); "
                       "for two parts the same as --classifier-l / --classifier-r")
    model.add_argument("--denoiser",
                       help="none, a preset name, a denoiser checkpoint or a diffusers folder")
    model.add_argument("--denoiser-checkpoint", help="official OpenAI checkpoint for a preset")
    model.add_argument("--denoiser-config", metavar="FILE",
                       help="JSON file of the OpenAI flags of --denoiser-checkpoint, in place "
                       "of a preset (any unconditional improved-/guided-diffusion model)")
    model.add_argument("--denoise", choices=choices(Denoise), help="DRS denoising mode")
    model.add_argument("--partition", metavar="NAME",
                       help="how images are cut into sub-images: identity, checkerboard "
                       "(default for --mode drs), drs-release (the DRS authors' code, for "
                       "their checkpoints), diagonal-K, polyphase-AxB")
    clf = parser.add_argument_group(
        "classifiers", "how classifier files are read and fed; defaults come from the model's "
        "own configuration (timm's pretrained_cfg), else from the dataset's")
    clf.add_argument("--arch", nargs="+", metavar="ARCH",
                     help="architecture of a checkpoint that records none: resnet50, "
                     "cifar_resnet110, timm:<name>, ...; one per ensemble member (in file "
                     "order) for an ensemble of different architectures")
    clf.add_argument("--num-classes", type=int, help="number of classes (default: the dataset's)")
    clf.add_argument("--classifier-size", type=int, metavar="S",
                     help="the classifier's square input; "
                          "the (denoised) image or sub-image is resized to it")
    clf.add_argument("--interpolation", choices=("nearest", "bilinear", "bicubic"),
                     help="how images are resized for the classifier")
    clf.add_argument("--mean", type=float, nargs="+", metavar="M",
                     help="per-channel normalisation mean")
    clf.add_argument("--std", type=float, nargs="+", metavar="S",
                     help="per-channel normalisation std")
    data.add_argument("--image-size", type=int, metavar="S",
                      help="ImageNet: S >= 224: short side resized to max(S, 256), "
                           "centre-cropped to S (default 224, as Carlini et al. and DRS); "
                           "S < 224: the whole image downsampled to S x S (ImageNet 64x64)")
    cert = parser.add_argument_group("certification")
    cert.add_argument("--sigma", type=float, nargs="+", metavar="S",
                      help="noise level: one for every part, or one per part")
    cert.add_argument("--sigma-r", type=float,
                      help="the r branch's sigma (DRS without a denoiser, or --denoise split)")
    cert.add_argument("--N0", dest="n0", type=int, help="selection samples (default 100)")
    cert.add_argument("--N", dest="n", type=int,
                      help="estimation samples (default 100000); with --adaptive the maximum")
    cert.add_argument("--alpha", type=float, help="failure probability (default 0.001)")
    cert.add_argument("--batch", type=batch_size, metavar="B|auto",
                      help="noise samples per forward pass (default auto: on a GPU the "
                      "largest that fits in free memory, measured, printed and recorded; on a "
                      "CPU 1000); results do not depend on it")
    cert.add_argument("--seed", type=int)
    cert.add_argument("--adaptive", action="store_true", default=None,
                      help="stop sampling once the outcome is decided (same guarantee; "
                      "see denoised_drs.adaptive)")
    cert.add_argument("--radii", nargs="+", type=float, metavar="R",
                      help="with --adaptive: ascending target radii; the radius reported is "
                      "the largest one certified")
    cert.add_argument("--tolerance", type=float, metavar="T",
                      help="with --adaptive, without --radii: stop once more samples are "
                      "unlikely to add more than T of radius (default 0.05 x the largest sigma)")
    run = parser.add_argument_group("run")
    run.add_argument("--outfile", help="result TSV (default results/<mode>.tsv)")
    run.add_argument("--outdir", default="outputs/default",
                     help="where the embedded default writes")
    run.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the process's accelerator)")
    run.add_argument("--autocast", choices=("bf16", "fp16"),
                     help="run each batch's step (denoiser and classifiers) under torch.autocast "
                     "in this dtype (fp16: GPU only)")
    run.add_argument("--denoiser-chunk", type=int, help="max images per denoiser call")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile each batch's whole step (noise, denoiser, classifiers, "
                     "votes) into one graph (default: on for CUDA, off on a CPU, where float32 "
                     "would lose the Winograd convolutions)")
    run.add_argument("--compile-mode", choices=COMPILE_MODES,
                     help="torch.compile mode (default: default; reduce-overhead and "
                     "max-autotune replay CUDA graphs)")
    # What --config records of the images its run certified (config_settings).
    parser.set_defaults(recorded_content=None)
    return parser.parse_args(argv)


PIPELINE_KEYS = ("mode", "classifier", "classifier_l", "classifier_r", "branches", "denoiser",
                 "denoiser_checkpoint", "denoiser_config", "denoise", "partition", "sigma",
                 "sigma_r", "n0", "n", "alpha", "batch", "seed", "device", "autocast",
                 "denoiser_chunk", "compile", "compile_mode", "adaptive", "radii", "tolerance",
                 "dataset", "arch", "num_classes", "classifier_size", "interpolation", "mean",
                 "std", "image_size")


def flag_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in PIPELINE_KEYS if getattr(args, k) is not None}


RUN_KEYS = ("dataset", "data_dir", "skip", "max", "start")
"""Keys of a saved configuration that choose the data, not the pipeline."""
CHECKPOINT_ROLES = ("classifier", "classifier_l", "classifier_r", "denoiser",
                    "denoiser_checkpoint")
"""Settings whose files the configuration saved beside a result records, with their
sha256, in its ``content`` block (see denoised_drs.runner)."""


def config_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The pipeline settings of ``--config``; its run keys fill data flags not given.

    What the file names does not depend on the working directory. A checkpoint the
    file records in ``content`` (as the configuration saved beside a result does) is
    loaded from its recorded absolute path or, if that is gone, from the path as
    written resolved against the file's folder, and must hash to the recorded sha256
    (ValueError naming the file otherwise). Every other relative path in the file (a
    hand-written configuration, ``data_dir``, ``branches``) is resolved against the
    file's folder. When the file also chooses the data (no --dataset, no --data-dir),
    its record of the certified images is kept in ``args.recorded_content`` and
    :func:`prepare_run` checks the loaded images against it. A setting given as a flag
    replaces the file's as given: resolved against the working directory, with no
    recorded hash to check.
    """
    from denoised_drs.pipeline_config import PipelineConfig, pipeline_values, read_config_file

    config = args.config
    raw = read_config_file(config)
    folder = os.path.dirname(os.path.abspath(config))
    file_chooses_data = args.dataset is None and args.data_dir is None
    for key in RUN_KEYS:
        if getattr(args, key) is None:
            setattr(args, key, _run_value(key, raw.get(key), folder, config))
    record = raw.get("content", {})
    if not isinstance(record, dict):
        raise ValueError(f"{config}: its content record is damaged (not a mapping)")
    if file_chooses_data and "data" in record:
        args.recorded_content = record
    values = pipeline_values(raw)
    given = flag_settings(args)
    for role in CHECKPOINT_ROLES:
        if role in values and role not in given:
            values[role] = _checkpoint_paths(role, values[role], record.get(role), folder, config)
    if isinstance(values.get("denoiser_config"), str) and "denoiser_config" not in given:
        # The flags file is also the denoiser (recorded under that role): one file, one path.
        same = raw.get("denoiser_config") == raw.get("denoiser") and "denoiser" not in given
        values["denoiser_config"] = (values["denoiser"] if same
                                     else os.path.join(folder, values["denoiser_config"]))
    if isinstance(values.get("branches"), list) and "branches" not in given:
        values["branches"] = _branch_paths(values["branches"], record.get("branches"), folder,
                                           config)
    return PipelineConfig.from_dict(values).to_dict()


def _branch_paths(parts: list, entries: Any, folder: str, config: str) -> list:
    """The files to load for the ``branches`` (k >= 3 parts) of the configuration file:
    each checked against its recorded sha256 as :func:`_checkpoint_paths` does, in part
    order; resolved beside the file when it records none (a hand-written file)."""
    if entries is None or not all(
        isinstance(part, list) and all(isinstance(p, str) for p in part) for part in parts
    ):
        return [_beside(folder, part) for part in parts]
    found = iter(_checkpoint_paths("branches", [p for part in parts for p in part], entries,
                                   folder, config))
    return [[next(found) for _ in part] for part in parts]


def _beside(folder: str, paths: Any) -> Any:
    """A path or list of paths resolved against ``folder`` (other values as they are,
    for PipelineConfig to refuse)."""
    if isinstance(paths, str):
        return os.path.join(folder, paths)
    if isinstance(paths, list) and all(isinstance(p, str) for p in paths):
        return [os.path.join(folder, p) for p in paths]
    return paths


def _run_value(key: str, value: Any, folder: str, config: str) -> Any:
    """The data key ``key`` of the configuration file, type-checked (ranges are checked
    with the flags'); a relative ``data_dir`` is resolved against the file's folder."""
    if value is None:
        return None
    if key in ("dataset", "data_dir"):
        if not isinstance(value, str) or not value:
            kind = "a name" if key == "dataset" else "a path"
            raise ValueError(f"{config}: {key} must be {kind}, got {value!r}")
        return os.path.join(folder, value) if key == "data_dir" else value
    if isinstance(value, bool) or not isinstance(value, int):
        sign = "non-negative" if key == "start" else "positive"
        raise ValueError(f"{config}: {key} must be a {sign} integer, got {value!r}")
    return value


def _checkpoint_paths(role: str, value: Any, entries: Any, folder: str, config: str) -> Any:
    """The files to load for the checkpoint setting ``role`` of the configuration file
    (see :func:`config_settings`); ``entries`` is its ``content`` record, if any."""
    from denoised_drs.diffusion import PRESETS

    if value is None or (role == "denoiser" and isinstance(value, str)
                         and (value in ("", "none") or value in PRESETS)):
        return value
    if isinstance(value, str):
        written = [value]
    elif isinstance(value, list) and all(isinstance(path, str) for path in value):
        written = value
    else:
        return value  # a wrong type, for PipelineConfig to refuse
    if not isinstance(entries, list):  # no record: a hand-written file, or a preset's
        return _beside(folder, value)
    if len(entries) != len(written):
        raise ValueError(f"{config}: its content record lists {len(entries)} {role} file(s) "
                         f"for {len(written)} path(s); the file was edited")
    found = [_recorded_file(role, path, entry, folder, config)
             for path, entry in zip(written, entries)]
    return found[0] if isinstance(value, str) else found


def _recorded_file(role: str, written: str, entry: Any, folder: str, config: str) -> str:
    """The recorded path of one checkpoint, else ``written`` beside the configuration,
    whichever holds the recorded sha256; ValueError naming the file when neither does."""
    from denoised_drs.content import path_sha256

    sha256 = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(sha256, str):
        raise ValueError(f"{config}: its content record of the {role} files is damaged")
    recorded = entry.get("path")
    candidates = dict.fromkeys(
        path for path in (recorded, os.path.join(folder, written)) if isinstance(path, str)
    )
    for path in candidates:
        if os.path.exists(path) and path_sha256(path) == sha256:
            return path
    flag = "branch" if role == "branches" else role.replace("_", "-")
    raise ValueError(
        f"the {role} file {written} recorded in {config} (sha256 {sha256[:16]}...) is missing "
        f"or changed at {' and at '.join(candidates)}; pass --{flag} to "
        "certify with another file"
    )


def check_dataset_args(args: argparse.Namespace) -> None:
    from denoised_drs.data import DATASETS, check_image_size

    args.dataset = args.dataset or "sample"
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; choose one of {list(DATASETS)}")
    check_image_size(args.dataset, args.image_size)


def prepare_run(args, settings: dict[str, Any], out: Path, state) -> dict[str, Any]:
    """Build the pipeline, check the data fits it and select the images (nothing written);
    returns the keyword arguments of :func:`denoised_drs.runner.certify_dataset`."""
    from denoised_drs.data import data_source, get_dataset
    from denoised_drs.pipeline import Pipeline
    from denoised_drs.runner import select_indices

    if args.device is None and state.device.type != "cpu":
        settings = {**settings, "device": str(state.device)}
    pipe = Pipeline(**settings)
    dataset = get_dataset(args.dataset, "test", args.data_dir, pipe.config.image_size)
    if len(dataset) == 0:
        raise ValueError(f"the {args.dataset} test set holds no images")
    pipe.check_image_shape(tuple(dataset[0][0].shape))
    skip = 1 if args.skip is None else args.skip
    start = args.start or 0
    indices = select_indices(len(dataset), skip, args.max, start)
    if args.recorded_content is not None:
        # A default data folder may be relative to the working directory (CIFAR-10's
        # data/cifar10): the images --config's run certified must be the ones loaded.
        # The runner's own check of a resumed run's images, applied to that record.
        from denoised_drs.runner import _data_changes

        changes = _data_changes(args.recorded_content, dataset, pipe.smoothed.num_classes, {})
        if changes:
            raise ValueError(f"{args.config}: the data loaded is not the data it records: "
                             f"{changes[0]}; pass --dataset and --data-dir to certify other data")
    data_dir = None if args.data_dir is None else os.path.abspath(args.data_dir)
    extra = {"dataset": args.dataset, "data_dir": data_dir, "skip": skip, "max": args.max}
    if start:
        # recorded only when set, so the configurations of earlier runs still resume
        extra["start"] = start
    return {"pipe": pipe, "dataset": dataset, "indices": indices, "out": out, "state": state,
            "extra_config": extra, "data_source": data_source(args.dataset, args.data_dir)}


def run_one(args, settings: dict[str, Any], out: Path, state) -> None:
    """Prepare (all checks before writing), then certify."""
    from denoised_drs.runner import certify_dataset

    certify_dataset(**prepare_run(args, settings, out, state))


def run_default(args, state) -> None:
    """The five runs of the embedded default; every output of every run is checked (a
    foreign or changed result refused) before the first is written."""
    from denoised_drs import analysis
    from denoised_drs.errors import check_output_file
    from denoised_drs.runner import certify_dataset, check_config

    settings = {**DEFAULT_SETTINGS, **flag_settings(args)}
    default_skip = settings.pop("skip")
    args.skip = default_skip if args.skip is None else args.skip
    outdir = Path(args.outdir)
    planned = []
    for name, label, run_settings in DEFAULT_RUNS:
        resolved = {**run_settings, **settings}
        for key in ("classifier", "classifier_l", "classifier_r", "denoiser"):
            if key in run_settings:
                resolved[key] = str(CHECKPOINTS / run_settings[key])
        run = prepare_run(args, resolved, outdir / f"{name}.tsv", state)
        check_output_file(run["out"])
        check_config(run["pipe"], run["out"], run["extra_config"], run["dataset"],
                     run["indices"], run["data_source"])
        planned.append((label, run))
    check_output_file(outdir / "table.md")
    runs = []
    for label, run in planned:
        certify_dataset(**run)
        if state.is_main_process:
            runs += analysis.runs_from_results(analysis.load_results(run["out"]), label,
                                               paper_radius=True)
    if state.is_main_process:
        table = analysis.certified_table(runs, (0.0, 0.25, 0.5, 0.75, 1.0))
        markdown = analysis.to_markdown(table)
        (outdir / "table.md").write_text(markdown)
        print(f"\nCertified accuracy (%) on the bundled sample, N={settings['n']}, "
              f"alpha={settings['alpha']}, every {args.skip}th image; results in {outdir}/\n")
        print(markdown)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # up to 2x faster on CPUs; see denoised_drs.cpu_memory
    from denoised_drs.errors import check_output_file
    from denoised_drs.launch import bounded_rendezvous
    from denoised_drs.runner import launched_state

    settings = config_settings(args) if args.config else {}
    check_dataset_args(args)
    if args.outfile:
        # Before Path() drops a trailing separator: "res/" names a folder, not a file "res".
        check_output_file(args.outfile)
    with bounded_rendezvous(__file__):
        state = launched_state(args.device)
    if args.config is None and not (args.classifier or args.classifier_l or args.classifier_r
                                    or args.branches):
        run_default(args, state)
        return 0
    settings.update(flag_settings(args))
    if args.outfile == "":
        raise ValueError("--outfile is empty")
    out = Path(args.outfile or f"results/{settings.get('mode', 'drs')}.tsv")
    run_one(args, settings, out, state)
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
