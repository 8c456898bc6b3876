"""Fixed-N against adaptive certification on Fashion-MNIST with the bundled checkpoints.

For each mode, on the test images with index a multiple of --skip below --max: fixed N
for each --fixed value, and adaptive (denoised_drs.adaptive) for each --n-max value,
with the target --radii and without radii (at the default tolerance and at each
--tolerance). Reports, side by side, certified accuracy at
each radius, ACR (with radii the radius is the largest target certified, so ACR is
quantised there), mean samples per image (n_used) and wall time; writes JSON and a
Markdown table. Runs go cheapest first (fixed N = 100,000 last).

With --json, rows already in that file for the same settings are kept and not run
again, and the file is rewritten after every row: an interrupted benchmark resumes.
Each row carries the date it was measured; wall times of rows measured in different
sessions are comparable only if the machine was equally loaded.

    python benchmarks/bench_adaptive.py --modes rs_gaussian drs_gaussian \
        --fixed 10000 100000 --n-max 10000 100000 \
        --json results/bench_adaptive/fmnist500.json --markdown results/bench_adaptive/fmnist500.md
    python benchmarks/bench_adaptive.py --modes denoised_rs drs_joint drs_split --skip 100 \
        --fixed 10000 --n-max 10000 --json results/bench_adaptive/denoised100.json
    python benchmarks/bench_adaptive.py --modes rs_gaussian --max 100 --fixed 1000 \
        --n-max 1000  # quick look
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from denoised_drs import analysis
from denoised_drs.adaptive import check_tolerance
from denoised_drs.cli import run_script
from denoised_drs.data import get_dataset
from denoised_drs.pipeline import Pipeline
from denoised_drs.runner import select_indices

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"
_RS = {"mode": "rs", "classifier": str(CKPT / "fmnist_rs_gaussian_s0.25.pt"), "sigma": 0.25}
_DRS = {"mode": "drs", "classifier_l": str(CKPT / "fmnist_drs_l_gaussian_s0.18.pt"),
        "classifier_r": str(CKPT / "fmnist_drs_r_gaussian_s0.18.pt"), "sigma": 0.18}
_DENOISER = {"denoiser": str(CKPT / "fmnist_denoiser.pt")}
MODES: dict[str, dict[str, Any]] = {
    "rs_gaussian": _RS,
    "drs_gaussian": _DRS,
    "denoised_rs": {**_RS, **_DENOISER},
    "drs_joint": {**_DRS, **_DENOISER, "denoise": "joint"},
    "drs_split": {**_DRS, **_DENOISER, "denoise": "split"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES),
                        default=["rs_gaussian", "drs_gaussian"])
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: the Debian package's)")
    parser.add_argument("--skip", type=int, default=20,
                        help="every skip-th test image (default 20)")
    parser.add_argument("--max", type=int, help="only indices below max (default: all 10,000)")
    parser.add_argument("--fixed", nargs="+", type=int, default=[10_000, 100_000],
                        help="fixed N values (default 10000 100000)")
    parser.add_argument("--n-max", nargs="+", type=int, default=[10_000, 100_000],
                        help="adaptive n_max values (default 10000 100000)")
    parser.add_argument("--N0", dest="n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--radii", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--tolerance", nargs="+", type=float, default=[], metavar="T",
                        help="also run adaptive without radii at these tolerances (l2 radius "
                        "that more samples may still add when sampling stops)")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write the results here (JSON)")
    parser.add_argument("--markdown", help="write the table here (Markdown)")
    args = parser.parse_args(argv)
    if args.n0 < 1 or min(args.fixed) < 1 or min(args.n_max) < 1:
        raise ValueError("--fixed, --n-max and --N0 must be positive")
    for tolerance in args.tolerance:
        check_tolerance(tolerance, None)
    return args


def contenders(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """(label, pipeline overrides), cheapest first: fixed N up to the largest n_max, then
    adaptive with and without radii per n_max, then the larger fixed N."""
    fixed = [(n, f"fixed N={n}", {"n": n}) for n in args.fixed]
    adaptive = []
    for n_max in args.n_max:
        adaptive.append((n_max, f"adaptive n_max={n_max}, radii",
                         {"n": n_max, "adaptive": True, "radii": args.radii}))
        adaptive.append((n_max, f"adaptive n_max={n_max}, no radii",
                         {"n": n_max, "adaptive": True}))
        adaptive.extend((n_max, f"adaptive n_max={n_max}, no radii, tolerance {t:g}",
                         {"n": n_max, "adaptive": True, "tolerance": t})
                        for t in args.tolerance)
    # An adaptive run costs at most its n_max, usually far less: it goes before a fixed
    # run of the same size.
    runs = sorted(fixed + adaptive, key=lambda run: (run[0], run[1].startswith("fixed")))
    return [(label, overrides) for _, label, overrides in runs]


def measure(pipe: Pipeline, dataset, indices: list[int], radii: list[float],
            label: str) -> dict[str, Any]:
    start = time.perf_counter()
    records = [pipe.certify_one(dataset[i][0], int(dataset[i][1]), i)
               for i in tqdm(indices, desc=label, unit="img")]
    seconds = time.perf_counter() - start
    correct = np.array([r.correct for r in records])
    radius = np.array([r.radius for r in records])
    accuracy = analysis.certified_accuracy(correct, radius, [0.0, *radii])
    return {
        "certified_accuracy": {f"{r:g}": 100.0 * float(a) for r, a in zip([0.0, *radii], accuracy)},
        "acr": analysis.average_certified_radius(correct, radius),
        "mean_n_used": float(np.mean([r.n_used for r in records])),
        "wall_seconds": seconds,
        "images": len(records),
    }


def to_markdown(rows: list[dict[str, Any]], radii: list[float]) -> str:
    header = ["mode", "run", *(f"{r:g}" for r in [0.0, *radii]), "ACR", "mean n_used", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|:---|:---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        cells = [row["mode"], row["run"], *(f"{v:.1f}" for v in row["certified_accuracy"].values()),
                 f"{row['acr']:.3f}", f"{row['mean_n_used']:.0f}", f"{row['wall_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def settings_key(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a stored row must share to be reused."""
    return {"skip": args.skip, "max": args.max, "n0": args.n0, "alpha": args.alpha,
            "radii": args.radii}


def load_rows(path: str | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of an earlier run of the same settings in ``path`` (none if absent)."""
    if not path or not Path(path).exists():
        return []
    stored = json.loads(Path(path).read_text())
    if {k: stored["settings"].get(k) for k in settings_key(args)} != settings_key(args):
        raise ValueError(f"{path} holds rows of other settings; name another --json")
    return stored["rows"]


def write_outputs(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
        tmp.replace(args.json)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(to_markdown(rows, args.radii))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = get_dataset("fashion-mnist", "test", args.data_dir)
    indices = select_indices(len(dataset), args.skip, args.max)
    rows = load_rows(args.json, args)
    done = {(row["mode"], row["run"]) for row in rows}
    for mode in args.modes:
        for label, overrides in contenders(args):
            if (mode, label) in done:
                continue
            settings = {**MODES[mode], "n0": args.n0, "alpha": args.alpha, "batch": args.batch,
                        "device": args.device, **overrides}
            row = {"mode": mode, "run": label,
                   **measure(Pipeline(**settings), dataset, indices, args.radii,
                                                          f"{mode}, {label}"),
                   "measured": time.strftime("%Y-%m-%d %H:%M")}
            rows.append(row)
            write_outputs(args, rows)
            print(to_markdown([row], args.radii).splitlines()[-1], flush=True)
    print(f"\n{len(indices)} images (every {args.skip}th), N0={args.n0}, alpha={args.alpha}\n")
    print(to_markdown(rows, args.radii))
    write_outputs(args, rows)
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
