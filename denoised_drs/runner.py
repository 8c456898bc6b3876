"""Certify a dataset with a :class:`~denoised_drs.pipeline.Pipeline`, sharded and resumable.

Images are chosen as in Cohen's ``certify.py``: every ``skip``-th index below
``max``. Process ``rank`` of ``world`` takes every ``world``-th of them, so each
image's result depends only on the seed and its index, not on the number of
processes. The configuration is saved beside the result (``OUT.config.json``);
rerunning with the same output resumes, and rerunning with a different
configuration is refused rather than mixed into one file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from denoised_drs import results
from denoised_drs.cli import check_output_file
from denoised_drs.pipeline import Pipeline

# Settings that change speed or memory but never a certificate.
_RESULT_NEUTRAL = ("batch", "denoiser_chunk")


class ProcessState(Protocol):
    """The part of ``accelerate.PartialState`` the runner uses."""

    process_index: int
    num_processes: int
    is_main_process: bool

    def wait_for_everyone(self) -> None: ...


class SingleProcess:
    """A stand-in for ``accelerate.PartialState`` when running in one process."""

    process_index = 0
    num_processes = 1
    is_main_process = True

    def wait_for_everyone(self) -> None:
        return None


def select_indices(length: int, skip: int = 1, max_index: int | None = None) -> list[int]:
    """Indices ``i < max_index`` (all if None) with ``i % skip == 0``, as Cohen's script does."""
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"skip must be a positive integer, got {skip!r}")
    if max_index is not None and (
        isinstance(max_index, bool) or not isinstance(max_index, int) or max_index < 1
    ):
        raise ValueError(f"max must be a positive integer, got {max_index!r}")
    stop = length if max_index is None else min(length, max_index)
    return list(range(0, stop, skip))


def config_path(out: Path) -> Path:
    return out.with_name(out.name + ".config.json")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _RESULT_NEUTRAL}


def check_or_save_config(pipe: Pipeline, out: Path, extra: dict[str, Any]) -> None:
    """Refuse to resume ``out`` under another configuration; otherwise save ours beside it."""
    path = config_path(out)
    ours = {**pipe.config.to_dict(), **extra}
    if path.is_file() and (results.existing_parts(out) or out.is_file()):
        try:
            theirs = json.loads(path.read_text())
        except json.JSONDecodeError:
            theirs = None
        if not isinstance(theirs, dict):
            raise ValueError(f"{path} is not a configuration this library wrote; pass another output path")
        if _comparable(theirs) != _comparable(ours):
            changed = sorted(k for k in set(ours) | set(theirs)
                             if k not in _RESULT_NEUTRAL and ours.get(k) != theirs.get(k))
            raise ValueError(
                f"{out} was started with another configuration (differs in {changed}); "
                "pass another output path"
            )
    elif out.is_file() or results.existing_parts(out):
        raise ValueError(f"{out} exists without its configuration file; pass another output path")
    pipe.save_config(path, extra)


def certify_dataset(
    pipe: Pipeline,
    dataset: Any,
    indices: Sequence[int],
    out: str | Path,
    state: ProcessState | None = None,
    extra_config: dict[str, Any] | None = None,
    progress: bool = True,
) -> int:
    """Certify ``dataset[i]`` for ``i`` in ``indices`` into the TSV ``out``; returns rows written.

    Every process must call this with the same arguments. Images already in ``out``
    or its part files are skipped.
    """
    state = state or SingleProcess()
    out = Path(out)
    header = results.columns_for(pipe.config.certificate)
    check_output_file(out)
    if state.is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        check_or_save_config(pipe, out, extra_config or {})
    state.wait_for_everyone()
    mine = list(indices)[state.process_index :: state.num_processes]
    done = results.read_rows([out, *results.existing_parts(out)], header)
    todo = [i for i in mine if i not in done]
    writer = results.PartWriter(results.part_path(out, state.process_index), header)
    try:
        bar = tqdm(
            todo,
            desc=out.name,
            unit="img",
            disable=not (progress and state.is_main_process),
            initial=len(mine) - len(todo),
            total=len(mine),
        )
        for idx in bar:
            image, label = dataset[idx]
            record = pipe.certify_one(image, int(label), idx)
            writer.write(results.format_row(record, pipe.config.certificate))
    finally:
        writer.close()
    state.wait_for_everyone()
    rows = 0
    if state.is_main_process:
        rows = results.merge(out, header)
    state.wait_for_everyone()
    return rows
