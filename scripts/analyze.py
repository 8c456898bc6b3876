"""Tabulate and plot certify results (Cohen's TSV format); draw the Figure 1(b) bounds.

    python scripts/analyze.py RS.tsv DRS.tsv --names RS DRS --radii 0 0.25 0.5 0.75 1.0 \\
        --out outputs/analysis [--paper-radius] [--bounds-plot outputs/bounds.png]

Prints the Markdown table and writes table.md, table.tex and certified_accuracy.png
into --out. ``--paper-radius`` adds, for files with a ``radius_paper`` column, a row
"NAME (paper radius, not certified)". ``--bounds-plot PATH`` writes the RS/DRS radius
upper-bound curves (the paper's Figure 1(b)); it may be used without any TSV.
A TSV argument may name the output of an unfinished run (``OUT`` while its rows are
still in ``OUT.part0``, ``OUT.part1``, ... of its processes): its rows so far are read,
joined (stderr says how many, from how many files). ``--common-images`` keeps only the
images that every file has, so such a run can be set beside finished ones on the same
images.

Every input is read and every output rendered before anything is written, so bad
input (missing file, malformed TSV, --names count mismatch, negative radius) leaves
no partial outputs: one line on stderr and exit code 2. No output replaces an
existing file (a table, a checkpoint, a result) unless ``--overwrite`` is given. A
torn last line of a file (no newline: a row being written, or a killed process) is
left out, with one warning line on stderr naming it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import numpy as np

from denoised_drs import analysis
from denoised_drs.atomic_file import atomic_write
from denoised_drs.cli import ArgumentParser, run_script
from denoised_drs.errors import check_distinct_outputs, check_output_file
from denoised_drs.results import existing_parts

PROG = "analyze.py"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("tsv", nargs="*",
                        help="certify output files (Cohen's format); an unfinished run's OUT "
                        "reads its part files")
    parser.add_argument("--names", nargs="+", help="one run name per file (default: file names)")
    parser.add_argument(
        "--radii",
        nargs="+",
        type=float,
        default=list(analysis.DEFAULT_RADII),
        help="table radii (default: 0 0.25 0.5 0.75 1.0)",
    )
    parser.add_argument(
        "--out", default="outputs/analysis", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--paper-radius",
        action="store_true",
        help="also tabulate the radius_paper column as a separate, non-certified row",
    )
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        help="only images whose idx is a multiple of this (e.g. 20 on an every-10th run)",
    )
    parser.add_argument(
        "--common-images",
        action="store_true",
        help="only the images present in every file (e.g. an unfinished run beside "
        "finished ones)",
    )
    parser.add_argument("--max-radius", type=float, help="x-axis limit of the accuracy plot")
    parser.add_argument("--title", help="title of the accuracy plot")
    parser.add_argument(
        "--bounds-plot", metavar="PATH", help="write the Figure 1(b) bound curves here"
    )
    parser.add_argument("--bound-p", type=float, default=0.999, help="p_A of the bound curves")
    parser.add_argument(
        "--bound-noise-norm",
        type=float,
        default=1.0,
        help="noise magnitude sqrt(E||z||^2), i.e. sigma = value/sqrt(dim) (default: 1)",
    )
    parser.add_argument("--bound-family", choices=analysis.BOUND_FAMILIES, default="gaussian")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that exist (default: refuse before writing)")
    parser.add_argument("--bound-parts", type=int, nargs="+", metavar="K",
                        help="draw the k-part curve for each K (e.g. 1 2 4; Gaussian noise) "
                        "instead of RS and DRS")
    return parser


def _load(path: str) -> analysis.Results:
    parts = existing_parts(Path(path))
    if parts:
        files = len(parts) + Path(path).is_file()
        results = analysis.load_run(path)
        print(f"{path}: unfinished run, {len(results)} rows so far from {files} "
              f"file{'s' if files > 1 else ''}", file=sys.stderr)
    else:
        results = analysis.load_results(path)
    for where in results.left_out:
        print(f"{PROG}: warning: {where}: torn last line (no newline: a row being written "
              "or a killed process) left out", file=sys.stderr)
    return results


def _render(args: argparse.Namespace) -> tuple[str | None, dict[Path, bytes]]:
    """Validate all inputs and render every output in memory: (stdout text, files)."""
    if not args.tsv and not args.bounds_plot:
        raise ValueError("give at least one TSV file or --bounds-plot PATH")
    if args.names is not None and len(args.names) != len(args.tsv):
        raise ValueError(f"--names has {len(args.names)} entries for {len(args.tsv)} TSV files")
    if any(r < 0 for r in args.radii):
        raise ValueError(f"--radii must be non-negative, got {args.radii}")

    roles: dict[str, Path] = {}
    if args.tsv:
        out = Path(args.out)
        roles = {name: out / name for name in ("table.md", "table.tex", "certified_accuracy.png")}
    if args.bounds_plot:
        roles["--bounds-plot"] = Path(args.bounds_plot)
    check_distinct_outputs(roles)
    for path in args.tsv:
        check_distinct_outputs({**roles, f"the input {path}": Path(path)})

    outputs: dict[Path, bytes] = {}
    markdown = None
    if args.tsv:
        names = args.names or [Path(path).stem for path in args.tsv]
        loaded = [_load(path).every(args.every) for path in args.tsv]
        if args.common_images:
            common = functools.reduce(np.intersect1d, [results.idx for results in loaded])
            if common.size == 0:
                raise ValueError("--common-images: no image is in every file")
            print(f"--common-images: the {common.size} images in every file", file=sys.stderr)
            loaded = [results.restricted_to(common) for results in loaded]
        runs = []
        for results, name in zip(loaded, names):
            runs += analysis.runs_from_results(results, name, args.paper_radius)
        table = analysis.certified_table(runs, args.radii)
        markdown = analysis.to_markdown(table)
        figure = analysis.certified_accuracy_figure(runs, args.max_radius, args.title)
        outputs[out / "table.md"] = markdown.encode()
        outputs[out / "table.tex"] = analysis.to_latex(table).encode()
        outputs[out / "certified_accuracy.png"] = analysis.figure_png_bytes(figure)
    if args.bounds_plot:
        figure = analysis.radius_bounds_figure(
            p_a=args.bound_p, noise_norm=args.bound_noise_norm, family=args.bound_family,
            parts=args.bound_parts,
        )
        outputs[Path(args.bounds_plot)] = analysis.figure_png_bytes(figure)
    return markdown, outputs


def main(argv: list[str] | None = None) -> int:
    """Render, then write; bad input raises ValueError or OSError (see :func:`run_script`)."""
    args = _parser().parse_args(argv)
    markdown, outputs = _render(args)
    # Every destination is checked before the first is written (and before any
    # folder is made), so a bad one leaves everything as it was.
    for path in outputs:
        check_output_file(path)
        if path.exists() and not args.overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
    for path in outputs:
        path.parent.mkdir(parents=True, exist_ok=True)
    for path, data in outputs.items():
        with atomic_write(path) as stream:
            stream.write(data)
    if markdown is not None:
        sys.stdout.write(markdown)
    for path in outputs:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
