"""Adaptive certification without radii, simulated on vote counts: samples against ACR.

Reads a fixed-N run (a certify TSV with ``count`` (RS), ``count_l`` / ``count_r`` (two
parts) or ``count_1`` ... ``count_k`` (k parts), and ``n_used``), takes each image's
top-class frequency there as the true probability of a vote for it (an image whose
every vote went to the top class gets probability 1, the most favourable case for a
long run), draws binomial votes with a fixed seed, and runs
:func:`denoised_drs.adaptive.certify_adaptive` on them at each ``--tolerance``,
beside fixed N = ``--n-max`` on votes drawn the same way. Only images the run
classified correctly count towards ACR. No network runs, so a sweep over
tolerances takes seconds where measuring it takes core-hours; how closely it predicts
a measured run is recorded in results/README.md.

The radius is the run's own certificate (rs, independent, or coupled for joint
denoising) at the run's sigmas, both read from the configuration saved beside the file
(``OUT.config.json``); a file without one needs ``--kind`` and ``--sigma``. A flag
that contradicts the saved configuration is refused.

    python benchmarks/simulate_adaptive.py results/fmnist1000/rs_gaussian.tsv \\
        --every 100 --tolerance 0.0125 0.05 0.055 0.125
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from denoised_drs import analysis
from denoised_drs.adaptive import certify_adaptive, check_tolerance
from denoised_drs.analysis.reading import config_of
from denoised_drs.bounds import branch_alpha, clopper_pearson_lower
from denoised_drs.cli import ArgumentParser, run_script
from denoised_drs.errors import first_line
from denoised_drs.modes import CertificateKind, choices
from denoised_drs.partition import get_partition
from denoised_drs.pipeline_config import PipelineConfig
from denoised_drs.scheme import Scheme, rule_for


class BinomialVotes:
    """Stands in for a SmoothedClassifier: branch j votes for class 0 with probability p[j]."""

    def __init__(self, p: np.ndarray, scheme: Scheme, seed: int) -> None:
        self.p = p
        self.num_branches = len(p)
        self.scheme = scheme
        self.rng = np.random.default_rng(seed)

    def sample_counts(self, x, num, batch_size, seed, stage, start=0) -> np.ndarray:
        top = self.rng.binomial(num, self.p)
        return np.stack([top, num - top], axis=1)


def probabilities(results: analysis.Results) -> np.ndarray:
    """Per image and branch, the run's top-class frequency (1 where unanimous)."""
    extra = results.extra
    if "n_used" not in extra:
        raise ValueError(f"{results.path}: no n_used column (written by this library)")
    branches = sorted(int(m[1]) for m in map(re.compile(r"count_([0-9]+)").fullmatch, extra)
                      if m)
    if "count" in extra:
        names = ["count"]
    elif "count_l" in extra and "count_r" in extra:
        names = ["count_l", "count_r"]
    elif len(branches) >= 3 and branches == list(range(1, len(branches) + 1)):
        names = [f"count_{j}" for j in branches]
    else:
        raise ValueError(f"{results.path}: needs a count column (RS), count_l and count_r, "
                         "or count_1 ... count_k")
    counts = np.stack([extra[name] for name in names], axis=1)
    return counts / extra["n_used"][:, None]


def run_scheme(path: Path, num_parts: int, kind: str | None, sigma: float | None) -> Scheme:
    """The scheme of the run that wrote ``path`` (``num_parts`` branches): its
    certificate rule and per-part sigmas, from its saved configuration, else from
    ``kind`` and ``sigma`` (the flags), which must agree with the configuration where
    there is one. The partition only fixes how many branches vote: no image is cut."""
    name = "identity" if num_parts == 1 else "checkerboard" if num_parts == 2 else \
        f"diagonal-{num_parts}"
    kind, sigmas = _certificate(path, num_parts, kind, sigma)
    return Scheme(get_partition(name), rule_for(kind), sigmas)


def _certificate(path: Path, num_parts: int, kind: str | None,
                 sigma: float | None) -> tuple[CertificateKind, tuple[float, ...]]:
    config = config_of(path)
    if config is None:
        if kind is None:
            raise ValueError(f"{path}: no saved configuration ({path.name}.config.json) to "
                             f"read the run's certificate from; give --kind "
                             f"({', '.join(choices(CertificateKind))}) and --sigma")
        if sigma is None:
            raise ValueError(f"{path}: no saved configuration; give --sigma")
        return CertificateKind(kind), (sigma,) * num_parts
    try:
        saved = PipelineConfig.from_file(config)
    except ValueError as error:
        raise ValueError(f"{config}: {first_line(error)}") from None
    if saved.num_parts != num_parts:
        raise ValueError(f"{path} has the counts of {num_parts} branch(es), but {config} "
                         f"records a run of {saved.num_parts}")
    if kind is not None and CertificateKind(kind) is not saved.certificate:
        raise ValueError(f"--kind {kind}, but {config} records a "
                         f"{saved.certificate.value} run")
    sigmas = saved.part_sigmas()
    if sigma is not None and any(s != sigma for s in sigmas):
        raise ValueError(f"--sigma {sigma:g}, but {config} records sigmas "
                         f"{', '.join(f'{s:g}' for s in sigmas)}")
    return saved.certificate, sigmas


def simulate(p: np.ndarray, correct: np.ndarray, scheme: Scheme,
             args: argparse.Namespace) -> list[dict]:
    def acr(radii: list[float]) -> float:
        return float(np.mean(np.where(correct == 1, radii, 0.0)))

    fixed = []
    for i, p_i in enumerate(p):
        top = np.random.default_rng([args.seed, i]).binomial(args.n_max, p_i)
        bound = np.atleast_1d(clopper_pearson_lower(top, args.n_max,
                                                    branch_alpha(args.alpha, len(p_i))))
        abstain, radius = scheme.decide(bound)
        fixed.append(0.0 if abstain else radius)
    rows = [{"run": f"fixed N={args.n_max}", "acr": acr(fixed), "mean_n_used": args.n_max}]
    for tolerance in args.tolerance:
        certs = [certify_adaptive(BinomialVotes(p_i, scheme, seed=args.seed + 1000 + i),
                                  None, args.n0, args.n_max, args.alpha, args.n_max,
                                  tolerance=tolerance)
                 for i, p_i in enumerate(p)]
        radii = [0.0 if c.prediction == -1 else c.radius for c in certs]
        rows.append({"run": f"adaptive n_max={args.n_max}, no radii, tolerance {tolerance:g}",
                     "acr": acr(radii), "mean_n_used": float(np.mean([c.n_used for c in certs]))})
    for row in rows:
        row["acr_change_percent"] = 100.0 * (row["acr"] / rows[0]["acr"] - 1.0)
        row["fewer_samples"] = args.n_max / row["mean_n_used"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog=Path(__file__).name, description=__doc__.splitlines()[0])
    parser.add_argument("tsv", type=Path, help="a fixed-N certify TSV (Gaussian, RS or DRS)")
    parser.add_argument("--sigma", type=float,
                        help="the run's sigma (default: from its saved configuration)")
    parser.add_argument("--kind", choices=choices(CertificateKind),
                        help="the run's certificate (default: from its saved configuration)")
    parser.add_argument("--every", type=int, default=1, help="only idx multiples of this")
    parser.add_argument("--n-max", type=int, default=100_000)
    parser.add_argument("--N0", dest="n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--tolerance", nargs="+", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if (args.sigma is not None and not args.sigma > 0) or args.n_max < args.n0 or args.n0 < 1:
        raise ValueError("need sigma > 0 and 1 <= N0 <= n_max")
    for tolerance in args.tolerance:
        check_tolerance(tolerance, None)
    results = analysis.load_results(args.tsv).every(args.every)
    for where in results.left_out:
        print(f"{parser.prog}: warning: {where}: torn last line (no newline: a row being "
              "written or a killed process) left out", file=sys.stderr)
    p = probabilities(results)
    scheme = run_scheme(args.tsv, p.shape[1], args.kind, args.sigma)
    rows = simulate(p, results.correct, scheme, args)
    print(f"{len(results)} images of {args.tsv}, {int((p == 1).all(axis=1).sum())} unanimous")
    print("| run | ACR | ACR change | samples/img | fewer samples |\n|:---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['run']} | {row['acr']:.4f} | {row['acr_change_percent']:+.2f}% | "
              f"{row['mean_n_used']:,.0f} | {row['fewer_samples']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"settings": {**vars(args), "tsv": str(args.tsv),
                                                      "json": str(args.json)},
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
