"""Training objectives, settings and the loop, on the bundled Fashion-MNIST sample."""

from __future__ import annotations

import csv

import pytest
import torch

from denoised_drs.checkpoint_file import with_content_hash
from denoised_drs.data import load_sample
from denoised_drs.models import SubImageClassifier, load_classifier
from denoised_drs.partition import checkerboard_split
from denoised_drs.smoothing import DualSmooth, Smooth
from denoised_drs.training import (
    TrainConfig,
    branch_input,
    consistency_loss,
    make_strategy,
    smoothadv_attack,
    smoothed_soft_loss,
    train,
)


def _sample_batch(count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    sample = load_sample()
    images = torch.stack([sample[i][0] for i in range(count)])
    return images, sample.labels[:count].clone()


class _TinyNet(torch.nn.Module):
    """A very small classifier so that many optimisation steps stay fast on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _model(branch: str = "full", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = _TinyNet()
    return net if branch == "full" else SubImageClassifier(net, (28, 28))


def test_consistency_regulariser_is_zero_when_copies_agree():
    torch.manual_seed(0)
    y = torch.tensor([0, 2, 1])
    same = torch.randn(1, 3, 4).expand(2, 3, 4).clone().requires_grad_(True)
    terms = consistency_loss(same, y, lbd=10.0, eta=0.5)
    assert terms.consistency.item() == pytest.approx(0.0, abs=1e-6)
    assert terms.entropy.item() > 0
    assert terms.total.item() == pytest.approx(
        terms.cross_entropy.item() + 0.5 * terms.entropy.item(), rel=1e-6
    )

    differ = torch.randn(2, 3, 4, requires_grad=True)
    terms = consistency_loss(differ, y, lbd=10.0, eta=0.5)
    assert terms.consistency.item() > 1e-3
    expected = terms.cross_entropy + 10.0 * terms.consistency + 0.5 * terms.entropy
    assert terms.total.item() == pytest.approx(expected.item(), rel=1e-6)
    terms.consistency.backward()
    assert differ.grad is not None and differ.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="logits"):
        consistency_loss(torch.randn(3, 4), y)


def test_consistency_kl_matches_its_definition():
    torch.manual_seed(1)
    logits, y = torch.randn(3, 5, 4), torch.randint(0, 4, (5,))
    p = logits.softmax(-1)
    p_mean = p.mean(0)
    kl = torch.stack(
        [(p_mean * (p_mean.log() - p[i].log())).sum(-1).mean() for i in range(3)]
    ).mean()
    assert consistency_loss(logits, y).consistency.item() == pytest.approx(kl.item(), rel=1e-5)


def test_smoothadv_attack_stays_in_the_ball_and_raises_the_smoothed_loss():
    model = _model().eval()
    x, y = _sample_batch(16)
    torch.manual_seed(3)
    noise = 0.25 * torch.randn(4, *x.shape)
    for epsilon, steps in ((0.5, 1), (1.0, 5)):
        x_adv = smoothadv_attack(model, x, y, noise, epsilon, steps)
        norms = (x_adv - x).flatten(1).norm(dim=1)
        assert norms.max().item() <= epsilon + 1e-5
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        with torch.no_grad():
            before = smoothed_soft_loss(model, x, y, noise).mean()
            after = smoothed_soft_loss(model, x_adv, y, noise).mean()
        assert after > before + 1e-3
    assert all(p.grad is None for p in model.parameters())


def test_smoothadv_epsilon_warmup():
    strategy = make_strategy("smoothadv", epsilon=1.0, warmup=4)
    assert [strategy.epsilon_at(e) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("strategy", "branch"),
    [
        ("gaussian", "full"),
        ("gaussian", "l"),
        ("consistency", "full"),
        ("consistency", "r"),
        ("smoothadv", "full"),
    ],
)
def test_a_few_steps_lower_the_loss(strategy, branch):
    model = _model(branch)
    objective = make_strategy(strategy, epsilon=0.25, attack_steps=2, warmup=0)
    x, y = _sample_batch(32)
    x = branch_input(x, branch)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def measured() -> float:
        torch.manual_seed(123)  # the same noise before and after training
        model.eval()
        with torch.no_grad() if strategy != "smoothadv" else torch.enable_grad():
            return objective.loss(model, x, y, sigma=0.25).item()

    before = measured()
    torch.manual_seed(0)
    for _ in range(10):
        model.train()
        loss = objective.loss(model, x, y, sigma=0.25)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert measured() < 0.8 * before


def test_branch_input_is_the_checkerboard_half():
    x = torch.rand(2, 1, 4, 6)
    x_l, x_r = checkerboard_split(x)
    assert torch.equal(branch_input(x, "full"), x)
    assert torch.equal(branch_input(x, "l"), x_l) and torch.equal(branch_input(x, "r"), x_r)


def test_config_presets_paths_and_validation(tmp_path):
    cifar = TrainConfig.from_recipe("cifar10", str(tmp_path / "m.pt"), target="drs")
    assert (cifar.epochs, cifar.lr, cifar.milestones, cifar.optimizer) == (
        40,
        1e-3,
        (25, 35),
        "adam",
    )
    assert cifar.branches == ("l", "r")
    assert cifar.out_path("l").name == "m_l.pt" and cifar.log_path("r").name == "m_r.csv"
    assert [cifar.lr_at(e) for e in (0, 24, 25, 34, 35)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]
    )
    imagenet = TrainConfig.from_recipe("imagenet", "x.pt", epochs=3)
    assert (imagenet.epochs, imagenet.lr, imagenet.milestones) == (3, 1e-5, (5, 10))
    assert (
        TrainConfig.from_recipe("sample", "m_{branch}.pt", target="drs", branch="r")
        .out_path("r")
        .name
        == "m_r.pt"
    )
    for bad, message in (
        (dict(sigma=0.0), "sigma"),
        (dict(branch="l"), "branch must be 'full'"),
        (dict(target="drs", branch="full"), "branch in"),
        (dict(strategy="consistency", num_noise=1), "num-noise >= 2"),
        (dict(strategy="mixup"), "strategy"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_recipe("sample", "m.pt", **bad)


def _quick(tmp_path, **overrides) -> TrainConfig:
    settings = dict(epochs=1, batch=32, max_train=64, max_test=32, progress=False, cpu=True)
    settings.update(overrides)
    return TrainConfig.from_recipe("sample", str(tmp_path / "model.pt"), **settings)


def test_rs_training_writes_a_checkpoint_that_certifies(tmp_path):
    (path,) = train(_quick(tmp_path, epochs=2, strategy="consistency", sigma=0.25))
    rows = list(csv.DictReader(open(tmp_path / "model.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {
        "epoch",
        "lr",
        "train_loss",
        "test_clean_acc",
        "test_noisy_acc",
        "epoch_time_s",
    }
    assert not (tmp_path / "model.pt.state.pt").exists()
    assert path.stat().st_size < 2_000_000
    classifier = load_classifier(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["training"]["strategy"] == "consistency" and raw["training"]["epochs_done"] == 2
    image, _ = load_sample()[0]
    certificate = Smooth(classifier, 10, 0.25).certify(
        image, n0=10, n=50, alpha=0.01, batch_size=50
    )
    assert -1 <= certificate.prediction < 10 and certificate.radius >= 0


def test_drs_training_writes_two_branches_that_certify(tmp_path):
    paths = train(_quick(tmp_path, target="drs", branch="both", sigma=0.18))
    assert [p.name for p in paths] == ["model_l.pt", "model_r.pt"]
    base_l, base_r = (load_classifier(p) for p in paths)
    assert isinstance(base_l, SubImageClassifier) and base_l(torch.rand(3, 1, 28, 14)).shape == (
        3,
        10,
    )
    image, _ = load_sample()[1]
    certificate = DualSmooth(base_l, base_r, 10, 0.18).certify(
        image, n0=10, n=50, alpha=0.01, batch_size=50
    )
    assert len(certificate.p_lower) == 2 and certificate.radius >= 0


def test_resume_continues_where_it_stopped(tmp_path):
    train(_quick(tmp_path, keep_state=True, strategy="smoothadv"))
    state_file = tmp_path / "model.pt.state.pt"
    assert state_file.exists()
    # Mark the saved state so that the resumed run provably starts from it.
    state = torch.load(state_file, map_location="cpu", weights_only=True)
    state["state_dict"]["head.3.bias"][0] = 1000.0
    state["log"][0]["train_loss"] = 123.0
    torch.save(with_content_hash(state), state_file)
    with pytest.raises(ValueError,
                       match=r"settings differ .*: lr 0.001 -> 0.5, sigma 0.25 -> 0.5$"):
        train(_quick(tmp_path, epochs=2, resume=True, strategy="smoothadv", lr=0.5, sigma=0.5))
    with pytest.raises(ValueError, match="exists; pass --resume"):
        train(_quick(tmp_path, epochs=2, strategy="smoothadv"))
    train(_quick(tmp_path, epochs=2, resume=True, strategy="smoothadv"))
    rows = list(csv.DictReader(open(tmp_path / "model.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[0]["train_loss"]) == 123.0 and float(rows[1]["train_loss"]) != 123.0
    raw = torch.load(tmp_path / "model.pt", map_location="cpu", weights_only=True)
    assert raw["training"]["epochs_done"] == 2
    assert raw["state_dict"]["head.3.bias"][0] > 900
    assert not state_file.exists()
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(_quick(tmp_path, epochs=3, resume=True))


def test_fine_tuning_from_init_starts_from_its_weights(tmp_path):
    (rs,) = train(_quick(tmp_path / "rs"))
    config = _quick(tmp_path / "drs", target="drs", branch="l", init=str(rs), lr=1e-12)
    (branch,) = train(config)
    before = load_classifier(rs)
    after = load_classifier(branch, branch="full")
    x = torch.rand(2, 1, 28, 28)
    # lr ~ 0: only batch-norm running statistics moved, so outputs stay close.
    assert torch.allclose(before.model.head[1].weight, after.model.head[1].weight, atol=1e-6)
    assert after(x).shape == (2, 10)
    with pytest.raises(ValueError, match="cifar_resnet20"):
        train(_quick(tmp_path / "bad", arch="cifar_resnet20", init=str(rs)))
