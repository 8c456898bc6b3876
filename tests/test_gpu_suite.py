"""benchmarks/gpu_suite.py --tiny: the GPU suite's code runs on the CPU and writes its JSON."""

import json
from pathlib import Path

import pytest
from module_files import load_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


def test_tiny_suite_writes_every_measurement(tmp_path):
    suite = load_module(SCRIPT, "gpu_suite")
    out = tmp_path / "suite.json"
    assert suite.main(["--tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tiny"] and set(report["presets"]) == {"cifar10-50M", "imagenet-552M"}
    for preset in report["presets"].values():
        assert set(preset["precisions"]) == {"fp32", "bf16", "bf16+compile"}
        for results in preset["precisions"].values():
            for mode in ("rs", "drs_joint", "drs_split"):
                assert (results[mode]["samples_per_s"] > 0
                        and results[mode]["samples"] >= preset["batch"])
            assert set(results["ratios"]) == {"drs_joint/rs", "drs_split/rs", "drs_split/drs_joint"}
        assert preset["smoke"]["ok"] and len(preset["smoke"]["records"]) == 2
    # One row per command loop of docs/reproduce.md, from the measured bf16 rates.
    hours = report["expected_gpu_hours"]
    assert {"DRS joint, CIFAR-10", "DRS joint, ImageNet", "Carlini CIFAR-10",
            "Carlini ImageNet"} <= set(hours)
    for row in hours.values():
        assert row["samples_per_s"] > 0 and 0 < row["hours_per_sigma"] <= row["hours"]
        rate = report["presets"][row["preset"]]["precisions"]["bf16"][row["mode"]]["samples_per_s"]
        assert row["hours_per_sigma"] == row["images"] * (row["n0"] + row["n"]) / rate / 3600


def test_budget_skips_compilation_and_keeps_the_rest(tmp_path, capsys):
    suite = load_module(SCRIPT, "gpu_suite_budget")
    out = tmp_path / "suite.json"
    assert suite.main(["--tiny", "--budget", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for preset in report["presets"].values():
        assert "skipped" in preset["precisions"]["bf16+compile"]
        assert preset["precisions"]["bf16"]["rs"]["samples_per_s"] > 0 and preset["smoke"]["ok"]
    assert report["expected_gpu_hours"]
    assert "skipped (over --budget)" in capsys.readouterr().out
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="--budget"):
            suite.parse_args(["--tiny", "--budget", bad, "--out", str(out)])
