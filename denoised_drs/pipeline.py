"""`Pipeline`: partition, noise, optional denoiser, classifiers and certifier in one object.

    from denoised_drs import Pipeline

    pipe = Pipeline(mode="drs", classifier_l="l.pt", classifier_r="r.pt", sigma=0.18,
                    n=10_000)
    records = pipe.certify(images, labels, indices)

The configuration is a :class:`~denoised_drs.pipeline_config.PipelineConfig`
(keyword arguments, or a JSON / YAML file; its module says which certificate each
configuration earns); :meth:`Pipeline.save_config` writes it beside a result so the
run can be repeated exactly. Models are built by their own loaders
(:func:`~denoised_drs.models.load_ensemble`,
:meth:`~denoised_drs.diffusion.OneShotDenoiser.from_pretrained`); this module only
composes them.

The result for an image depends only on the seed and the image's index.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from denoised_drs.atomic_file import atomic_write
from denoised_drs.batch_memory import (
    BatchChoice,
    available_bytes,
    check_batch_fits,
    choose_batch,
    peak_bytes_per_sample,
)
from denoised_drs.checkpoint_file import load_weights_only
from denoised_drs.errors import first_line
from denoised_drs.modes import Denoise
from denoised_drs.noise import BLOCK_SIZE
from denoised_drs.partition import Partition, get_partition
from denoised_drs.pipeline_config import AUTO_BATCH, AUTOCAST, CPU_AUTO_BATCH, PipelineConfig
from denoised_drs.results import CertifyRecord
from denoised_drs.scheme import branch_names
from denoised_drs.smoothing import SmoothedClassifier, as_integer
from denoised_drs.vote_step import VoteStep
from denoised_drs.voters import (
    BranchClassifiers,
    DenoisedClassifier,
    JointDenoisedBranches,
    SplitDenoisedBranches,
)


def configure_cuda_backends(device: torch.device) -> None:
    """On CUDA, the backend settings the engine's fixed-shape batches want: cuDNN's
    autotuner on (each batch shape is tuned once; the last, shorter batch of a look
    once more) and TF32 for float32 matmuls and convolutions (about 2x the float32
    matmul rate on A100/H100/H200).

    TF32 rounds matmul inputs to 10 mantissa bits, so float32 logits differ slightly
    from full-precision ones: the votes are those of a slightly different base
    classifier, and the certificate is as sound for it as for any other. Each session
    records these flags in ``OUT.config.json`` (``sessions``:
    ``float32_matmul_precision``, ``tf32_matmul``, ``tf32_cudnn``). The settings are
    process-wide (torch has no other kind); nothing changes on a CPU.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _compile_mode(config: PipelineConfig, device: torch.device) -> str | None:
    """The ``torch.compile`` mode of the engine's step, or None (eager): ``compile``
    None means on for CUDA, off elsewhere; ValueError where dynamo cannot run."""
    compiled = device.type == "cuda" if config.compile is None else config.compile
    if not compiled:
        return None
    from torch._dynamo import is_dynamo_supported

    if not is_dynamo_supported():
        if config.compile is None:
            return None
        raise ValueError("compile: torch.compile does not support this Python and torch")
    return config.compile_mode or "default"


def _resolve_device(name: str | None) -> torch.device:
    """``name`` as a torch device (default: CUDA when available), or a one-line ValueError."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def _image_index(idx: object) -> int:
    """An image's index (it seeds the image's noise) as a non-negative Python int:
    TypeError for a non-integer (1.5 must not become 1), ValueError for a negative one."""
    index = as_integer(idx, "image index")
    if index < 0:
        raise ValueError(f"image index must be non-negative, got {index}")
    return index


@dataclass(frozen=True)
class PredictRecord:
    idx: int
    predict: int
    time: float


IN_MEMORY = "<in-memory>"
"""What a :class:`PipelineConfig` records in place of a model given as an ``nn.Module``."""
CLASSIFIER_ALIASES = {"classifier": 0, "classifier_l": 0, "classifier_r": 1}
"""The classifier fields that name a part's ensemble: RS's one part, the two DRS parts."""


def _is_modules(value: Any) -> bool:
    if isinstance(value, nn.Module):
        return True
    return (
        isinstance(value, (list, tuple))
        and bool(value)
        and all(isinstance(v, nn.Module) for v in value)
    )


def _check_trained_part(path: str, spec: Any, part: int, partition: Partition) -> None:
    """Refuse a branch checkpoint trained on a part of another shape than the part it
    would classify here (a polyphase-2x2 part is 14 x 14, a diagonal-4 part 28 x 7)."""
    if spec.branch == "full":
        return
    from denoised_drs.partition import part_shape

    trained_partition, index = spec.part()
    image = (spec.in_channels, *spec.input_size)
    trained = part_shape(trained_partition, index, image)
    here = part_shape(partition, part, image)
    if trained != here:
        raise ValueError(
            f"{path} was trained on part {spec.branch} of the {trained_partition.name} "
            f"partition ({trained[0]} x {trained[1]} sub-images); part {part + 1} of "
            f"{partition.name} is {here[0]} x {here[1]}"
        )


class Pipeline:
    """Compose the stages of a certification run from a :class:`PipelineConfig`.

    Models are loaded once, at construction, onto ``config.device`` (default: CUDA
    when available, else CPU). Raises FileNotFoundError for a missing checkpoint
    and ValueError for an impossible setting, before any work is done.

    Classifiers come one ensemble per part of the partition: ``branches`` (one entry per
    part, in part order), or the aliases ``classifier`` (RS) and ``classifier_l`` /
    ``classifier_r`` (two parts). Each entry, and ``denoiser``, may also be a model in
    memory (an ``nn.Module``, or for a classifier a list of them, an ensemble). A
    classifier module maps images in [0, 1] to logits; it is
    resized to ``classifier_size`` (DRS sub-images: to the full image's shape when
    None) and normalised by ``mean`` / ``std`` when given; its number of classes is
    ``num_classes`` or its own ``num_classes`` attribute. A denoiser module maps noisy
    images in [0, 1] to denoised ones of the same shape (e.g. a :class:`OneShotDenoiser`
    for the same sigma; a bare diffusion network such as a diffusers ``UNet2DModel`` is
    refused when the pipeline is built, since it does not say its schedule: wrap it as
    ``OneShotDenoiser(unet, scheduler, sigma)``); ``denoiser_chunk`` does not apply to
    it, and its weights stay in the dtype they are in (``autocast`` runs the whole step,
    it included, under ``torch.autocast``; ``compile`` compiles the whole step).
    The configuration records them as ``"<in-memory>"``, so such a pipeline cannot be
    saved (:meth:`save_config` raises ValueError, and so does the resumable runner).
    """

    def __init__(self, config: PipelineConfig | None = None, **overrides: Any) -> None:
        modules: dict[str, Any] = {}
        self.part_modules: dict[int, Any] = {}
        for name, part in CLASSIFIER_ALIASES.items():
            if _is_modules(overrides.get(name)):
                modules[name] = self.part_modules[part] = overrides[name]
                overrides[name] = IN_MEMORY
        if isinstance(overrides.get("branches"), (list, tuple)):
            branches = list(overrides["branches"])
            for part, entry in enumerate(branches):
                if _is_modules(entry):
                    modules[f"branch {part + 1}"] = self.part_modules[part] = entry
                    branches[part] = IN_MEMORY
            overrides["branches"] = branches
        if _is_modules(overrides.get("denoiser")):
            modules["denoiser"] = overrides["denoiser"]
            overrides["denoiser"] = IN_MEMORY
        if config is None:
            config = PipelineConfig.from_dict(overrides)
        elif overrides:
            config = PipelineConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        self.device = _resolve_device(config.device)
        configure_cuda_backends(self.device)
        if config.autocast is not None:
            from denoised_drs.diffusion import check_autocast_device, cpu_has_native_bf16

            # Refused up front: fp16 on a CPU runs about 50x slower than float32.
            check_autocast_device(AUTOCAST[config.autocast], self.device)
            if self.device.type == "cpu" and not cpu_has_native_bf16():
                warnings.warn(
                    "this CPU has no native bf16 (AVX-512 BF16 or AMX): autocast bf16 is "
                    "emulated here and several times slower than float32", stacklevel=2)
        self.modules = modules
        self.compile_mode = _compile_mode(config, self.device)
        self.batch: int | None = None if config.batch == AUTO_BATCH else config.batch
        # How batch="auto" was resolved: the measurement on CUDA, a sentence on a CPU.
        self.batch_choice: BatchChoice | None = None
        self.batch_note: str | None = None
        self.denoiser = self._load_denoiser()
        self.smoothed = self._build_smoothed()

    @property
    def in_memory(self) -> list[str]:
        """The model fields given as in-memory modules (their configuration cannot reload)."""
        return sorted(self.modules)

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> Pipeline:
        return cls(PipelineConfig.from_file(path), **overrides)

    def save_config(self, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
        """Write the configuration (plus ``extra``, e.g. the dataset) as JSON, atomically.

        Raises ValueError for a pipeline built from in-memory models: a configuration
        naming ``"<in-memory>"`` could neither be reloaded nor guard a resumed result.
        """
        if self.modules:
            raise ValueError(
                f"this pipeline's {', '.join(self.in_memory)} are in-memory models, so its "
                "configuration cannot be saved; save them as checkpoint files and pass their paths"
            )
        with atomic_write(path, "w") as stream:
            stream.write(json.dumps({**self.config.to_dict(), **(extra or {})}, indent=2) + "\n")

    # -- construction ------------------------------------------------------------

    def _classifier(self, part: int, branch: str | None,
                    partition: Partition) -> tuple[nn.Module, int]:
        """The (ensemble) classifier of part ``part`` and its number of classes; ``branch``
        is its name (None for RS's whole image).

        Each path is a checkpoint file or a transformers classifier folder; ``config.arch``
        is one architecture for all of them or a list of one per path (for several parts
        the same list serves each part's ensemble).
        """
        from denoised_drs.models import (
            load_ensemble,
            member_archs,
            prepare_for_inference,
            read_classifier_spec,
        )

        if part in self.part_modules:
            return self._module_classifier(self.part_modules[part], branch, partition)
        config = self.config
        paths = config.part_classifiers()[part]
        for path in paths:
            if path == IN_MEMORY:
                raise ValueError(
                    f"the classifier of part {part + 1} is {IN_MEMORY!r}: pass the nn.Module "
                    "itself"
                )
            if not Path(path).exists():
                raise FileNotFoundError(f"classifier checkpoint not found: {path}")
        archs = member_archs(config.arch, len(paths))
        options = {
            "dataset": config.dataset,
            "num_classes": config.num_classes,
            "interpolation": config.interpolation,
        }
        # Each file is read once: its content serves the class check and the loading
        # (a folder is read by transformers when loaded).
        checkpoints = [None if Path(p).is_dir() else load_weights_only(p) for p in paths]
        specs = [read_classifier_spec(p, c, arch=a, **options)
                 for p, c, a in zip(paths, checkpoints, archs)]
        if branch is not None:
            for path, spec in zip(paths, specs):
                _check_trained_part(path, spec, part, partition)
        classes = {spec.num_classes for spec in specs}
        if len(classes) != 1:
            raise ValueError(
                f"the classifiers {paths} disagree on the number of classes: {sorted(classes)}"
            )
        model = load_ensemble(
            paths, arch=archs, checkpoints=checkpoints, branch=branch,
            partition=None if branch is None else partition.name, device=self.device,
            classifier_size=config.classifier_size, mean=config.mean, std=config.std, **options,
        )
        return prepare_for_inference(model, self.device), classes.pop()

    def _module_classifier(self, given: nn.Module | Sequence[nn.Module], branch: str | None,
                           partition: Partition) -> tuple[nn.Module, int]:
        """In-memory classifier(s), resized and normalised as the configuration says."""
        from denoised_drs.models import (
            EnsembleClassifier,
            NormalizedClassifier,
            ResizedClassifier,
            prepare_for_inference,
        )

        config = self.config
        members = [given] if isinstance(given, nn.Module) else list(given)
        classes = {config.num_classes or getattr(m, "num_classes", None) for m in members}
        if None in classes:
            raise ValueError(
                "an in-memory classifier needs num_classes (or a num_classes attribute)"
            )
        if len(classes) != 1:
            raise ValueError(
                "the in-memory classifiers disagree on the number of classes: "
                f"{sorted(classes)}"
            )
        size = None if config.classifier_size is None else (config.classifier_size,) * 2
        wrapped = []
        for member in members:
            if config.mean is not None or config.std is not None:
                channels = len(config.mean or config.std or ())
                member = NormalizedClassifier(
                    member, config.mean or [0.0] * channels, config.std or [1.0] * channels
                )
            wrapped.append(
                ResizedClassifier(member, size, config.interpolation or "nearest",
                                  sub_image=partition.scale)
            )
        model = wrapped[0] if len(wrapped) == 1 else EnsembleClassifier(wrapped)
        return prepare_for_inference(model, self.device), classes.pop()

    def _load_denoiser(self) -> nn.Module | None:
        config = self.config
        if config.denoiser is None:
            return None
        if "denoiser" in self.modules:
            return self._module_denoiser(self.modules["denoiser"])
        if config.denoiser == IN_MEMORY:
            raise ValueError(f"denoiser is {IN_MEMORY!r}: pass the nn.Module itself")
        from denoised_drs.diffusion import OneShotDenoiser, read_denoiser_config

        # A flags file describes the checkpoint as a preset would (config.denoiser names it too).
        source = (config.denoiser if config.denoiser_config is None
                  else read_denoiser_config(config.denoiser_config))
        denoiser = OneShotDenoiser.from_pretrained(
            source,
            sigma=config.part_sigmas()[0],
            checkpoint_path=config.denoiser_checkpoint,
            chunk_size=config.denoiser_chunk,
            autocast_dtype=AUTOCAST.get(config.autocast) if config.autocast else None,
        ).to(self.device)
        return denoiser

    def _module_denoiser(self, denoiser: nn.Module | Sequence[nn.Module]) -> nn.Module:
        """An in-memory denoiser, vetted by :func:`~denoised_drs.diffusion.checked_denoiser`
        (a bare diffusion network such as a diffusers ``UNet2DModel`` is refused; any module
        but a OneShotDenoiser must map images to images of their shape). When the
        configuration says the images' shape (``dataset``, ``image_size``) it is checked now;
        otherwise by :meth:`check_image_shape`, and at the latest on the first call."""
        from denoised_drs.data import DATASET_INFO
        from denoised_drs.diffusion import checked_denoiser

        if not isinstance(denoiser, nn.Module):
            raise ValueError("denoiser must be one nn.Module, not a list")
        config = self.config
        module = checked_denoiser(denoiser, config.part_sigmas()[0]).to(self.device).eval()
        if config.dataset is not None:
            channels, height, width = DATASET_INFO[config.dataset].image_shape
            if config.image_size is not None:
                height = width = config.image_size
            module.check_image_shape((channels, height, width))
        return module

    def _denoiser_at(self, sigma: float) -> nn.Module:
        """The denoiser for inputs carrying noise ``sigma`` (the same network)."""
        if sigma == self.config.part_sigmas()[0]:
            return self.denoiser
        at_sigma = getattr(self.denoiser, "at_sigma", None)
        if at_sigma is None:
            raise ValueError(
                "sigma_r needs a denoiser that can be set to another noise level (a "
                "OneShotDenoiser); this in-memory denoiser has no at_sigma"
            )
        return at_sigma(sigma)

    def _build_smoothed(self) -> SmoothedClassifier:
        config = self.config
        partition = get_partition(config.partition or config.mode)
        names = branch_names(partition.num_parts) or (None,)
        built = [self._classifier(j, name, partition) for j, name in enumerate(names)]
        classes = {num_classes for _, num_classes in built}
        if len(classes) != 1:
            raise ValueError(f"the branches disagree on the number of classes: {sorted(classes)}")
        classifiers = [classifier for classifier, _ in built]
        sigmas = config.part_sigmas()
        if self.denoiser is None:
            voter: nn.Module = BranchClassifiers(classifiers)
        elif partition.num_parts == 1:
            voter = BranchClassifiers([DenoisedClassifier(self.denoiser, classifiers[0])])
        elif config.denoise == Denoise.JOINT:
            voter = JointDenoisedBranches(self.denoiser, *classifiers, partition=partition)
        else:
            voter = SplitDenoisedBranches(
                [self._denoiser_at(sigma) for sigma in sigmas], *classifiers,
                sigma=sigmas, partition=partition,
            )
        if self.device.type == "cuda":
            # Tensor cores' native layout; the UNets are channels-last already.
            for classifier in classifiers:
                classifier.to(memory_format=torch.channels_last)
        return SmoothedClassifier(
            voter, partition, classes.pop(), sigmas, device=self.device,
            autocast_dtype=AUTOCAST[config.autocast] if config.autocast else None,
            compile_mode=self.compile_mode,
        )

    # -- running -----------------------------------------------------------------

    def check_image_shape(self, shape: Sequence[int]) -> None:
        """Raise ValueError if images of ``shape`` (C, H, W) cannot go through this pipeline,
        or if a forward pass of ``config.batch`` of them surely exceeds free memory."""
        if len(shape) != 3:
            raise ValueError(f"images must have shape (C, H, W), got {tuple(shape)}")
        self.smoothed.partition.check_image_shape(shape)
        size = self.config.image_size
        if size is not None and tuple(shape[-2:]) != (size, size):
            raise ValueError(f"images of shape {tuple(shape)} are not of image_size {size}")
        # The denoiser says what it takes (a UNet: its channels, sides that are
        # multiples of its downsampling factor); an in-memory module is left to the probe.
        check_denoiser = getattr(self.denoiser, "check_image_shape", None)
        if check_denoiser is not None:
            check_denoiser(tuple(shape))
        probe = torch.zeros((1, *shape), device=self.device)
        parts = self.smoothed.partition.split(probe)
        fresh = probe if getattr(self.smoothed.voter, "needs_fresh_noise", False) else None
        try:
            # The voter itself, eagerly: compiling for this one-image probe would build a
            # graph that certification never uses.
            with torch.inference_mode():
                per_sample = peak_bytes_per_sample(self.smoothed.voter,
                                                   lambda: self.smoothed.voter(parts, fresh))
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"images of shape {tuple(shape)} do not fit the models: {first_line(error)}"
            ) from None
        if self.batch is None:
            self._choose_batch(shape)
        check_batch_fits(min(self.batch, max(self.config.n0, self.config.n)), per_sample,
                         self.device)

    def _choose_batch(self, shape: Sequence[int]) -> None:
        """Resolve ``batch="auto"`` for images of ``shape``: on CUDA the largest batch
        whose step fits in free memory (:func:`~denoised_drs.batch_memory.choose_batch`,
        measured on the eager step; a compiled one may hold more, see
        :meth:`_with_batch_backoff`; printed); on a CPU
        :data:`~denoised_drs.pipeline_config.CPU_AUTO_BATCH`. At most ``max(n0, n)``,
        the samples of the largest stage."""
        cap = max(self.config.n0, self.config.n)
        if self.device.type != "cuda":
            self.batch = min(CPU_AUTO_BATCH, cap)
            self.batch_note = (f"batch {self.batch}: the CPU default {CPU_AUTO_BATCH}, at most "
                               f"max(N0, N) = {cap}")
            return
        image = torch.full(tuple(shape), 0.5, device=self.device)
        smoothed = self.smoothed
        compiled_step = smoothed.step
        smoothed.step = VoteStep(smoothed.voter, smoothed.partition, smoothed.sigmas,
                                 smoothed.num_classes, compiled_step.autocast_dtype)

        def bytes_at(batch: int) -> int:
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            smoothed.sample_counts(image, batch, batch)
            return torch.cuda.max_memory_allocated(self.device) - before

        try:
            choice = choose_batch(bytes_at, available_bytes(self.device) or 0, cap)
        finally:
            smoothed.step = compiled_step
            torch.cuda.empty_cache()
        self.batch, self.batch_choice, self.batch_note = choice.batch, choice, choice.describe()
        print(self.batch_note, file=sys.stderr)

    def _with_batch_backoff(self, run: Callable[[int], Any]) -> Any:
        """``run(self.batch)``; with ``batch="auto"``, an out-of-memory error halves the
        batch (to whole 64-sample noise blocks while it is at least 64) and runs again,
        printing the new batch and keeping it for the rest of the run. The estimate
        ``auto`` chose from is measured on the eager step; a compiled one (or its CUDA
        graphs) may hold more. Results do not depend on the batch: the retry draws the
        same noise and gives the same certificate. A fixed batch is never changed."""
        while True:
            try:
                return run(self.batch)
            except torch.cuda.OutOfMemoryError:
                if self.config.batch != AUTO_BATCH or self.batch <= 1:
                    raise
            smaller = self.batch // 2
            if smaller >= BLOCK_SIZE:
                smaller -= smaller % BLOCK_SIZE
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.batch_note = (f"{self.batch_note}; out of memory at batch {self.batch}, "
                               f"batch {smaller} from then on")
            print(f"out of memory at batch {self.batch}: batch {smaller} from now on "
                  "(results do not depend on it)", file=sys.stderr)
            self.batch = smaller

    def _label(self, label: object, idx: int) -> int:
        """``label`` of image ``idx`` as a class index: see :meth:`certify_one`."""
        label = as_integer(label, "label")
        if not 0 <= label < self.smoothed.num_classes:
            # A label no class can equal would turn every abstention into "correct".
            raise ValueError(
                f"label {label} of image {idx} lies outside [0, {self.smoothed.num_classes})"
            )
        return label

    def certify_one(self, image: torch.Tensor, label: int, idx: int) -> CertifyRecord:
        """Certify one image (adaptively if ``config.adaptive``); noise seeded by
        ``(config.seed, idx)``.

        ``label`` and ``idx`` are integers (Python ints or numpy / torch integer scalars):
        TypeError for anything else (a float, a bool, a string), ValueError for a label
        outside [0, num_classes) or a negative index.
        """
        config = self.config
        idx = _image_index(idx)
        label = self._label(label, idx)
        if self.batch is None:
            self.check_image_shape(tuple(image.shape))
        start = time.perf_counter()
        seed = (config.seed, idx)
        if config.adaptive:
            cert = self._with_batch_backoff(lambda batch: self.smoothed.certify_adaptive(
                image, config.n0, config.n, config.alpha, batch, seed, config.radii,
                config.tolerance,
            ))
        else:
            cert = self._with_batch_backoff(lambda batch: self.smoothed.certify(
                image, config.n0, config.n, config.alpha, batch, seed=seed))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return CertifyRecord.from_certificate(idx, label, cert, time.perf_counter() - start)

    def certify(
        self,
        images: torch.Tensor | Sequence[torch.Tensor],
        labels: Sequence[int],
        indices: Sequence[int] | None = None,
    ) -> list[CertifyRecord]:
        """Certify each image; ``indices`` (default 0, 1, ...) seed their noise. Labels
        and indices are checked as in :meth:`certify_one`."""
        indices = list(range(len(labels))) if indices is None else list(indices)
        if not len(images) == len(labels) == len(indices):
            raise ValueError(
                "need as many images, labels and indices, "
                f"got {len(images)}, {len(labels)}, {len(indices)}"
            )
        # Every label and index is checked before the first image is certified, so a
        # bad one late in the list does not end the call after hours of work.
        indices = [_image_index(i) for i in indices]
        labels = [self._label(y, i) for y, i in zip(labels, indices)]
        return [self.certify_one(x, y, i) for x, y, i in zip(images, labels, indices)]

    def predict(
        self, images: torch.Tensor | Sequence[torch.Tensor], indices: Sequence[int] | None = None
    ) -> list[PredictRecord]:
        """Cohen's PREDICT for each image with ``n`` samples (-1 = abstain); ``indices``
        (default 0, 1, ...) seed their noise and are checked as in :meth:`certify_one`."""
        config = self.config
        indices = list(range(len(images))) if indices is None else list(indices)
        if len(images) != len(indices):
            raise ValueError(
                f"need as many images and indices, got {len(images)}, {len(indices)}"
            )
        indices = [_image_index(i) for i in indices]  # all checked before any work
        records = []
        for x, idx in zip(images, indices):
            if self.batch is None:
                self.check_image_shape(tuple(x.shape))
            start = time.perf_counter()
            prediction = self._with_batch_backoff(functools.partial(
                self.smoothed.predict, x, config.n, config.alpha, seed=(config.seed, idx)))
            records.append(PredictRecord(idx, prediction, time.perf_counter() - start))
        return records


__all__ = ["IN_MEMORY", "CertifyRecord", "Pipeline", "PredictRecord"]
