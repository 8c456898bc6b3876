"""Adaptive certification without radii, simulated on vote counts: samples against ACR.

Reads a fixed-N run (a certify TSV with ``count`` (RS) or ``count_l`` / ``count_r``
(DRS) and ``n_used``), takes each image's top-class frequency there as the true
probability of a vote for it (an image whose every vote went to the top class gets
probability 1, the most favourable case for a long run), draws binomial votes with a
fixed seed, and runs :func:`denoised_drs.adaptive.certify_adaptive` on them at each
``--tolerance``, beside fixed N = ``--n-max`` on votes drawn the same way. Only images
the run classified correctly count towards ACR. No network runs, so a sweep over
tolerances takes seconds where measuring it takes core-hours; how closely it predicts
a measured run is recorded in results/README.md.

    python benchmarks/simulate_adaptive.py results/fmnist1000/rs_gaussian.tsv --sigma 0.25 \\
        --every 100 --tolerance 0.0125 0.05 0.055 0.125
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from denoised_drs import analysis
from denoised_drs.adaptive import certify_adaptive, check_tolerance
from denoised_drs.bounds import branch_alpha, clopper_pearson_lower
from denoised_drs.cli import run_script
from denoised_drs.modes import CertificateKind
from denoised_drs.partition import get_partition
from denoised_drs.scheme import Scheme, certified_radius, rule_for


class BinomialVotes:
    """Stands in for a SmoothedClassifier: branch j votes for class 0 with probability p[j]."""

    def __init__(self, p: np.ndarray, kind: CertificateKind, sigma: float, seed: int) -> None:
        self.p = p
        self.num_branches = len(p)
        partition = get_partition("rs" if self.num_branches == 1 else "drs")
        self.scheme = Scheme(partition, rule_for(kind), (sigma,) * self.num_branches)
        self.rng = np.random.default_rng(seed)

    def sample_counts(self, x, num, batch_size, seed, stage, start=0) -> np.ndarray:
        top = self.rng.binomial(num, self.p)
        return np.stack([top, num - top], axis=1)


def probabilities(results: analysis.Results) -> tuple[np.ndarray, CertificateKind]:
    """Per image and branch, the run's top-class frequency (1 where unanimous)."""
    extra = results.extra
    if "n_used" not in extra:
        raise ValueError(f"{results.path}: no n_used column (written by this library)")
    names = ["count"] if "count" in extra else ["count_l", "count_r"]
    if any(name not in extra for name in names):
        raise ValueError(f"{results.path}: needs a count column (RS) or count_l and count_r")
    counts = np.stack([extra[name] for name in names], axis=1)
    kind = CertificateKind.RS if names == ["count"] else CertificateKind.INDEPENDENT
    return counts / extra["n_used"][:, None], kind


def simulate(p: np.ndarray, correct: np.ndarray, kind: CertificateKind, sigma: float,
             args: argparse.Namespace) -> list[dict]:
    def acr(radii: list[float]) -> float:
        return float(np.mean(np.where(correct == 1, radii, 0.0)))

    fixed = []
    for i, p_i in enumerate(p):
        top = np.random.default_rng([args.seed, i]).binomial(args.n_max, p_i)
        bound = np.atleast_1d(clopper_pearson_lower(top, args.n_max,
                                                    branch_alpha(args.alpha, len(p_i))))
        abstain, radius = certified_radius(kind, bound, (sigma,) * len(p_i))
        fixed.append(0.0 if abstain else radius)
    rows = [{"run": f"fixed N={args.n_max}", "acr": acr(fixed), "mean_n_used": args.n_max}]
    for tolerance in args.tolerance:
        certs = [certify_adaptive(BinomialVotes(p_i, kind, sigma, seed=args.seed + 1000 + i),
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv", help="a fixed-N certify TSV (Gaussian, RS or DRS)")
    parser.add_argument("--sigma", type=float, required=True)
    parser.add_argument("--every", type=int, default=1, help="only idx multiples of this")
    parser.add_argument("--n-max", type=int, default=100_000)
    parser.add_argument("--N0", dest="n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--tolerance", nargs="+", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if not args.sigma > 0 or args.n_max < args.n0 or args.n0 < 1:
        raise ValueError("need sigma > 0 and 1 <= N0 <= n_max")
    for tolerance in args.tolerance:
        check_tolerance(tolerance, None)
    results = analysis.load_results(args.tsv).every(args.every)
    p, kind = probabilities(results)
    rows = simulate(p, results.correct, kind, args.sigma, args)
    print(f"{len(results)} images of {args.tsv}, {int((p == 1).all(axis=1).sum())} unanimous")
    print("| run | ACR | ACR change | samples/img | fewer samples |\n|:---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['run']} | {row['acr']:.4f} | {row['acr_change_percent']:+.2f}% | "
              f"{row['mean_n_used']:,.0f} | {row['fewer_samples']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"settings": {**vars(args), "json": str(args.json)},
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
