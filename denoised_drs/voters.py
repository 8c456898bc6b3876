"""Voters: how a batch of noisy sub-images becomes one class vote per branch.

A voter is an ``nn.Module`` called as ``voter(noisy_parts, fresh_noise)`` that
returns ``(N, num_branches)`` integer class indices, or :data:`NONFINITE_VOTE` for a
sample whose logits hold a NaN or whose largest logit is not finite (such a vote
counts for no class, so it counts against the top class; a -inf below a finite
maximum, as ``log(softmax)`` gives, is an ordinary vote). Its ``certificate`` attribute says
which radius is sound for it (:class:`~denoised_drs.modes.CertificateKind`),
and ``needs_fresh_noise`` whether the engine must pass an independent standard
normal tensor of the full image shape.

Any ``denoiser`` here is a module mapping noisy images in [0, 1] ``(N, C, H, W)``
to clean estimates of the same shape (e.g.
:class:`denoised_drs.diffusion.OneShotDenoiser`); voters know nothing about how it
works, and it knows nothing about certificates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from denoised_drs.modes import CertificateKind
from denoised_drs.partition import Checkerboard, Partition

NONFINITE_VOTE = -1
"""The vote of a sample whose logits hold a NaN, or whose largest logit is not finite
(+inf, or every logit -inf): a vote for no class."""


def _vote(logits: torch.Tensor) -> torch.Tensor:
    # argmax would pick a NaN (or any +inf) as the winner: such a row votes for nothing.
    # A -inf below a finite maximum is an ordinary logit (log(softmax) underflowing gives
    # it, with the argmax of log_softmax): the row still has one clear winner.
    top = logits.max(dim=1).values  # NaN when the row holds one
    finite = torch.isfinite(top)
    return torch.where(finite, logits.argmax(dim=1), NONFINITE_VOTE)


def _votes(classifiers: Sequence[nn.Module], inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([_vote(clf(part)) for clf, part in zip(classifiers, inputs)], dim=1)


class BranchClassifiers(nn.Module):
    """Classifier ``j`` labels noisy sub-image ``j`` (plain RS, or DRS without a denoiser).

    Each branch is a function of its own sub-image only, so with two branches the
    independent DRS radius is sound.
    """

    needs_fresh_noise = False

    def __init__(self, classifiers: Sequence[nn.Module]) -> None:
        super().__init__()
        if not classifiers:
            raise ValueError("need at least one classifier")
        for classifier in classifiers:
            if not isinstance(classifier, nn.Module):
                raise TypeError(
                    "classifiers must be torch.nn.Module objects, "
                    f"got {type(classifier).__name__}"
                )
        self.classifiers = nn.ModuleList(classifiers)
        self.certificate = (
            CertificateKind.RS if len(classifiers) == 1 else CertificateKind.INDEPENDENT
        )

    def forward(
        self, noisy_parts: Sequence[torch.Tensor], fresh_noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _votes(self.classifiers, noisy_parts)


class DenoisedClassifier(nn.Module):
    """``classifier(denoiser(x))``: Carlini et al.'s diffusion denoised smoothing for RS."""

    def __init__(self, denoiser: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))


class JointDenoisedBranches(nn.Module):
    """The DRS paper's denoising pipeline: merge, denoise once, split, classify each part.

    One denoiser call per noise sample serves every branch. All branches then depend
    on the whole noisy image, so only the coupled radius is sound (two branches:
    ``sigma (z_l + z_r) / 2``). ``classifiers`` are the branches' classifiers, one per
    part of ``partition`` (default: the checkerboard).
    """

    needs_fresh_noise = False
    certificate = CertificateKind.COUPLED

    def __init__(self, denoiser: nn.Module, *classifiers: nn.Module,
                 partition: Partition | None = None) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.classifiers = nn.ModuleList(classifiers)
        self.partition = Checkerboard() if partition is None else partition
        _check_branches(self.partition, len(classifiers))

    def forward(
        self, noisy_parts: Sequence[torch.Tensor], fresh_noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        denoised = self.denoiser(self.partition.merge(noisy_parts))
        return _votes(self.classifiers, self.partition.split(denoised))


class SplitDenoisedBranches(nn.Module):
    """Sound DRS with a denoiser: each branch denoises an image built from its own part.

    Branch ``j`` fills the other parts' positions from its own noisy pixels plus
    fresh independent noise (:meth:`Partition.fill_missing`), so every pixel carries
    noise of the branch's level ``sigma_j``, denoises that image with the denoiser for
    ``sigma_j`` and classifies its own part of the result. Each branch is a function of
    its own sub-image (and of fresh noise at the positions of the other parts, which
    no other branch reads), so the independent radius holds, each branch at its own
    sigma.

    ``classifiers`` are one per part of ``partition`` (default: the checkerboard);
    ``sigma`` is one level for every branch or one per branch; ``denoiser`` one module
    or one per branch (each for its branch's sigma, e.g.
    :meth:`~denoised_drs.diffusion.OneShotDenoiser.at_sigma`). When all branches use the
    same denoiser they share one batched call of ``k N`` images.
    """

    needs_fresh_noise = True
    certificate = CertificateKind.INDEPENDENT

    def __init__(
        self,
        denoiser: nn.Module | Sequence[nn.Module],
        *classifiers: nn.Module,
        sigma: float | Sequence[float],
        partition: Partition | None = None,
    ) -> None:
        super().__init__()
        self.partition = Checkerboard() if partition is None else partition
        k = len(classifiers)
        _check_branches(self.partition, k)
        denoisers = [denoiser] * k if isinstance(denoiser, nn.Module) else list(denoiser)
        sigmas = [sigma] * k if isinstance(sigma, (int, float)) else list(sigma)
        if len(denoisers) != k or len(sigmas) != k:
            raise ValueError(
                f"split denoising has {k} branches: got {len(denoisers)} denoisers "
                f"and {len(sigmas)} sigmas"
            )
        if len({id(d) for d in denoisers}) == 1 and len(set(sigmas)) > 1:
            raise ValueError(
                "several sigmas need one denoiser per branch, each for its branch's sigma "
                "(e.g. OneShotDenoiser.at_sigma)"
            )
        self.denoisers = nn.ModuleList(denoisers)
        self.classifiers = nn.ModuleList(classifiers)
        self.sigmas = tuple(float(s) for s in sigmas)

    def prepare(self, images: torch.Tensor) -> None:
        """Compute, for images shaped, typed and placed as ``images`` (N, C, H, W), what
        the fill of every branch depends on (:meth:`Partition.fill_plan`), so that a
        compiled step finds it and traces no data-dependent branch."""
        for j, part in enumerate(self.partition.split(images[:1])):
            self.partition.fill_plan(j, part)

    def forward(
        self, noisy_parts: Sequence[torch.Tensor], fresh_noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        if fresh_noise is None:
            raise ValueError("split denoising needs fresh noise for the missing pixels")
        # In float32 whatever autocast the step runs under: the fill's noise top-up
        # matches each missing pixel's variance to sigma**2 exactly only at full precision.
        with torch.autocast(fresh_noise.device.type, enabled=False):
            filled = [
                self.partition.fill_missing(j, part, sigma, fresh_noise)
                for j, (part, sigma) in enumerate(zip(noisy_parts, self.sigmas))
            ]
        if all(d is self.denoisers[0] for d in self.denoisers):
            denoised = self.denoisers[0](torch.cat(filled)).chunk(len(filled))
        else:
            denoised = [denoiser(image) for denoiser, image in zip(self.denoisers, filled)]
        own_parts = [self.partition.split(image)[j] for j, image in enumerate(denoised)]
        return _votes(self.classifiers, own_parts)


def _check_branches(partition: Partition, count: int) -> None:
    if count != partition.num_parts:
        raise ValueError(
            f"the {partition.name} partition has {partition.num_parts} parts: give one "
            f"classifier per part, got {count}"
        )


__all__ = [
    "NONFINITE_VOTE",
    "BranchClassifiers",
    "DenoisedClassifier",
    "JointDenoisedBranches",
    "SplitDenoisedBranches",
]
