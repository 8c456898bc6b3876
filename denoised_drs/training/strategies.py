"""Training objectives for base classifiers of (dual) randomized smoothing.

Each strategy maps ``(model, x, y, sigma, epoch)`` to a scalar loss, where ``x`` is
a clean batch in [0, 1] already cut to the model's input (a whole image for RS, one
checkerboard sub-image for a DRS branch) and Gaussian noise of standard deviation
``sigma`` is added here, in pixel space:

* :class:`Gaussian`: cross-entropy on noisy copies (Cohen et al. 2019);
* :class:`Consistency`: cross-entropy over ``m`` noisy copies plus
  ``lbd * mean_i KL(p_mean || p_i) + eta * H(p_mean)`` (Jeong and Shin 2020);
* :class:`SmoothAdv`: cross-entropy on noisy copies of an L2 PGD adversarial example
  against the soft smoothed classifier (Salman et al. 2019, the PGD variant).

Noise comes from torch's global generator; seed it for reproducible runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def noisy_copies(x: torch.Tensor, sigma: float, m: int) -> torch.Tensor:
    """``m`` noisy copies of each image, shape ``(m * B, ...)``; copy ``i`` of image ``b`` is
    row ``i * B + b``."""
    noise = torch.randn((m, *x.shape), device=x.device, dtype=x.dtype) * sigma
    return (x.unsqueeze(0) + noise).flatten(0, 1)


@dataclass
class ConsistencyTerms:
    """The parts of the consistency loss:
    ``total = cross_entropy + lbd * consistency + eta * entropy``."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    consistency: torch.Tensor
    entropy: torch.Tensor


def consistency_loss(
    logits: torch.Tensor, y: torch.Tensor, lbd: float = 10.0, eta: float = 0.5
) -> ConsistencyTerms:
    """Jeong and Shin (2020) on logits of shape ``(m, B, K)`` (``m`` noisy copies per image).

    ``cross_entropy`` averages over all copies; ``consistency`` is
    ``mean_i KL(p_mean || p_i)`` with ``p_mean`` the mean softmax over copies;
    ``entropy`` is ``H(p_mean)``; both averaged over the batch. ``consistency`` is 0
    exactly when all copies give the same distribution and positive otherwise.
    """
    if logits.dim() != 3 or logits.shape[1] != y.shape[0]:
        raise ValueError(
            f"expected logits (m, B, K) with B = {y.shape[0]}, got {tuple(logits.shape)}"
        )
    m = logits.shape[0]
    cross_entropy = F.cross_entropy(logits.flatten(0, 1), y.repeat(m))
    log_p = F.log_softmax(logits, dim=-1)
    p_mean = log_p.exp().mean(dim=0)
    log_p_mean = torch.log(p_mean.clamp_min(1e-12))
    kl = (p_mean.unsqueeze(0) * (log_p_mean.unsqueeze(0) - log_p)).sum(dim=-1)
    consistency = kl.mean()
    entropy = -(p_mean * log_p_mean).sum(dim=-1).mean()
    total = cross_entropy + lbd * consistency + eta * entropy
    return ConsistencyTerms(total, cross_entropy, consistency, entropy)


def smoothed_soft_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Per-image ``-log mean_j softmax(model(x + noise_j))[y]``: the soft smoothed
    classifier's loss.

    ``noise`` has shape ``(m, B, ...)``; returns a tensor ``(B,)``.
    """
    m = noise.shape[0]
    logits = model((x.unsqueeze(0) + noise).flatten(0, 1)).view(m, x.shape[0], -1)
    probs = F.softmax(logits, dim=-1).mean(dim=0)
    return F.nll_loss(torch.log(probs.clamp_min(1e-12)), y, reduction="none")


def smoothadv_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    epsilon: float,
    steps: int,
    step_size: float | None = None,
) -> torch.Tensor:
    """L2 PGD against the soft smoothed classifier (SmoothAdv's PGD variant).

    Ascends :func:`smoothed_soft_loss` with the fixed noise draws ``noise`` for
    ``steps`` normalised-gradient steps of size ``step_size`` (default
    ``2 * epsilon / steps``), keeping ``x + delta`` in [0, 1] and ``||delta||_2 <=
    epsilon`` per image. Model parameters get no gradient; the caller chooses the
    model's mode (SmoothAdv attacks in eval mode). Returns ``x + delta``, detached.
    """
    if not (math.isfinite(epsilon) and epsilon >= 0) or steps < 0:
        raise ValueError(
            f"epsilon must be finite and non-negative and steps non-negative, got {epsilon}, "
            f"{steps}"
        )
    if epsilon == 0 or steps == 0:
        return x.detach().clone()
    step_size = 2.0 * epsilon / steps if step_size is None else step_size
    x = x.detach()
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = smoothed_soft_loss(model, x + delta, y, noise).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        delta = delta.detach() + step_size * grad / grad_norm
        delta = (x + delta).clamp(0.0, 1.0) - x
        delta = delta.renorm(p=2, dim=0, maxnorm=epsilon)
    return (x + delta).detach()


class Strategy:
    """A training objective; ``loss`` returns a scalar to minimise."""

    name = "strategy"

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, epoch: int = 0
    ) -> torch.Tensor:
        raise NotImplementedError


class Gaussian(Strategy):
    """Cross-entropy on ``num_noise`` noisy copies of each image (Cohen et al. 2019)."""

    name = "gaussian"

    def __init__(self, num_noise: int = 1) -> None:
        if num_noise < 1:
            raise ValueError(f"num_noise must be >= 1, got {num_noise}")
        self.num_noise = num_noise

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, epoch: int = 0
    ) -> torch.Tensor:
        inputs = noisy_copies(x, sigma, self.num_noise)
        return F.cross_entropy(model(inputs), y.repeat(self.num_noise))


class Consistency(Strategy):
    """Consistency regularisation (Jeong and Shin 2020); defaults m = 2, lbd = 10, eta = 0.5."""

    name = "consistency"

    def __init__(self, num_noise: int = 2, lbd: float = 10.0, eta: float = 0.5) -> None:
        if num_noise < 2:
            raise ValueError(f"consistency needs num_noise >= 2 noisy copies, got {num_noise}")
        if not (math.isfinite(lbd) and lbd >= 0 and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"lbd and eta must be non-negative and finite, got {lbd}, {eta}")
        self.num_noise, self.lbd, self.eta = num_noise, lbd, eta

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, epoch: int = 0
    ) -> torch.Tensor:
        inputs = noisy_copies(x, sigma, self.num_noise)
        logits = model(inputs).view(self.num_noise, x.shape[0], -1)
        return consistency_loss(logits, y, self.lbd, self.eta).total


class SmoothAdv(Strategy):
    """SmoothAdv (Salman et al. 2019): train on noisy copies of a PGD example.

    The attack radius grows linearly to ``epsilon`` over the first ``warmup``
    epochs: ``min(epsilon, (epoch + 1) * epsilon / warmup)``. The attack runs on
    ``attack_model`` if given (e.g. the model without a DataParallel wrapper).
    """

    name = "smoothadv"

    def __init__(
        self, num_noise: int = 1, steps: int = 1, epsilon: float = 0.5, warmup: int = 1
    ) -> None:
        if (num_noise < 1 or steps < 1 or not (math.isfinite(epsilon) and epsilon > 0)
                or warmup < 0):
            raise ValueError(
                "smoothadv needs num_noise >= 1, steps >= 1, a finite epsilon > 0, warmup >= 0; "
                "got "
                f"{num_noise}, {steps}, {epsilon}, {warmup}"
            )
        self.num_noise, self.steps, self.epsilon, self.warmup = num_noise, steps, epsilon, warmup
        self.attack_model: nn.Module | None = None

    def epsilon_at(self, epoch: int) -> float:
        if self.warmup == 0:
            return self.epsilon
        return min(self.epsilon, (epoch + 1) * self.epsilon / self.warmup)

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, epoch: int = 0
    ) -> torch.Tensor:
        noise = torch.randn((self.num_noise, *x.shape), device=x.device, dtype=x.dtype) * sigma
        attacked = self.attack_model or model
        was_training = attacked.training
        params = [p for p in attacked.parameters() if p.requires_grad]
        attacked.eval()
        for p in params:
            p.requires_grad_(False)
        try:
            x_adv = smoothadv_attack(attacked, x, y, noise, self.epsilon_at(epoch), self.steps)
        finally:
            for p in params:
                p.requires_grad_(True)
            attacked.train(was_training)
        logits = model((x_adv.unsqueeze(0) + noise).flatten(0, 1))
        return F.cross_entropy(logits, y.repeat(self.num_noise))


STRATEGIES = ("gaussian", "consistency", "smoothadv")


def make_strategy(
    name: str,
    num_noise: int | None = None,
    lbd: float = 10.0,
    eta: float = 0.5,
    epsilon: float = 0.5,
    attack_steps: int = 1,
    warmup: int = 1,
) -> Strategy:
    """A strategy by name; ``num_noise`` defaults to 1 (gaussian, smoothadv) or 2 (consistency)."""
    if name == "gaussian":
        return Gaussian(num_noise or 1)
    if name == "consistency":
        return Consistency(num_noise or 2, lbd, eta)
    if name == "smoothadv":
        return SmoothAdv(num_noise or 1, attack_steps, epsilon, warmup)
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGIES}")
