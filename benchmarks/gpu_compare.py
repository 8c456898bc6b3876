"""Compare two runs of the GPU suite (before and after a change, same device, one call).

    python benchmarks/gpu_compare.py before.json after.json --out ratios.json

For every preset, precision and mode measured in both it reports the rate ratio
after / before, and for the ``after`` run the MFU and the issue-24 targets: bf16 +
compile at least 45 % MFU for the 552M preset and 35 % for the 50M preset in all three
modes, eager bf16 at least 1.8x eager fp32. A preset or precision missing from either
run (skipped, or not selected) is left out and listed under ``missing``. The JSON is
printed and, with ``--out``, written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from denoised_drs.atomic_file import atomic_write  # noqa: E402
from denoised_drs.cli import run_script  # noqa: E402
from denoised_drs.errors import check_output_file  # noqa: E402

MODES = ("rs", "drs_joint", "drs_split")
MFU_TARGETS = {"imagenet-552M": 0.45, "cifar10-50M": 0.35}
"""The least MFU of bf16 + compile per preset, in all three modes (issue 24)."""
EAGER_BF16_TARGET = 1.8
"""The least eager bf16 / eager fp32 rate (issue 24)."""


def read_suite(path: str) -> dict[str, Any]:
    """A suite JSON, or ValueError / OSError in one line."""
    try:
        report = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    if not isinstance(report, dict) or not isinstance(report.get("presets"), dict):
        raise ValueError(f"{path} is not a GPU suite report (no presets)")
    return report


def measured(precisions: dict[str, Any], precision: str) -> dict[str, Any] | None:
    rows = precisions.get(precision)
    if not isinstance(rows, dict) or "skipped" in rows or not all(m in rows for m in MODES):
        return None
    return rows


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Ratios after / before and the targets of the ``after`` run."""
    report: dict[str, Any] = {"before_device": before.get("device"),
                              "after_device": after.get("device"),
                              "ratios": {}, "targets": {}, "missing": []}
    for name, preset in after["presets"].items():
        then = before["presets"].get(name, {}).get("precisions", {})
        now = preset["precisions"]
        for precision in now:
            rows, old = measured(now, precision), measured(then, precision)
            if rows is None or old is None:
                report["missing"].append(f"{name} {precision}")
                continue
            report["ratios"][f"{name} {precision}"] = {
                mode: rows[mode]["samples_per_s"] / old[mode]["samples_per_s"] for mode in MODES}
        compiled, bf16, fp32 = (measured(now, p) for p in ("bf16+compile", "bf16", "fp32"))
        targets: dict[str, Any] = {}
        if compiled is not None and name in MFU_TARGETS:
            mfu = {mode: compiled[mode]["mfu"] for mode in MODES}
            targets["bf16+compile mfu"] = mfu
            targets["bf16+compile mfu target"] = MFU_TARGETS[name]
            targets["bf16+compile mfu met"] = all(
                value is not None and value >= MFU_TARGETS[name] for value in mfu.values())
        if bf16 is not None and fp32 is not None:
            speedup = {mode: bf16[mode]["samples_per_s"] / fp32[mode]["samples_per_s"]
                       for mode in MODES}
            targets["eager bf16 / fp32"] = speedup
            targets["eager bf16 / fp32 met"] = all(v >= EAGER_BF16_TARGET
                                                   for v in speedup.values())
        report["targets"][name] = targets
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", help="the suite's JSON before the change")
    parser.add_argument("after", help="the suite's JSON after the change")
    parser.add_argument("--out", help="where to write the comparison (JSON)")
    args = parser.parse_args(argv)
    if args.out is not None:
        check_output_file(args.out)
    report = compare(read_suite(args.before), read_suite(args.after))
    text = json.dumps(report, indent=2) + "\n"
    print(text, end="")
    if args.out is not None:
        with atomic_write(args.out, "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    run_script(main, __file__)
