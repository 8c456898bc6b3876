"""The training loop: Accelerate, per-epoch evaluation, CSV log, atomic checkpoints, resume.

Runs the same under ``python`` (one device or the CPU) and ``accelerate launch``
(several GPUs, data parallel). After every epoch the main process writes

* the classifier checkpoint (our format, :func:`denoised_drs.models.save_classifier`)
  at ``config.out_path(branch)``, recording the branch (``full``; ``l`` / ``r``; a
  part number) and the partition (empty for the target's own, as before partitions
  were recorded): :func:`denoised_drs.models.load_classifier` gives the classifier of
  whole images, or of that part's sub-images of exactly the part's shape;
* the resume state (weights, optimizer, RNG, log rows) at ``<checkpoint>.state.pt``,
  removed after the last epoch unless ``keep_state``;
* the CSV log: epoch, lr, train_loss, test_clean_acc, test_noisy_acc, epoch_time_s.

Every file is written to a temporary name and renamed, so none is ever half-written.
Nothing non-finite is started from or saved: an ``init`` checkpoint or resume state
holding a NaN or an infinity is refused, and an epoch whose mean loss, weights or
optimizer state is not finite ends the run with :class:`TrainingDiverged` before any
file of that epoch is written (the files of earlier epochs stay, recording fewer
``epochs_done`` than ``epochs``).
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..atomic_file import atomic_write
from ..checkpoint_file import load_state_dict, load_weights_only, with_content_hash
from ..data import get_dataset
from ..errors import check_distinct_outputs, check_output_file, first_line
from ..models import (
    ClassifierSpec,
    SubImageClassifier,
    create_model,
    is_own_checkpoint,
    load_weights,
    read_classifier_spec,
    save_classifier,
)
from ..partition import Partition
from .config import TrainConfig, branch_input
from .divergence import TrainingDiverged, check_finite_weights, non_finite_tensor
from .strategies import SmoothAdv, make_strategy

LOG_COLUMNS = ("epoch", "lr", "train_loss", "test_clean_acc", "test_noisy_acc", "epoch_time_s")


def state_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".state.pt")


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole CSV log atomically (a resumed run never duplicates rows)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w") as stream:
        stream.write(buffer.getvalue())


def _limit(dataset: Dataset, count: int | None) -> Dataset:
    # The first `count` items: Fashion-MNIST and CIFAR-10 are stored in shuffled order.
    if count is None or count >= len(dataset):
        return dataset
    return Subset(dataset, range(count))


def build_spec(config: TrainConfig, branch: str) -> ClassifierSpec:
    """The classifier spec of one branch; an ``init`` checkpoint of ours fixes arch and
    normalisation."""
    spec = ClassifierSpec.for_dataset(
        config.arch,
        config.dataset,
        branch=branch,
        partition=config.partition or "",
        interpolation=config.interpolation,
        sigma=config.sigma,
    )
    if config.init is not None:
        init = load_weights_only(config.init)
        if is_own_checkpoint(init):
            init_spec = read_classifier_spec(config.init, init)
            if init_spec.arch != config.arch:
                raise ValueError(
                    f"--init {config.init} holds a {init_spec.arch!r}, but arch is {config.arch!r}"
                )
            spec.mean, spec.std = init_spec.mean, init_spec.std
    return spec


def initial_classifier(config: TrainConfig, spec: ClassifierSpec) -> nn.Module:
    """The model to train: fresh, or the full-size network of ``config.init``, wrapped for
    the branch. ValueError if ``config.init`` holds a NaN or an infinity."""
    full = create_model(spec.arch, **spec.model_options())
    if config.init is not None:
        weights = load_state_dict(config.init)
        check_finite_weights(weights, f"--init {config.init}")
        try:
            load_weights(full.model, weights, spec.arch)
        except ValueError as err:
            raise ValueError(f"--init {config.init}: {err}") from None
    return spec.wrap(full)


def full_network(model: nn.Module) -> nn.Module:
    """The full-size normalised classifier inside a (possibly sub-image) model."""
    return model.classifier if isinstance(model, SubImageClassifier) else model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    branch: str,
    sigma: float,
    seed: int,
    accelerator: Any,
    partition: Partition | None = None,
) -> tuple[float, float, int]:
    """(clean accuracy, accuracy on one seeded noisy copy per image, number of clean
    images whose logits hold a NaN or have no finite maximum) over ``loader``, the
    model fed :func:`branch_input` of ``branch`` and ``partition``. The last is the
    smoothing engine's non-finite vote: a network that gives one has diverged even when
    every weight is finite (e.g. weights near 1e30 after one step at a huge lr)."""
    model.eval()
    counts = torch.zeros(4, device=accelerator.device)
    for index, (x, y) in enumerate(loader):
        x = branch_input(x, branch, partition)
        generator = torch.Generator(device=x.device).manual_seed(seed * 1_000_003 + index)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        logits = model(x)
        clean = logits.argmax(dim=1) == y
        nonfinite = ~torch.isfinite(logits.amax(dim=1)) | logits.isnan().any(dim=1)
        noisy = model(x + sigma * noise).argmax(dim=1) == y
        flags = accelerator.gather_for_metrics(
            torch.stack((clean, noisy, nonfinite), dim=1).float())
        counts += torch.cat((flags.sum(dim=0), flags.new_tensor([len(flags)])))
    clean_total, noisy_total, nonfinite_total, seen = counts.tolist()
    return clean_total / max(seen, 1), noisy_total / max(seen, 1), int(nonfinite_total)


def check_outputs(config: TrainConfig) -> None:
    """Refuse, before any work, outputs that would destroy something.

    Every output must be a new path or a regular file; no two outputs (checkpoint,
    log, resume state; of every branch) may be the same file; and an existing
    checkpoint or log is replaced only with ``overwrite`` (or continued with ``resume``).
    """
    outputs: dict[str, Path] = {}
    for branch in config.branches:
        tag = "" if branch in ("full", config.branch) else f" ({branch})"
        out, log = config.out_path(branch), config.log_path(branch)
        outputs.update({f"--out{tag}": out, f"--log{tag}": log,
                        f"the resume state{tag}": state_path(out)})
    for path in outputs.values():
        check_output_file(path)
    check_distinct_outputs(outputs)
    if config.resume or config.overwrite:
        return
    for role, path in outputs.items():
        if role.startswith(("--out", "--log")) and path.exists():
            raise ValueError(
                f"{role} {path} exists; pass --resume to continue its training "
                "or --overwrite to replace it"
            )


def check_resume_settings(config: TrainConfig, saved: Any, resume_file: Path) -> None:
    """Raise ValueError naming every training setting that differs from the resumed run's."""
    if not isinstance(saved, dict):
        return  # a state file written before settings were recorded
    current = config.resume_settings()
    changed = [
        f"{key} {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if changed:
        raise ValueError(
            f"--resume: the training settings differ from those of {resume_file}: "
            f"{', '.join(changed)}"
        )


def read_resume_state(config: TrainConfig, branch: str) -> dict[str, Any]:
    """The resume state of ``branch`` (``<checkpoint>.state.pt``): FileNotFoundError if
    there is none, ValueError if it cannot be read or its weights or optimizer state hold
    a NaN or an infinity."""
    resume_file = state_path(config.out_path(branch))
    if not resume_file.is_file():
        raise FileNotFoundError(f"--resume: no training state at {resume_file}")
    state = load_weights_only(resume_file, "training state")
    check_finite_weights({key: state.get(key) for key in ("state_dict", "optimizer")},
                         f"--resume: {resume_file}")
    return state


def train(config: TrainConfig) -> list[Path]:
    """Train every branch of ``config`` in turn; returns the checkpoint paths written.

    A resume state that is missing or not finite is refused for every branch before
    the first one trains, so such a refusal writes nothing.
    """
    config.validate()
    check_outputs(config)
    if config.resume:
        for branch in config.branches:
            read_resume_state(config, branch)
    return [train_branch(config, branch) for branch in config.branches]


def check_finite_epoch(mean_loss: float, model: nn.Module, optimizer: Any, epoch: int,
                       branch: str) -> None:
    """Raise :class:`TrainingDiverged` if the epoch's mean loss, the weights or the
    optimizer state are not finite: such an epoch must not be saved.

    Every process reaches the same verdict (the loss is reduced over processes and the
    weights are synchronised), so none is left waiting for the others.
    """
    if math.isfinite(mean_loss):
        found = non_finite_tensor({"weights": model.state_dict(),
                                   "optimizer": optimizer.state_dict()})
        if found is None:
            return
        what = f"{found} holds a NaN or an infinity"
    else:
        what = f"the mean train loss is {mean_loss}"
    raise TrainingDiverged(
        f"training diverged in epoch {epoch} of branch {branch}: {what}; nothing of this "
        "epoch is saved (try a lower --lr)"
    )


def train_branch(config: TrainConfig, branch: str) -> Path:
    """Train the classifier of one of ``config.branches`` (``full``; ``l`` / ``r``; a part
    number) on its sub-images and return its checkpoint path."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from denoised_drs.launch import bounded_rendezvous

    out, log = config.out_path(branch), config.log_path(branch)
    resume_file = state_path(out)
    state = read_resume_state(config, branch) if config.resume else None
    spec = build_spec(config, branch)
    partition = config.split_partition()
    train_set = _limit(get_dataset(config.dataset, "train", config.data_dir), config.max_train)
    test_set = _limit(get_dataset(config.dataset, "test", config.data_dir), config.max_test)

    with bounded_rendezvous("train_base.py"):  # a stale WORLD_SIZE must not hang
        accelerator = Accelerator(cpu=config.cpu)
    set_seed(config.seed, device_specific=True)
    model = initial_classifier(config, spec)
    parameters = model.parameters()
    if config.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    start_epoch, rows = 0, []
    if state is not None:
        try:
            full_network(model).model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            start_epoch, rows = int(state["epoch"]), list(state["log"])
            saved_settings = state.get("settings")
        except (KeyError, TypeError, RuntimeError) as error:
            # A state file of another run (architecture, optimizer) or not one at all.
            raise ValueError(
                f"--resume: {resume_file} is not a training state of this configuration "
                f"({type(error).__name__}: {first_line(error)})"
            ) from None
        check_resume_settings(config, saved_settings, resume_file)
        if start_epoch >= config.epochs:
            raise ValueError(f"--resume: {resume_file} already finished {start_epoch} epoch(s)")

    train_loader = DataLoader(
        train_set,
        batch_size=config.batch,
        shuffle=True,
        num_workers=config.workers,
        drop_last=False,
    )
    test_loader = DataLoader(
        test_set, batch_size=max(config.batch, 256), num_workers=config.workers
    )
    model, optimizer, train_loader, test_loader = accelerator.prepare(
        model, optimizer, train_loader, test_loader
    )
    strategy = make_strategy(
        config.strategy,
        config.num_noise,
        config.lbd,
        config.eta,
        config.epsilon,
        config.attack_steps,
        config.warmup,
    )
    if isinstance(strategy, SmoothAdv):
        # Attack the bare module: no gradient synchronisation during PGD.
        strategy.attack_model = accelerator.unwrap_model(model)

    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        totals = torch.zeros(2, device=accelerator.device)
        batches = tqdm(
            train_loader,
            desc=f"{branch} epoch {epoch + 1}/{config.epochs}",
            leave=False,
            disable=not (config.progress and accelerator.is_main_process),
        )
        for x, y in batches:
            loss = strategy.loss(model, branch_input(x, branch, partition), y, config.sigma,
                                 epoch)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            totals += torch.stack((loss.detach() * len(y), loss.new_tensor(float(len(y)))))
            batches.set_postfix(loss=f"{loss.item():.4f}")
        totals = accelerator.reduce(totals, reduction="sum")
        mean_loss = float(totals[0] / totals[1])
        full = full_network(accelerator.unwrap_model(model))
        check_finite_epoch(mean_loss, full, optimizer, epoch + 1, branch)
        clean_acc, noisy_acc, nonfinite = evaluate(
            model, test_loader, branch, config.sigma, config.seed, accelerator, partition
        )
        if nonfinite:
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1} of branch {branch}: the network's "
                f"outputs on {nonfinite} test image(s) are not finite; nothing of this epoch "
                "is saved (try a lower --lr)"
            )
        row = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": round(mean_loss, 6),
            "test_clean_acc": round(clean_acc, 6),
            "test_noisy_acc": round(noisy_acc, 6),
            "epoch_time_s": round(time.time() - started, 2),
        }
        rows.append(row)
        if accelerator.is_main_process:
            training = {**config.record(), "branch": branch, "epochs_done": epoch + 1, "log": rows}
            save_classifier(out, full, spec, training)
            with atomic_write(resume_file) as stream:
                snapshot = {
                    "epoch": epoch + 1,
                    "state_dict": full.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": torch.get_rng_state(),
                    "log": rows,
                    "settings": config.resume_settings(),
                }
                torch.save(with_content_hash(snapshot), stream)
            write_log(log, rows)
            accelerator.print(
                f"[{branch}] epoch {epoch + 1}/{config.epochs} lr {lr:.2e} "
                f"loss {row['train_loss']:.4f} "
                f"clean {clean_acc:.4f} noisy@{config.sigma} {noisy_acc:.4f} "
                f"({row['epoch_time_s']} s)"
            )
        accelerator.wait_for_everyone()
    if accelerator.is_main_process and not config.keep_state:
        resume_file.unlink(missing_ok=True)
    return out
