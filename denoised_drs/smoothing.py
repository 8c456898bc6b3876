"""The sampling engine: seeded noise, batching, vote counting, PREDICT and CERTIFY.

:class:`SmoothedClassifier` is the general engine. An image is cut into sub-images
by a :class:`~denoised_drs.partition.Partition`; each sub-image gets its own
Gaussian noise ``N(0, sigma_j^2)``; a *voter* maps the noisy sub-images of a batch
to one predicted class per branch; the engine counts votes on the device and turns
them into a certificate with :mod:`denoised_drs.bounds`.

:class:`Smooth` is Cohen et al.'s smoothed classifier (one branch, the whole image)
and :class:`DualSmooth` the Dual Randomized Smoothing classifier of Xia et al.
(2024): ``g(x) = argmax_c [P(f_l(x_l + e_l) = c) + P(f_r(x_r + e_r) = c)]``.

Guarantees (``certify``): with probability at least ``1 - alpha`` over the
sampling, if the returned prediction is not -1 then the smoothed classifier ``g``
predicts it at every point within the returned l2 radius of ``x``. The top class is
selected from ``n0`` samples and its probability bounded from ``n`` fresh ones
(Cohen's CERTIFY); with k branches, each branch's Clopper-Pearson bound is taken
at ``alpha / k`` so all hold at once. The radius formula is the scheme's
(:class:`~denoised_drs.scheme.Scheme`: a partition and its certificate rule), which
follows the branches' dependence: independent branches get the sound k-way radius
(Eq. 13 of the DRS paper for two), branches that all see the whole noisy image (joint
denoising) the coupled radius, and the paper's formula for them is reported only as
``radius_paper``.

Reproducibility: the noise of sample ``i`` depends only on the seed key, the stage
(selection, estimation, prediction) and ``i``, never on the batch size, thread count
or process count. Within one certificate every noise block (selection, estimation,
each branch, fresh noise) has a generator seed of its own, by construction (see
:mod:`denoised_drs.noise`). Every module of the voter runs in eval mode while
sampling (each module's own mode is restored after, even on an error), so
BatchNorm statistics are neither used per batch nor rewritten, and Dropout is off.

Input and output checks: an image must be a float tensor ``(C, H, W)`` with finite
values in [0, 1] (the unit the radius is in), on a device that holds values (not
``meta``), else ValueError; a seed must be integers (:func:`as_integer`), else
TypeError; sample counts are at most
:data:`~denoised_drs.certificate.MAX_SAMPLES` per stage. The voter must
return integer class indices of shape ``(N, num_branches)``; a vote outside
``[0, num_classes)`` is refused, except
:data:`~denoised_drs.voters.NONFINITE_VOTE` (a sample whose logits held a NaN or had
no finite maximum),
which is counted for no class: it never wins a prediction and counts against the
top class in a certificate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import ClassVar

import numpy as np
import torch
from scipy.stats import binomtest
from torch import nn

from denoised_drs.adaptive import certify_adaptive, certify_at_looks
from denoised_drs.certificate import (
    ABSTAIN,
    ESTIMATION,
    MAX_SAMPLES,
    PREDICTION,
    Certificate,
    check_counts,
)
from denoised_drs.errors import first_line
from denoised_drs.modes import CertificateKind
from denoised_drs.noise import NoiseStream, derive_seed
from denoised_drs.partition import Checkerboard, Identity, Partition
from denoised_drs.scheme import Scheme, rule_for
from denoised_drs.vote_step import VoteStep, is_compile_error
from denoised_drs.voters import BranchClassifiers

_BRANCH_CHOICE_PURPOSE = 1000


def _describe(value: object) -> str:
    """``value`` in a few words on one line, for an error message."""
    if isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim > 0:
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{' '.join(repr(value).split())[:80]} ({type(value).__name__})"


def as_integer(value: object, name: str) -> int:
    """``value`` as a Python int, when it is an integer: a Python int or a numpy or torch
    integer scalar (or a 0-dimensional integer array or tensor).

    Raises TypeError, naming ``name``, for anything else, a bool, a float (even 3.0), a
    string or a tensor of several values included: truncating a label of 9.7 to 9, or
    reading "3" as 3, would certify something the caller did not ask for.
    """
    if isinstance(value, torch.Tensor):
        exact = (value.dim() == 0 and value.dtype != torch.bool
                 and not value.dtype.is_floating_point and not value.dtype.is_complex)
    elif isinstance(value, np.ndarray):
        exact = value.ndim == 0 and np.issubdtype(value.dtype, np.integer)
    else:
        exact = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not exact:
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    return int(value)


def _seed_key(seed: int | Sequence[int]) -> tuple[int, ...]:
    """The noise seed key: ``seed`` (one integer, or a tuple / list of them) as a tuple of
    non-negative Python ints; TypeError for a non-integer, ValueError for a negative one."""
    several = isinstance(seed, (tuple, list)) or (isinstance(seed, np.ndarray) and seed.ndim)
    key = tuple(seed) if several else (seed,)
    key = tuple(as_integer(k, "seed") for k in key)
    if not key or any(k < 0 for k in key):
        raise ValueError(f"seed must be a non-negative integer or a tuple of them, got {seed!r}")
    return key


def _check_image(x: torch.Tensor) -> None:
    """Refuse anything but one float image (C, H, W) with finite values in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected the image as a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError("the image is on the meta device, which holds no pixel values")
    if x.dim() != 3:
        raise ValueError(f"expected one image of shape (C, H, W), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(
            f"images must be float tensors with values in [0, 1], got dtype {x.dtype} "
            "(divide 8-bit images by 255)"
        )
    if x.numel() == 0:
        raise ValueError(f"the image is empty: shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the image holds non-finite pixel values (NaN or Inf)")
    low, high = float(x.min()), float(x.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"pixel values must lie in [0, 1], got values in [{low:g}, {high:g}] "
            "(divide 8-bit images by 255)"
        )


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule of ``module`` in eval mode; each one's own flag restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class SmoothedClassifier:
    """A smoothed classifier over any partition and voter (the sampling engine).

    Args:
        voter: module called as ``voter(noisy_parts, fresh_noise)`` on a batch, where
            ``noisy_parts[j]`` has the shape of ``partition.split`` part ``j`` with a
            leading batch dimension; returns ``(N, num_branches)`` class indices. If
            ``voter.needs_fresh_noise`` is true it also receives an independent
            standard normal tensor of the full image shape ``(N, C, H, W)``.
        partition: how images become sub-images (one branch per part).
        num_classes: number of classes the voter can output.
        sigmas: noise level of each part, in [0, 1] pixel units.
        kind: which certificate is sound for this voter; defaults to the voter's
            own ``certificate`` attribute. Asking for a stronger certificate than the
            voter declares (independent for a coupled voter) is refused.
        device: where noise is drawn and votes are counted; defaults to the device
            of the voter's first parameter (CPU if it has none).
        autocast_dtype: None computes in float32; torch.bfloat16 / torch.float16 run
            the whole voter (denoiser and classifiers) under ``torch.autocast``.
        compile_mode: None runs each batch eagerly; a ``torch.compile`` mode
            (:data:`~denoised_drs.modes.COMPILE_MODES`) compiles the per-batch step
            into one graph per batch shape and pads short batches to a few static
            shapes (:class:`~denoised_drs.vote_step.VoteStep`).
    """

    ABSTAIN: ClassVar[int] = ABSTAIN
    """The prediction of an abstain (the module's ``ABSTAIN``), named as in Cohen's ``Smooth``."""

    def __init__(
        self,
        voter: nn.Module,
        partition: Partition,
        num_classes: int,
        sigmas: Sequence[float],
        kind: CertificateKind | str | None = None,
        device: torch.device | str | None = None,
        *,
        autocast_dtype: torch.dtype | None = None,
        compile_mode: str | None = None,
    ) -> None:
        declared = getattr(voter, "certificate", None)
        if kind is None:
            if declared is None:
                raise ValueError("the voter declares no certificate kind; pass kind=")
            kind = declared
        if declared is not None and CertificateKind(declared) is CertificateKind.COUPLED:
            if CertificateKind(kind) is not CertificateKind.COUPLED:
                raise ValueError(
                    "this voter couples the branches (each sees the whole image): only the "
                    "coupled radius is sound for it"
                )
        self.voter = voter
        self.num_classes = int(num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.scheme = Scheme(partition, rule_for(kind), sigmas)
        if device is None:
            first = next(iter(voter.parameters()), None)
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)
        self.step = VoteStep(voter, partition, self.sigmas, self.num_classes, autocast_dtype,
                             compile_mode)

    @property
    def partition(self) -> Partition:
        return self.scheme.partition

    @property
    def sigmas(self) -> tuple[float, ...]:
        return self.scheme.sigmas

    @property
    def kind(self) -> CertificateKind:
        """The certificate's rule, by name (rs, independent or coupled)."""
        return self.scheme.kind

    @property
    def num_branches(self) -> int:
        return self.scheme.num_parts

    def sample_counts(
        self,
        x: torch.Tensor,
        num: int,
        batch_size: int,
        seed: int | Sequence[int] = 0,
        stage: int = ESTIMATION,
        mix_branches: bool = False,
        start: int = 0,
    ) -> np.ndarray:
        """Votes of each branch over ``num`` noisy copies of ``x``: ``(num_branches, num_classes)``.

        The copies are samples ``start .. start + num - 1`` of the stage's noise
        stream, so consecutive calls with growing ``start`` draw fresh samples.

        With ``mix_branches``, each sample contributes the vote of one branch drawn
        uniformly at random, so the result is ``(1, num_classes)`` counts of ``num``
        independent draws from the average of the branch distributions.

        Non-finite votes are counted in no class, so ``num - counts.sum(axis=1)`` is
        their number per row. Raises ValueError for an image that is not float in
        [0, 1] (or holds NaN/Inf), malformed voter output, or a class index outside
        ``[0, num_classes)``. The voter's modules run in eval mode (see the module
        docstring).
        """
        _check_image(x)
        if num < 1 or batch_size < 1:
            raise ValueError(f"num and batch_size must be positive, got {num}, {batch_size}")
        if num > MAX_SAMPLES:
            raise ValueError(f"num must be at most {MAX_SAMPLES:,} samples, got {num}")
        if start < 0:
            raise ValueError(f"start must be non-negative, got {start}")
        key = _seed_key(seed)
        x = x.to(self.device, torch.float32)
        clean_parts = self.partition.split(x.unsqueeze(0))
        noise = NoiseStream(key, 2 * stage, x.shape, self.device)
        fresh = None
        if getattr(self.voter, "needs_fresh_noise", False):
            fresh = NoiseStream(key, 2 * stage + 1, x.shape, self.device)
        step = self.step
        # A compiled step pads a short batch to one of a few static shapes; an eager one
        # takes the samples there are. Padding rows are zeros, or an earlier batch's noise.
        size = step.padded_size(min(batch_size, num), batch_size)
        choices = None
        if mix_branches and self.num_branches > 1:
            rng = np.random.default_rng(derive_seed(*key, stage, _BRANCH_CHOICE_PURPOSE))
            drawn = rng.integers(self.num_branches, size=start + num)[start:]
            # Branch 0 for the padding rows a compiled step's last batch may have.
            choices = torch.from_numpy(np.pad(drawn, (0, size))).to(self.device)
        rows = 1 if choices is not None else self.num_branches
        buffer = torch.zeros((size, *x.shape), device=self.device)
        fresh_buffer = torch.zeros_like(buffer) if fresh is not None else None
        # One bin per (row, class) and a last bin that is dropped. Votes are counted
        # with a fixed-size scatter_add_, not torch.bincount, which reads the votes'
        # maximum back to the host on CUDA: the loop makes no host-device sync, the
        # counts are read back once, after it. An out-of-range vote of one branch would
        # land in another branch's row: count them apart and refuse. Non-finite votes
        # go to the dropped bin with them, but are not refused.
        counts = torch.zeros(rows * self.num_classes + 1, dtype=torch.int64, device=self.device)
        out_of_range = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.inference_mode(), _eval_mode(self.voter):
            for first in range(0, num, batch_size):
                last = min(num, first + batch_size)
                padded = step.padded_size(last - first, batch_size)
                noise.take(start + first, start + last, out=buffer)
                fresh_noise = None
                if fresh is not None:
                    fresh.take(start + first, start + last, out=fresh_buffer)
                    fresh_noise = fresh_buffer[:padded]
                batch_choices = None if choices is None else choices[first : first + padded]
                try:
                    batch_counts, misnamed = step(clean_parts, buffer[:padded], fresh_noise,
                                                  batch_choices, last - first)
                # torch.cuda's name of the class: torch.OutOfMemoryError is the same
                # class, but only from torch 2.5 on (setup.cfg allows 2.1).
                except torch.cuda.OutOfMemoryError:
                    raise
                except RuntimeError as error:
                    if is_compile_error(error):
                        raise RuntimeError(
                            f"torch.compile failed on the sampling step ({first_line(error)}); "
                            "certify without it (compile=False, --no-compile)"
                        ) from error
                    # A shape or dtype the networks cannot take is bad input, not a bug.
                    raise ValueError(
                        f"images of shape {tuple(x.shape)} do not fit the models: "
                        f"{first_line(error)}"
                    ) from error
                counts += batch_counts
                out_of_range += misnamed
        # One read back from the device: the counts and, in the dropped bin's place, the
        # number of out-of-range votes.
        counts[-1] = out_of_range
        read = counts.cpu().numpy()
        counts, out_of_range = read[:-1].reshape(rows, self.num_classes), int(read[-1])
        if out_of_range:
            raise ValueError(
                f"the classifiers returned class indices outside [0, {self.num_classes}); "
                "check num_classes"
            )
        return counts

    def predict(
        self,
        x: torch.Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        seed: int | Sequence[int] = 0,
    ) -> int:
        """Cohen's PREDICT: the smoothed class, or -1 (abstain).

        With probability at least ``1 - alpha`` the returned class, if not -1, is the
        prediction of ``g(x)``. The two most frequent classes among ``n`` votes are
        compared by a two-sided binomial test. With several branches each vote comes
        from one branch drawn uniformly at random, so the votes are independent
        draws from ``(p_l + p_r) / 2``, whose argmax is exactly the DRS prediction;
        this keeps Cohen's test exact for coupled and independent branches alike.
        Non-finite votes (:data:`~denoised_drs.voters.NONFINITE_VOTE`) count for no class
        (all of them: abstain).
        """
        check_counts(None, n, alpha, batch_size)
        counts = self.sample_counts(x, n, batch_size, seed, PREDICTION, mix_branches=True)[0]
        order = np.argsort(counts, kind="stable")[::-1]
        count_a, count_b = int(counts[order[0]]), int(counts[order[1]])
        if count_a == 0 or binomtest(count_a, count_a + count_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(order[0])

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        seed: int | Sequence[int] = 0,
    ) -> Certificate:
        """Cohen's CERTIFY, generalised to k branches (the DRS paper's Algorithm 1, alpha
        split): adaptive certification with one look
        (:func:`~denoised_drs.adaptive.certify_at_looks`).

        Selects the top class from the summed votes of ``n0`` samples, counts it
        in ``n`` fresh samples per branch, bounds each branch's probability at
        ``alpha / num_branches`` and applies the abstain rule and radius of the
        scheme's rule. See the module docstring for the guarantee. Non-finite
        votes (:data:`~denoised_drs.voters.NONFINITE_VOTE`) count for no class; their
        total is ``nonfinite``.
        """
        check_counts(n0, n, alpha, batch_size)
        return certify_at_looks(self, x, n0, (n,), alpha, (alpha,), batch_size, seed)

    def certify_adaptive(
        self,
        x: torch.Tensor,
        n0: int,
        n_max: int,
        alpha: float,
        batch_size: int,
        seed: int | Sequence[int] = 0,
        radii: Sequence[float] | None = None,
        tolerance: float | None = None,
    ) -> Certificate:
        """CERTIFY with early stopping, sound at the same ``alpha``; see
        :mod:`denoised_drs.adaptive`.

        Draws at most ``n_max`` estimation samples (``Certificate.n_used`` says how
        many). With ``radii`` (ascending) the radius is the largest target certified;
        without, sampling stops once more samples are unlikely to add more than
        ``tolerance`` of radius (default 0.05 times the largest sigma).
        """
        return certify_adaptive(self, x, n0, n_max, alpha, batch_size, seed, radii, tolerance)


class Smooth(SmoothedClassifier):
    """Cohen et al.'s smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)``,
    ``e ~ N(0, sigma^2 I)``.

    ``base_classifier`` maps a batch ``(N, C, H, W)`` in [0, 1] pixel space (plus
    noise) to logits ``(N, num_classes)``.
    """

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        sigma: float,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            BranchClassifiers([base_classifier]),
            Identity(),
            num_classes,
            (sigma,),
            CertificateKind.RS,
            device,
        )
        self.base_classifier = base_classifier
        self.sigma = float(sigma)


class DualSmooth(SmoothedClassifier):
    """Dual Randomized Smoothing (Xia et al. 2024) with independent branches.

    The image is split by the checkerboard partition; ``base_l`` sees
    ``x_l + e_l`` and ``base_r`` sees ``x_r + e_r``, each of shape
    ``(N, C, H, W / 2)``, with ``e_l ~ N(0, sigma^2)`` and ``e_r ~ N(0, sigma_r^2)``
    (``sigma_r`` defaults to ``sigma``). Since each branch depends on its own
    sub-image only, the certified radius is
    ``(z_l + z_r) / sqrt(sigma^-2 + sigma_r^-2)``.
    """

    def __init__(
        self,
        base_l: nn.Module,
        base_r: nn.Module,
        num_classes: int,
        sigma: float,
        sigma_r: float | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        sigma_r = sigma if sigma_r is None else sigma_r
        super().__init__(
            BranchClassifiers([base_l, base_r]),
            Checkerboard(),
            num_classes,
            (sigma, sigma_r),
            CertificateKind.INDEPENDENT,
            device,
        )
        self.base_l, self.base_r = base_l, base_r
        self.sigma, self.sigma_r = float(sigma), float(sigma_r)


__all__ = [
    "ABSTAIN",
    "Certificate",
    "DualSmooth",
    "Smooth",
    "SmoothedClassifier",
    "as_integer",
]
