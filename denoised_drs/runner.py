"""Certify a dataset with a :class:`~denoised_drs.pipeline.Pipeline`, sharded and resumable.

Images are chosen as in Cohen's ``certify.py``: every ``skip``-th index below
``max``. Process ``rank`` of ``world`` takes every ``world``-th of them, so each
image's result depends only on the seed and its index, not on the number of
processes. The configuration is saved beside the result (``OUT.config.json``)
with the sha256 of every checkpoint and of the selected images and labels;
rerunning with the same output resumes, and rerunning with different settings,
checkpoint content or data is refused rather than mixed into one file (see
:func:`check_config` for exactly what may change). Part files carry the run's
identity (:func:`run_identity`), so another run's file is never merged; a refused
run writes nothing; each session is logged in the configuration (``sessions``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from denoised_drs import content, results
from denoised_drs.errors import check_output_file
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig

_RESULT_NEUTRAL = ("batch", "compile", "compile_mode", "denoiser_chunk", "device")
"""Settings that change speed, memory or where the work runs, never which rows are valid."""
_BY_CONTENT = ("classifier", "classifier_l", "classifier_r", "denoiser", "denoiser_checkpoint",
               "denoiser_config", "data_dir", "max", "content")
"""Settings compared through the content record rather than by value: paths (any
spelling of the same content is the same run) and ``max`` (a run may be extended)."""
SESSIONS_KEY = "sessions"
"""The key of ``OUT.config.json`` holding the log of the run's sessions (never compared)."""
_NOT_COMPARED = (*_RESULT_NEUTRAL, *_BY_CONTENT, SESSIONS_KEY)
_CHECKPOINT_KEYS = ("classifier", "classifier_l", "classifier_r", "branches", "denoiser",
                    "denoiser_checkpoint")


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


def _accelerator_available() -> bool:
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6: CUDA, XPU, MPS, ...
    return accelerator.is_available() if accelerator else torch.cuda.is_available()


def launched_state(device: str | None) -> ProcessState:
    """``accelerate.PartialState`` of this process, joined to the others of its launch.

    Processes started together (``accelerate launch --multi_gpu``, torchrun) set
    ``WORLD_SIZE``; on a machine without an accelerator they join through gloo on the
    CPU, with or without ``device="cpu"`` (accelerate joins CPU processes only when
    asked, and each would otherwise certify every image). Raises ValueError when the
    processes of a launch did not join, rather than letting each do all the work.
    ``accelerate launch --cpu`` starts one process whatever ``--num_processes`` says.
    (torchrun's own command line cannot pass the script's ``--max``: it reads it as
    an abbreviation of its ``--max-restarts``.)
    """
    from accelerate import PartialState

    world = os.environ.get("WORLD_SIZE")
    launched = world is not None and world.isdigit() and int(world) > 1
    cpu = device == "cpu" or (launched and device is None and not _accelerator_available())
    state = PartialState(cpu=cpu)
    if launched and state.num_processes != int(world):
        raise ValueError(
            f"launched as {world} processes, but they did not join ({state.num_processes} "
            f"seen on {state.device}); pass --device cpu to run them on CPUs"
        )
    return state


def select_indices(
    length: int, skip: int = 1, max_index: int | None = None, start: int = 0
) -> list[int]:
    """Indices ``start <= i < max_index`` (all if None) with ``(i - start) % skip == 0``.

    With ``start = 0`` this is Cohen's selection (every ``skip``-th index). A nonzero
    ``start`` picks the images an every-``skip``-th run left out, e.g. ``start=10,
    skip=20`` completes an every-20th run into an every-10th one; since each image's
    result depends only on the seed and its index, the rows are the ones the
    every-10th run would have written.
    """
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"skip must be a positive integer, got {skip!r}")
    if max_index is not None and (
        isinstance(max_index, bool) or not isinstance(max_index, int) or max_index < 1
    ):
        raise ValueError(f"max must be a positive integer, got {max_index!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative integer, got {start!r}")
    stop = length if max_index is None else min(length, max_index)
    if start >= stop:
        raise ValueError(f"start {start} selects no image (the data holds indices below {stop})")
    return list(range(start, stop, skip))


def config_path(out: Path) -> Path:
    return out.with_name(out.name + ".config.json")


def _file_entry(path: str) -> dict[str, str]:
    return {"path": os.path.realpath(path), "sha256": content.path_sha256(path)}


def _checkpoint_entries(config: PipelineConfig) -> dict[str, Any]:
    """Each checkpoint key's files as {path, sha256} (a denoiser preset: its name)."""
    from denoised_drs.diffusion import PRESETS

    entries: dict[str, Any] = {
        key: [_file_entry(p) for p in getattr(config, key)]
        for key in ("classifier", "classifier_l", "classifier_r")
    }
    if config.branches is not None:
        # k >= 3 parts: every branch file in part order (the parts' sizes are the
        # `branches` setting itself, compared as such)
        entries["branches"] = [_file_entry(p) for part in config.branches for p in part]
    denoiser = config.denoiser
    if denoiser is None or denoiser in PRESETS:
        entries["denoiser"] = denoiser and {"preset": denoiser}
    else:
        entries["denoiser"] = [_file_entry(denoiser)]
    checkpoint = config.denoiser_checkpoint
    entries["denoiser_checkpoint"] = [_file_entry(checkpoint)] if checkpoint else []
    return entries


def _describe_indices(indices: list[int]) -> dict[str, Any]:
    """``indices`` compactly: start/step/count for an arithmetic run (Cohen's), else a list."""
    start = indices[0] if indices else 0
    step = indices[1] - indices[0] if len(indices) > 1 else 1
    if step > 0 and indices == [start + step * k for k in range(len(indices))]:
        return {"start": start, "step": step, "count": len(indices)}
    return {"list": indices}


def _indices_of(described: Any) -> list[int]:
    """The indices written by :func:`_describe_indices`; ValueError if it is not such a record."""
    try:
        if "list" in described:
            indices = [int(i) for i in described["list"]]
        else:
            start, step, count = (int(described[k]) for k in ("start", "step", "count"))
            indices = [start + step * k for k in range(count)]
    except (TypeError, KeyError, ValueError):
        raise ValueError("its record of the certified images is damaged") from None
    return indices


def _item_digests(
    dataset: Any, indices: Sequence[int], num_classes: int, known: dict[int, bytes]
) -> dict[int, bytes]:
    """Digests of ``dataset[i]`` (added to ``known``), checking each label lies in range."""
    for idx in indices:
        if idx in known:
            continue
        if idx >= len(dataset):
            raise ValueError(
                f"the dataset now holds {len(dataset)} images, the run certified image {idx}"
            )
        image, label = dataset[idx]
        label = int(label)
        if not 0 <= label < num_classes:
            raise ValueError(
                f"image {idx} has label {label}, outside [0, {num_classes}) of the classifiers"
            )
        known[idx] = content.image_digest(idx, image, label)
    return known


def _content_changes(theirs: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """What differs between two checkpoint records, as short phrases."""
    changes = []
    for key in _CHECKPOINT_KEYS:
        old, new = theirs.get(key), ours.get(key)
        if key not in theirs and isinstance(new, list):
            changes.append(f"it records no sha256 of its {key} files (a version before they "
                           "were recorded wrote it), so they cannot be checked")
            continue
        if not isinstance(new, list) or not isinstance(old, list):
            if old != new:
                changes.append(f"{key} was {old}, now {new}")
            continue
        if len(old) != len(new):
            changes.append(f"{key} had {len(old)} file(s), now {len(new)}")
            continue
        for was, now in zip(old, new):
            if not isinstance(was, dict) or was.get("sha256") != now["sha256"]:
                recorded = was.get("sha256", "?") if isinstance(was, dict) else "?"
                changes.append(
                    f"the {key} file {now['path']} changed since the run began "
                    f"(sha256 {str(recorded)[:16]}..., now {now['sha256'][:16]}...)"
                )
    return changes


def _saved_sessions(path: Path, theirs: dict[str, Any]) -> list[dict[str, Any]]:
    """The session log of the saved configuration ``theirs`` (empty for older versions)."""
    sessions = theirs.get(SESSIONS_KEY, [])
    if not isinstance(sessions, list) or not all(isinstance(s, dict) for s in sessions):
        raise ValueError(f"{path} has a damaged session log; pass another output path")
    return sessions


def check_config(
    pipe: Pipeline,
    out: Path,
    extra: dict[str, Any],
    dataset: Any,
    indices: Sequence[int],
    data_source: str | None = None,
) -> dict[str, Any]:
    """Refuse to resume ``out`` unless its rows stay valid; return the configuration to save.

    The configuration is the pipeline's, ``extra`` (e.g. dataset, skip, max), a
    ``content`` record: the resolved path and sha256 of every checkpoint, the data
    source, the certified indices and a sha256 over their images and labels; and the
    ``sessions`` log saved so far (see :func:`session_entry`). A resume is accepted
    when (1) every setting equals the saved one, except the result-neutral ones
    (batch, compile, compile_mode, denoiser_chunk, device), the session log and those compared by
    content (checkpoint paths, data_dir, max); (2) every checkpoint's sha256 equals
    the saved one, in order; and (3) the current dataset's images and labels at the
    *saved* indices hash to the saved sha256, so the rows already written were
    computed from the same data, whatever the new selection (a larger ``max``
    extends the run). Labels of the selected images must lie in
    [0, num_classes). Raises ValueError (one line); writes nothing.
    """
    path = config_path(out)
    selected = list(indices)
    known = _item_digests(dataset, selected, pipe.smoothed.num_classes, {})
    record = {
        **_checkpoint_entries(pipe.config),
        "data": {
            "source": data_source,
            "indices": _describe_indices(selected),
            "sha256": content.selection_sha256(known[i] for i in selected),
        },
    }
    ours = {**pipe.config.to_dict(), **extra, "content": record, SESSIONS_KEY: []}
    if path.is_file() and (results.existing_parts(out) or out.is_file()):
        try:
            theirs = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError):
            theirs = None
        if not isinstance(theirs, dict):
            raise ValueError(
                f"{path} is not a configuration this library wrote; pass another output path"
            )
        if not isinstance(theirs.get("content"), dict):
            raise ValueError(
                f"{path} records no content hashes (an older version wrote it); "
                "pass another output path"
            )
        ours[SESSIONS_KEY] = _saved_sessions(path, theirs)
        changes = [
            f"{k} was {theirs.get(k)!r}, now {ours.get(k)!r}"
            for k in sorted(set(ours) | set(theirs))
            if k not in _NOT_COMPARED and ours.get(k) != theirs.get(k)
        ]
        changes += _content_changes(theirs["content"], record)
        if not changes:
            changes = _data_changes(theirs["content"], dataset, pipe.smoothed.num_classes, known)
        if changes:
            raise ValueError(
                f"{out} was started with another configuration: {'; '.join(changes)}; "
                "pass another output path"
            )
    elif out.is_file() or results.existing_parts(out):
        found = out if out.is_file() else results.existing_parts(out)[0]
        raise ValueError(f"{found} exists without the configuration file {path.name}; move it "
                         "away or pass another output path")
    return ours


def run_identity(config: dict[str, Any]) -> str:
    """The sha256 naming a run: of every setting a resume must keep (all but the
    result-neutral ones, the session log and those compared by content) and of every
    checkpoint's content.

    It is the same for every session of a run, whatever the batch, device or ``max``,
    and for the configuration as saved or as read back, so part files written in any
    session of the run carry it (:func:`denoised_drs.results.identity_line`).
    """
    settings = {k: v for k, v in config.items() if k not in _NOT_COMPARED and v is not None}
    saved = config.get("content") if isinstance(config.get("content"), dict) else {}
    checkpoints = {}
    for key in _CHECKPOINT_KEYS:
        if key not in saved:  # e.g. `branches`, recorded for k >= 3 parts only
            continue
        entries = saved[key]
        if isinstance(entries, list):  # files: their content, never their paths
            entries = [e.get("sha256") if isinstance(e, dict) else e for e in entries]
        checkpoints[key] = entries
    text = json.dumps({"settings": settings, "checkpoints": checkpoints}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _unmarked_parts(out: Path, config: dict[str, Any]) -> list[Path]:
    """The part files of ``out`` without an identity file, once they may be this run's.

    Only a version without identity files wrote such parts, and it wrote no session
    log: so they are accepted only when the saved configuration (which matched) has no
    session log yet, and never when the part is itself another run's result (it has
    a configuration of its own). ValueError (one line) otherwise.
    """
    unmarked = [p for p in results.existing_parts(out) if not results.identity_path(p).exists()]
    for part in unmarked:
        if config_path(part).exists():
            raise ValueError(
                f"{part} is not a part file of this run ({config_path(part).name} shows it "
                "is another run's result); move it away or pass another output path"
            )
        if config[SESSIONS_KEY]:
            raise ValueError(
                f"{part} is not a part file of this run (it has no identity file "
                f"{results.identity_path(part).name}); move it away or pass another output path"
            )
    return unmarked


def _numeric_path(pipe: Pipeline) -> dict[str, Any]:
    """The choices that change the rounding, not the validity, of the numbers computed."""
    import torch

    from denoised_drs.diffusion.winograd import WinogradConv2d, winograd_pays

    winograd = None
    if pipe.device.type == "cpu" and isinstance(pipe.denoiser, torch.nn.Module) and any(
        isinstance(m, WinogradConv2d) for m in pipe.denoiser.modules()
    ):
        # Decided once per process and thread count; asking now decides it for the run.
        winograd = winograd_pays()
    return {
        "autocast": pipe.config.autocast,
        # Since issue 24 autocast covers the whole step, classifiers included (before:
        # the denoiser's network only); sessions of an older bf16 run resumed now differ.
        "autocast_scope": "step",
        "compile_mode": pipe.compile_mode,
        "batch": pipe.batch,
        "batch_choice": pipe.batch_note,
        "winograd": winograd,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "threads": torch.get_num_threads(),
    }


def _cpu_name() -> str:
    """The CPU's model name where Linux tells it (it decides e.g. the Winograd path)."""
    try:
        with open("/proc/cpuinfo") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "cpu"


def session_entry(pipe: Pipeline, processes: int) -> dict[str, Any]:
    """What a session of a run records in the ``sessions`` log of ``OUT.config.json``.

    Its start (UTC), the result-neutral settings, the number of processes, the device's
    name, the torch and CUDA versions, the numeric path (autocast, Winograd on CPUs
    when the denoiser has such layers, TF32, threads) and ``rows``: the rows this
    session certified, None until it ends (a session that was killed keeps None).
    """
    import torch

    if pipe.device.type == "cuda":
        device_name = torch.cuda.get_device_name(pipe.device)
    else:
        device_name = _cpu_name()
    return {
        "start": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {k: getattr(pipe.config, k) for k in _RESULT_NEUTRAL},
        "processes": processes,
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numeric": _numeric_path(pipe),
        "rows": None,
    }


def _save_config(pipe: Pipeline, out: Path, config: dict[str, Any]) -> None:
    extra = {k: v for k, v in config.items() if k not in pipe.config.to_dict()}
    pipe.save_config(config_path(out), extra)


def _data_changes(
    theirs: dict[str, Any], dataset: Any, num_classes: int, known: dict[int, bytes]
) -> list[str]:
    """Whether the images and labels the saved run certified are still the dataset's."""
    data = theirs.get("data")
    if not isinstance(data, dict):
        return ["its record of the certified images is missing"]
    try:
        old = _indices_of(data.get("indices"))
        _item_digests(dataset, old, num_classes, known)
    except ValueError as error:
        return [str(error)]
    if content.selection_sha256(known[i] for i in old) != data.get("sha256"):
        return [
            f"the images or labels of the {len(old)} images it certified changed "
            f"(data source was {data.get('source')})"
        ]
    return []


def _begun_without_looks(out: Path, details: Sequence[str]) -> bool:
    """Whether ``out`` is a run that a version before the look columns began (its
    first file's header is the one without them): its resume keeps that header, so
    the rows of one file never mix two layouts."""
    for path in [out, *results.existing_parts(out)]:
        if path.is_file():
            with open(path, "rb") as stream:
                first = stream.readline(1 << 16).rstrip(b"\n")
            return first == "\t".join(results.columns_for(details)).encode()
    return False


def certify_dataset(
    pipe: Pipeline,
    dataset: Any,
    indices: Sequence[int],
    out: str | Path,
    state: ProcessState | None = None,
    extra_config: dict[str, Any] | None = None,
    progress: bool = True,
    data_source: str | None = None,
) -> int:
    """Certify ``dataset[i]`` for ``i`` in ``indices`` into the TSV ``out``; returns rows written.

    Every process must call this with the same arguments. Images already in ``out``
    or its part files are skipped; a resume is checked by :func:`check_config`, and
    every existing row and part file is checked (:func:`denoised_drs.results.check_parts`)
    before anything is written, so a refused run changes no file. Each session is
    logged in ``OUT.config.json`` (:func:`session_entry`); its row count is filled in
    when it ends. ``data_source`` (e.g. the resolved data folder) is recorded beside
    the result.
    """
    state = state or SingleProcess()
    out = Path(out)
    details = pipe.smoothed.scheme.columns()
    looks = pipe.config.adaptive and not _begun_without_looks(out, details)
    header = results.columns_for(details, looks)
    targets = tuple(pipe.config.radii or ())
    check_output_file(out)
    if pipe.batch is None and len(indices):
        # batch="auto" is chosen before the session is logged, which records it.
        pipe.check_image_shape(tuple(dataset[indices[0]][0].shape))
    config: dict[str, Any] = {}
    already = 0
    if state.is_main_process:
        config = check_config(pipe, out, extra_config or {}, dataset, indices, data_source)
        unmarked = _unmarked_parts(out, config)
        already = len(results.check_parts(out, header, run_identity(config)))
        config[SESSIONS_KEY] = [*config[SESSIONS_KEY],
                                session_entry(pipe, state.num_processes)]
        _save_config(pipe, out, config)
        for part in unmarked:  # adopted: the parts of an older version's run, checked above
            results.write_identity(part, run_identity(config))
    state.wait_for_everyone()
    # Every process names its part by the configuration just saved, hashed alike.
    identity = run_identity(json.loads(config_path(out).read_text()))
    if progress and state.is_main_process and state.num_processes > 1:
        print(f"{out}: {state.num_processes} processes, one part file each, merged at the end",
              file=sys.stderr)
    mine = list(indices)[state.process_index :: state.num_processes]
    done = results.read_rows([out, *results.existing_parts(out)], header)
    todo = [i for i in mine if i not in done]
    writer = results.PartWriter(results.part_path(out, state.process_index), header, identity)
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
            writer.write(results.format_row(record, details, targets, looks))
    finally:
        writer.close()
    state.wait_for_everyone()
    rows = 0
    if state.is_main_process:
        rows = results.merge(out, header, identity)
        session = config[SESSIONS_KEY][-1]
        session["rows"] = rows - already
        # batch="auto" may have been halved after an out-of-memory error.
        session["numeric"].update(batch=pipe.batch, batch_choice=pipe.batch_note)
        _save_config(pipe, out, config)
    state.wait_for_everyone()
    return rows
