"""Adaptive certification: sound under repeated looks, reproducible, resumable.

The soundness checks use linear-classifier oracles: for f(x) = [w.x + b > 0] each
vote is an independent Bernoulli(Phi(z)) draw with z = margin / (sigma ||w||) in
closed form, and the exact radius is sigma z (RS) or sigma (z_l + z_r) / sqrt(2)
(DRS, independent branches). ``VoteOracle`` draws exactly those vote counts (one
binomial per stage, so hundreds of trials stay fast); the engine tests below run
the same procedure through real linear models.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from test_smoothing import Linear, linear_with_margin, random_image, two_branch_oracle

from denoised_drs import adaptive
from denoised_drs.data import load_sample
from denoised_drs.partition import get_partition
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig
from denoised_drs.runner import certify_dataset
from denoised_drs.scheme import Scheme, rule_for
from denoised_drs.smoothing import ABSTAIN, DualSmooth, Smooth

ALPHA = 0.05
TRIALS = 300
# The false-certification rate may exceed alpha only by sampling error (3 sd).
RATE_BOUND = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)


class VoteOracle:
    """Stands in for a SmoothedClassifier of linear branches: class 1 with probability p_j.

    ``lost`` of the votes are non-finite (counted in no class).
    """

    def __init__(self, p, kind, sigmas, lost=0.0):
        self.p = np.asarray(p, dtype=float)
        self.num_branches = len(p)
        partition = get_partition("rs" if self.num_branches == 1 else "drs")
        self.scheme = Scheme(partition, rule_for(kind), sigmas)
        self.lost = lost

    def sample_counts(self, x, num, batch_size, seed, stage, start=0):
        rng = np.random.default_rng([*seed, stage, start])
        finite = rng.binomial(num, 1.0 - self.lost, size=self.num_branches)
        ones = rng.binomial(finite, self.p)
        return np.stack([finite - ones, ones], axis=1)


def false_certification_rate(oracle, exact, radii, n_max=4000, tolerance=None):
    certs = [adaptive.certify_adaptive(oracle, None, 20, n_max, ALPHA, 1000, seed=(t,), radii=radii,
                                       tolerance=tolerance)
             for t in range(TRIALS)]
    assert all(c.n_used <= n_max for c in certs)
    return np.mean([c.prediction == 1 and c.radius >= exact for c in certs])


SIGMA = 0.25
Z_JUST_BELOW = 0.98  # RS: exact radius 0.245, just below the target 0.25
RS_ORACLE = (VoteOracle([norm.cdf(Z_JUST_BELOW)], "rs", (SIGMA,)), SIGMA * Z_JUST_BELOW, 0.25)
DRS_EXACT = SIGMA * 2 * Z_JUST_BELOW / math.sqrt(2)
DRS_ORACLE = (VoteOracle([norm.cdf(Z_JUST_BELOW)] * 2, "independent", (SIGMA, SIGMA)), DRS_EXACT,
              0.35)


@pytest.mark.parametrize("with_radii", [True, False])
@pytest.mark.parametrize("case", [RS_ORACLE, DRS_ORACLE], ids=["rs", "drs"])
def test_certified_at_or_above_the_exact_radius_at_most_alpha_of_the_time(case, with_radii):
    oracle, exact, target = case
    assert exact < target < exact * 1.03
    radii = [0.1, target, 0.6] if with_radii else None
    assert false_certification_rate(oracle, exact, radii) <= RATE_BOUND


@pytest.mark.parametrize("with_radii", [True, False])
def test_the_classic_mistake_fails_the_same_check(monkeypatch, with_radii):
    # Clopper-Pearson at the full alpha at every look: what the budget prevents.
    monkeypatch.setattr(adaptive, "spending", lambda alpha, looks: np.full(looks, alpha))
    oracle, exact, target = RS_ORACLE
    radii = [0.1, target, 0.6] if with_radii else None
    assert false_certification_rate(oracle, exact, radii) > RATE_BOUND


def test_schedule_and_budget_are_fixed_in_advance():
    looks = adaptive.look_schedule(100, 100_000)
    assert looks[0] == 100 and looks[-1] == 100_000
    assert all(b > a for a, b in zip(looks, looks[1:]))
    assert adaptive.look_schedule(100, 100) == (100,)
    budget = adaptive.spending(0.001, len(looks))
    assert budget.sum() == pytest.approx(0.001, rel=1e-12) and budget.sum() <= 0.001 * (1 + 1e-12)
    assert budget[-1] == pytest.approx(0.001 * adaptive.FINAL_SHARE)
    assert adaptive.spending(0.001, 1).tolist() == [0.001]


def test_clear_images_stop_early_and_borderline_ones_run_to_n_max():
    x = random_image(4)
    easy = Smooth(linear_with_margin(x, 6.0, SIGMA, seed=1), 2, SIGMA)
    cert = easy.certify_adaptive(x, 50, 100_000, 0.001, 20_000, seed=3, radii=[0.25, 0.5, 0.75])
    assert (cert.prediction, cert.radius) == (1, 0.75) and cert.n_used < 20_000
    wrong = Smooth(linear_with_margin(x, -3.0, SIGMA, seed=1), 2, SIGMA)
    cert = wrong.certify_adaptive(x, 50, 100_000, 0.001, 20_000, seed=3, radii=[0.25, 0.5])
    assert cert.prediction == 0 and cert.n_used < 5_000
    noise = Smooth(linear_with_margin(x, 0.0, SIGMA, seed=1), 2, SIGMA)
    cert = noise.certify_adaptive(x, 50, 100_000, 0.001, 20_000, seed=3)
    # p = 1/2 exactly: the stop rule needs the upper bound within the tolerance of
    # radius 0, i.e. p_hat + 2.33 / (2 sqrt(n)) <= Phi(0.05) ~ 0.52: a few thousand
    # to a few tens of thousands of samples, depending on the draw; never n_max.
    assert cert.prediction == ABSTAIN and cert.n_used <= 50_000


def test_without_radii_close_to_fixed_n_and_never_above_exact():
    x = random_image(5)
    f = linear_with_margin(x, 1.5, SIGMA, seed=2)
    smooth = Smooth(f, 2, SIGMA)
    fixed = smooth.certify(x, 50, 100_000, 0.001, 50_000, seed=1)
    cert = smooth.certify_adaptive(x, 50, 100_000, 0.001, 50_000, seed=1)
    assert (fixed.radius - 2 * adaptive.TOLERANCE_Z * SIGMA
            <= cert.radius <= f.margin(x) / float(f.w.norm()))
    assert cert.n <= cert.n_used < 100_000


def test_result_does_not_depend_on_batch_size():
    x = random_image(6)
    f_l, f_r, _ = two_branch_oracle(x, 1.0, 0.7, SIGMA, SIGMA, seed=8)
    dual = DualSmooth(f_l, f_r, 2, SIGMA)
    for radii in ([0.25, 0.5], None):
        certs = {b: dual.certify_adaptive(x, 30, 3000, 0.01, b, seed=(2, 9), radii=radii)
                 for b in (7, 250, 3000)}
        assert certs[7] == certs[250] == certs[3000]


def test_nonfinite_votes_count_against_the_top_class():
    oracle = VoteOracle([0.99, 0.99], "coupled", (SIGMA, SIGMA), lost=0.1)
    cert = adaptive.certify_adaptive(oracle, None, 20, 2000, 0.01, 100, seed=(1,), radii=None)
    assert cert.nonfinite > 0.05 * 2 * cert.n_used
    assert all(c <= 0.95 * cert.n for c in cert.counts_top)
    assert cert.radius_paper is not None and cert.radius_paper >= cert.radius


@pytest.mark.parametrize("case", [RS_ORACLE, DRS_ORACLE], ids=["rs", "drs"])
def test_a_larger_tolerance_stops_sooner_and_stays_sound(case):
    oracle, exact, _ = case
    assert false_certification_rate(oracle, exact, None, tolerance=0.2) <= RATE_BOUND
    default, loose = (
        [adaptive.certify_adaptive(oracle, None, 20, 100_000, 0.001, 10_000, seed=(t,),
                                   tolerance=tolerance) for t in range(20)]
        for tolerance in (None, 0.05)
    )
    # Same seed, same votes at every look: a looser rule stops at the same look or an
    # earlier one (default 0.0125 here: about 30,000 / 44,000 samples; 0.05: a few
    # thousand), and gives up about the tolerance at most.
    assert all(c.n_used <= d.n_used for c, d in zip(loose, default))
    assert np.mean([c.n_used for c in loose]) < np.mean([d.n_used for d in default]) / 4
    assert all(d.radius - 0.05 - 0.01 <= c.radius <= exact for c, d in zip(loose, default))


@pytest.mark.parametrize("tolerance", [0.0, -0.1, float("inf"), float("nan"), 10**400, "0.1", True,
                                       np.bool_(True)])
def test_bad_tolerance_is_refused(tolerance):
    smooth = Smooth(Linear(torch.ones(4), 0.0), 2, SIGMA)
    with pytest.raises(ValueError, match="tolerance"):
        smooth.certify_adaptive(torch.zeros(1, 2, 2), 10, 100, 0.01, 10, tolerance=tolerance)
    with pytest.raises(ValueError, match="tolerance"):
        PipelineConfig(mode="rs", classifier="c.pt", adaptive=True, tolerance=tolerance)


def test_tolerance_needs_adaptive_and_no_radii():
    with pytest.raises(ValueError, match="adaptive"):
        PipelineConfig(mode="rs", classifier="c.pt", tolerance=0.1)
    with pytest.raises(ValueError, match="without radii"):
        PipelineConfig(mode="rs", classifier="c.pt", adaptive=True, radii=[0.25], tolerance=0.1)
    smooth = Smooth(Linear(torch.ones(4), 0.0), 2, SIGMA)
    with pytest.raises(ValueError, match="without radii"):
        smooth.certify_adaptive(torch.zeros(1, 2, 2), 10, 100, 0.01, 10, radii=[0.25],
                                tolerance=0.1)
    for number in (np.float32(0.125), np.int64(2), 1):
        assert PipelineConfig(mode="rs", classifier="c.pt", adaptive=True,
                              tolerance=number).tolerance == float(number)


@pytest.mark.parametrize("radii", [[], [0.5, 0.25], [0.25, float("inf")], [-0.1, 0.2], [0.0, 0.1]])
def test_bad_radii_are_refused(radii):
    smooth = Smooth(Linear(torch.ones(4), 0.0), 2, SIGMA)
    with pytest.raises(ValueError, match="radii"):
        smooth.certify_adaptive(torch.zeros(1, 2, 2), 10, 100, 0.01, 10, radii=radii)
    with pytest.raises(ValueError, match="radii"):
        PipelineConfig(mode="rs", classifier="c.pt", adaptive=True, radii=radii)


def test_radii_without_adaptive_are_refused():
    with pytest.raises(ValueError, match="adaptive"):
        PipelineConfig(mode="rs", classifier="c.pt", radii=[0.25])
    with pytest.raises(ValueError, match="adaptive"):
        PipelineConfig(mode="rs", classifier="c.pt", adaptive="yes")
    assert PipelineConfig(mode="rs", classifier="c.pt", adaptive=True,
                          radii=(0.25, 0.5)).radii == [0.25, 0.5]


def test_resumed_adaptive_run_gives_the_same_rows(tiny_checkpoints, tmp_path):
    settings = {"mode": "rs", "classifier": tiny_checkpoints["full"], "sigma": 0.5, "n0": 10,
                "n": 600, "batch": 200, "device": "cpu", "adaptive": True, "radii": [0.25, 0.5]}
    data = load_sample()
    indices = list(range(0, 12, 2))
    certify_dataset(Pipeline(**settings), data, indices, tmp_path / "ref.tsv", progress=False)
    out = tmp_path / "resumed.tsv"
    certify_dataset(Pipeline(**settings), data, indices[:3], out, progress=False)
    certify_dataset(Pipeline(**{**settings, "batch": 77}), data, indices, out, progress=False)

    def rows(path):
        lines = path.read_text().splitlines()
        header = lines[0].split("\t")
        assert header[-3:] == ["n_used", "n_look", "alpha_look"]
        return [[c for name, c in zip(header, line.split("\t")) if name != "time"]
                for line in lines[1:]]

    assert rows(out) == rows(tmp_path / "ref.tsv") and len(rows(out)) == len(indices)
    assert all(int(row[-2]) <= int(row[-3]) <= 600 for row in rows(out))


def test_command_line_adaptive_with_radii(tiny_checkpoints, tmp_path):
    from test_certify_script import run

    common = ["--dataset", "sample", "--max", "6", "--skip", "3", "--mode", "rs", "--classifier",
              tiny_checkpoints["full"], "--sigma", "0.5", "--N0", "10", "--N", "400",
              "--device", "cpu"]
    out = tmp_path / "adaptive.tsv"
    done = run([*common, "--adaptive", "--radii", "0.25", "0.5", "--outfile", str(out)])
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert len(rows) == 2 and all(float(r[3]) in (0.0, 0.25, 0.5) and 0 < int(r[-3]) <= 400
                                  for r in rows)
    refused = run([*common, "--radii", "0.25", "--outfile", str(tmp_path / "no.tsv")])
    assert (refused.returncode == 2 and "adaptive" in refused.stderr
            and not (tmp_path / "no.tsv").exists())


def test_command_line_tolerance_is_saved_and_checked_on_resume(tiny_checkpoints, tmp_path):
    import json

    from test_certify_script import run

    common = ["--dataset", "sample", "--skip", "3", "--mode", "rs", "--classifier",
              tiny_checkpoints["full"], "--sigma", "0.5", "--N0", "10", "--N", "400",
              "--device", "cpu", "--adaptive"]
    out = tmp_path / "loose.tsv"
    done = run([*common, "--max", "3", "--tolerance", "0.2", "--outfile", str(out)])
    assert done.returncode == 0, done.stderr
    config = tmp_path / "loose.tsv.config.json"
    assert json.loads(config.read_text())["tolerance"] == 0.2
    refused = run([*common, "--max", "6", "--tolerance", "0.1", "--outfile", str(out)])
    assert refused.returncode == 2 and "tolerance was 0.2, now 0.1" in refused.stderr
    assert len(out.read_text().splitlines()) == 2

    # A run saved before tolerance existed (no such key) resumes at the default.
    plain = tmp_path / "plain.tsv"
    assert run([*common, "--max", "3", "--outfile", str(plain)]).returncode == 0
    saved = json.loads((tmp_path / "plain.tsv.config.json").read_text())
    assert saved.pop("tolerance") is None
    (tmp_path / "plain.tsv.config.json").write_text(json.dumps(saved))
    resumed = run([*common, "--max", "6", "--outfile", str(plain)])
    assert resumed.returncode == 0, resumed.stderr
    assert len(plain.read_text().splitlines()) == 3

    alone = run([*common[:-1], "--max", "3", "--tolerance", "0.1",
                 "--outfile", str(tmp_path / "no.tsv")])
    assert (alone.returncode == 2 and "adaptive" in alone.stderr
            and not (tmp_path / "no.tsv").exists())


def test_benchmark_runs_each_tolerance_without_radii():
    from pathlib import Path

    from module_files import load_module

    bench = load_module(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_adaptive.py",
                        "bench_adaptive")
    args = bench.parse_args(["--fixed", "1000", "--n-max", "1000", "--tolerance", "0.05", "0.1"])
    runs = dict(bench.contenders(args))
    assert runs["adaptive n_max=1000, no radii, tolerance 0.05"] == {
        "n": 1000, "adaptive": True, "tolerance": 0.05}
    assert "tolerance" not in runs["adaptive n_max=1000, no radii"]
    assert list(runs)[-1] == "fixed N=1000" and len(runs) == 5
    with pytest.raises(ValueError, match="tolerance"):
        bench.parse_args(["--tolerance", "0"])
