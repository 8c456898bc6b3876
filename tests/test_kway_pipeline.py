"""k sub-images end to end: the engine's certificates against linear oracles, the
pipeline's per-part classifiers and sigmas, denoising for k parts, and the CLI."""

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from module_files import load_module
from scipy.stats import norm
from torch import nn

from denoised_drs.bounds import kway_radius
from denoised_drs.cli import run_script
from denoised_drs.data import load_sample
from denoised_drs.models import ClassifierSpec, save_classifier
from denoised_drs.models.registry import create_model
from denoised_drs.modes import CertificateKind
from denoised_drs.partition import Diagonal, Polyphase
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig
from denoised_drs.smoothing import ABSTAIN, SmoothedClassifier
from denoised_drs.voters import BranchClassifiers

FAST = {"n0": 10, "n": 40, "batch": 40, "device": "cpu"}
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "certify_diffusion.py"


class Linear(nn.Module):
    """Two classes on the flattened input: class 1 iff w.x + b > 0."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w.flatten(), b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(score), score], dim=1)


def linear_branches(parts, z, sigmas, seed):
    """One linear classifier per part whose smoothed z-score at the part is z[j]."""
    generator = torch.Generator().manual_seed(seed)
    branches = []
    for part, z_j, sigma in zip(parts, z, sigmas):
        w = torch.randn(part.numel(), generator=generator)
        b = z_j * sigma * float(w.norm()) - float(part.flatten() @ w)
        branches.append(Linear(w, b))
    return branches


@pytest.mark.parametrize("partition", [Diagonal(3), Polyphase(2, 2)])
def test_certificates_stay_below_the_exact_k_way_bound_at_most_alpha_of_the_time(partition):
    """With linear branches the smoothed probabilities are Phi(z_j) exactly, so the
    k-way bound at those p is a lower bound on the true radius; the engine's radius,
    from Clopper-Pearson bounds at alpha / k, may exceed it only with probability alpha."""
    alpha, trials = 0.1, 80
    image = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))
    parts = [p[0] for p in partition.split(image[None])]
    k = partition.num_parts
    rng = np.random.default_rng(1)
    exceed = 0
    for trial in range(trials):
        z = rng.uniform(0.3, 1.5, size=k)
        sigmas = rng.uniform(0.2, 0.5, size=k)
        branches = linear_branches(parts, z, sigmas, seed=trial)
        smoothed = SmoothedClassifier(BranchClassifiers(branches), partition, 2, sigmas,
                                      CertificateKind.INDEPENDENT)
        cert = smoothed.certify(image, 20, 300, alpha, 320, seed=trial)
        truth = kway_radius(norm.cdf(z), sigmas)
        assert cert.prediction in (1, ABSTAIN) and len(cert.p_lower) == k
        exceed += cert.prediction == 1 and cert.radius > truth
    assert exceed / trials <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)


@pytest.fixture(scope="module")
def sample():
    data = load_sample()
    return torch.stack([data[i][0] for i in range(2)]), [data[i][1] for i in range(2)]


def small_cnns(count, seed=0):
    torch.manual_seed(seed)
    return [create_model("small_cnn", num_classes=10, in_chans=1, input_size=(28, 28),
                         normalization="fashion-mnist").eval() for _ in range(count)]


def test_the_pipeline_certifies_four_parts_with_one_classifier_and_sigma_each(sample):
    images, labels = sample
    pipe = Pipeline(mode="drs", partition="polyphase-2x2", branches=small_cnns(4),
                    sigma=[0.1, 0.12, 0.14, 0.16], num_classes=10, **FAST)
    assert pipe.smoothed.sigmas == (0.1, 0.12, 0.14, 0.16)
    assert pipe.smoothed.scheme.columns() == (
        "pA_1", "pA_2", "pA_3", "pA_4", "count_1", "count_2", "count_3", "count_4",
        "radius_paper")
    pipe.check_image_shape((1, 28, 28))
    record = pipe.certify_one(images[0], labels[0], 0)
    assert len(record.p_lower) == 4 and len(record.counts_top) == 4
    assert record.radius_paper is not None  # Eq. 30, labelled: not certified
    with pytest.raises(ValueError, match="does not fit|do not fit|divisible"):
        pipe.check_image_shape((1, 27, 28))


@pytest.mark.parametrize("denoise", ["joint", "split"])
def test_denoising_for_k_parts(tiny_checkpoints, sample, denoise):
    images, labels = sample
    sigmas = [0.125] * 4 if denoise == "joint" else [0.1, 0.12, 0.14, 0.16]
    pipe = Pipeline(mode="drs", partition="diagonal-4", branches=small_cnns(4),
                    denoiser=tiny_checkpoints["denoiser"], denoise=denoise, sigma=sigmas,
                    num_classes=10, **FAST)
    expected = CertificateKind.COUPLED if denoise == "joint" else CertificateKind.INDEPENDENT
    assert pipe.smoothed.kind is expected is pipe.config.certificate
    if denoise == "split":
        timesteps = [d.timestep for d in pipe.smoothed.voter.denoisers]
        assert timesteps == sorted(timesteps) and len(set(timesteps)) == 4
    record = pipe.certify_one(images[1], labels[1], 1)
    assert len(record.p_lower) == 4


@pytest.mark.parametrize("settings, message", [
    ({"partition": "diagonal-4", "branches": ["a.pt"] * 3}, "4 part.*got 3"),
    ({"partition": "diagonal-4", "branches": ["a.pt"] * 4, "sigma": [0.1, 0.2]},
     "one value for every part or one per part"),
    ({"partition": "diagonal-x", "branches": ["a.pt"] * 4}, "unknown partition"),
    ({"partition": "diagonal-4", "classifier_l": "a.pt", "classifier_r": "b.pt"},
     "give one branch"),
    ({"partition": "diagonal-4", "branches": ["a.pt"] * 4, "denoiser": "d.pt",
      "denoise": "joint", "sigma": [0.1, 0.1, 0.1, 0.2]}, "joint denoising needs one sigma"),
])
def test_settings_that_do_not_fit_the_partition_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(mode="drs", **settings)


def test_two_parts_as_branches_are_the_aliases():
    config = PipelineConfig(mode="drs", branches=[["l.pt"], ["r.pt"]], sigma=[0.18, 0.25])
    assert (config.classifier_l, config.classifier_r, config.branches) == (["l.pt"], ["r.pt"],
                                                                           None)
    assert (config.sigma, config.sigma_r) == (0.18, 0.25)


def run_cli(args):
    main = load_module(SCRIPT, "certify_diffusion_kway").main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_script(lambda: main(args), str(SCRIPT))
        except SystemExit as stop:
            return stop.code or 0, err.getvalue()
    return 0, err.getvalue()


def test_the_cli_takes_one_branch_flag_per_part(tmp_path):
    paths = []
    for j, network in enumerate(small_cnns(4)):
        paths.append(tmp_path / f"part{j + 1}.pt")
        torch.save(network.model.state_dict(), paths[-1])
    out = tmp_path / "k4.tsv"
    common = ["--dataset", "sample", "--mode", "drs", "--partition", "polyphase-2x2",
              "--arch", "small_cnn", "--N0", "4", "--N", "8", "--max", "1", "--device", "cpu"]
    branches = [arg for path in paths for arg in ("--branch", str(path))]
    status, err = run_cli([*common, *branches, "--sigma", "0.125", "--outfile", str(out)])
    assert status == 0, err
    header, row = out.read_text().splitlines()
    assert header.split("\t")[6:] == ["pA_1", "pA_2", "pA_3", "pA_4", "count_1", "count_2",
                                      "count_3", "count_4", "radius_paper", "nonfinite",
                                      "n_used"]
    assert len(row.split("\t")) == len(header.split("\t"))
    for bad, message in (
        (branches[:6], "4 part"),
        ([*branches, "--sigma", "0.1", "0.2"], "one value for every part"),
    ):
        status, err = run_cli([*common, *bad, "--outfile", str(tmp_path / "bad.tsv")])
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad.tsv").exists()


def test_a_branch_trained_on_a_part_of_another_shape_is_refused(tmp_path):
    paths = []
    for j in range(1, 5):
        spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", branch=str(j),
                                          partition="polyphase-2x2", sigma=0.125)
        paths.append(tmp_path / f"poly_{j}.pt")
        save_classifier(paths[-1], create_model(spec.arch, **spec.model_options()), spec)
    fits = Pipeline(mode="drs", partition="polyphase-2x2", branches=[str(p) for p in paths],
                    sigma=0.125, **FAST)
    assert fits.smoothed.voter.classifiers[0](torch.rand(2, 1, 14, 14)).shape == (2, 10)
    with pytest.raises(ValueError, match="trained on part 1 of the polyphase-2x2 partition "
                                         r"\(14 x 14 sub-images\); part 1 of diagonal-4 is 28 x 7"):
        Pipeline(mode="drs", partition="diagonal-4", branches=[str(p) for p in paths],
                 sigma=0.125, **FAST)


def test_the_papers_k_way_radius_is_never_negative():
    from denoised_drs.partition import get_partition
    from denoised_drs.scheme import IndependentRule, Scheme

    scheme = Scheme(get_partition("polyphase-2x2"), IndependentRule(), [0.125] * 4)
    p_lower = [0.6, 0.6, 0.6, 0.21]  # sum above k/2, sum of z below 0
    abstain, _ = scheme.decide(p_lower)
    assert not abstain and norm.ppf(p_lower).sum() < 0
    assert scheme.paper_radius(p_lower, abstain) == 0.0
