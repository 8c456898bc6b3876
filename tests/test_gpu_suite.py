"""benchmarks/gpu_suite.py --tiny: the GPU suite's code runs on the CPU and writes its JSON."""

import json
from pathlib import Path

import pytest
import torch
from module_files import load_module
from torch.utils.flop_counter import FlopCounterMode

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


MODES = ("rs", "drs_joint", "drs_split")
NEW_KEYS = {"flops_per_sample", "flops_per_sample_denoiser", "flops_per_sample_classifier",
            "peak_flops", "peak_source", "mfu", "peak_memory_gib", "peak_memory_bytes"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The --tiny suite, run once for the tests that read its JSON."""
    suite = load_module(SCRIPT, "gpu_suite")
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    assert suite.main(["--tiny", "--out", str(out)]) == 0
    return suite, json.loads(out.read_text())


def test_tiny_suite_writes_every_measurement(tiny):
    suite, report = tiny
    assert report["tiny"] and set(report["presets"]) == {"cifar10-50M", "imagenet-552M"}
    for preset in report["presets"].values():
        assert set(preset["precisions"]) == set(suite.PRECISIONS)
        precisions = dict(preset["precisions"])  # the report is shared by the module's tests
        assert precisions.pop("bf16+cudagraphs") == {"skipped": "CUDA graphs need a CUDA device"}
        for results in precisions.values():
            for mode in ("rs", "drs_joint", "drs_split"):
                assert (results[mode]["samples_per_s"] > 0
                        and results[mode]["samples"] >= preset["batch"])
            assert set(results["ratios"]) == {"drs_joint/rs", "drs_split/rs", "drs_split/drs_joint"}
        assert preset["smoke"]["ok"] and len(preset["smoke"]["records"]) == 2
        # batch="auto" on the CPU: the CPU default (1000) capped at N = two preset batches.
        auto = preset["auto_batch"]
        assert auto["batch"] == 2 * preset["batch"] and auto["samples_per_s"] > 0
        assert auto["choice"].startswith(f"batch {auto['batch']}: the CPU default")
    # One row per command loop of docs/reproduce.md, from the measured compiled bf16 rates.
    hours = report["expected_gpu_hours"]
    assert {"DRS joint, CIFAR-10", "DRS joint, ImageNet", "Carlini CIFAR-10",
            "Carlini ImageNet"} <= set(hours)
    for row in hours.values():
        assert row["samples_per_s"] > 0 and 0 < row["hours_per_sigma"] <= row["hours"]
        assert row["precision"] == "bf16+compile"
        rate = report["presets"][row["preset"]]["precisions"][row["precision"]][row["mode"]][
            "samples_per_s"]
        assert row["hours_per_sigma"] == row["images"] * (row["n0"] + row["n"]) / rate / 3600


def test_tiny_suite_reports_flops_mfu_and_memory(tiny):
    suite, report = tiny
    assert report["peak_flops_table"] == suite.PEAK_FLOPS
    for preset in report["presets"].values():
        for precision, results in preset["precisions"].items():
            if "skipped" in results:
                continue
            for mode in MODES:
                row = results[mode]
                assert NEW_KEYS <= set(row), (precision, mode)
                assert row["flops_per_sample"] > 0 and row["flops_per_sample_denoiser"] > 0
                assert row["flops_per_sample_classifier"] > 0
                assert row["flops_per_sample"] == (row["flops_per_sample_denoiser"]
                                                   + row["flops_per_sample_classifier"])
                # The CPU has no peak: no MFU, and the JSON says why; no CUDA memory either.
                assert row["mfu"] is None and row["peak_flops"] is None
                assert row["peak_source"] == "not a CUDA device"
                assert row["peak_memory_gib"] is None and row["peak_memory_bytes"] is None
            rs, joint, split = (results[mode] for mode in MODES)
            # One UNet pass per sample for RS and DRS joint, two for DRS split.
            assert rs["flops_per_sample_denoiser"] == joint["flops_per_sample_denoiser"]
            assert split["flops_per_sample_denoiser"] == pytest.approx(
                2 * joint["flops_per_sample_denoiser"], rel=1e-3)
            # DRS runs two branch classifiers per sample (on half-images resized to the
            # classifier's input, as RS's one full image is): twice RS's classifier FLOPs.
            assert joint["flops_per_sample_classifier"] == pytest.approx(
                2 * rs["flops_per_sample_classifier"], rel=1e-3)
            assert split["flops_per_sample_classifier"] == pytest.approx(
                joint["flops_per_sample_classifier"], rel=1e-2)
        # The model FLOPs do not depend on the precision or on compilation.
        fp32 = preset["precisions"]["fp32"]
        for results in preset["precisions"].values():
            for mode in MODES:
                assert "skipped" in results or (results[mode]["flops_per_sample"]
                                                == fp32[mode]["flops_per_sample"])


def test_rs_classifier_flops_are_one_classifier_call(tiny):
    """RS's classifier FLOPs per sample: one call of the classifier alone on one image at
    its input size (the pipeline resizes the denoised image to it; the tiny ImageNet
    preset's 48 px differ from its 32-px images), counted apart from the suite."""
    suite, report = tiny
    for preset in suite.TINY:
        classifier = suite.build_classifier(preset)
        image = torch.rand(1, 3, preset.classifier_size, preset.classifier_size)
        with torch.backends.nnpack.flags(enabled=False), torch.no_grad(), \
                FlopCounterMode(display=False) as counter:
            classifier(image)
        expected = counter.get_total_flops()
        assert expected > 0
        measured = report["presets"][preset.name]["precisions"]
        for precision in ("fp32", "bf16"):
            assert measured[precision]["rs"]["flops_per_sample_classifier"] == expected


def test_mfu_is_rate_times_flops_over_peak():
    suite = load_module(SCRIPT, "gpu_suite_mfu")
    flops = {"flops_per_sample": 2e9, "flops_per_sample_denoiser": 1.5e9,
             "flops_per_sample_classifier": 0.5e9}
    row = suite.add_mfu({"samples_per_s": 1000.0}, flops, "NVIDIA H200", "bf16")
    assert row["peak_flops"] == 989e12 and row["peak_source"] == "H200 bf16 dense"
    assert row["mfu"] == pytest.approx(1000 * 2e9 / 989e12)
    row = suite.add_mfu({"samples_per_s": 1000.0}, flops, "NVIDIA A100-SXM4-40GB", "fp32")
    assert row["peak_flops"] == 156e12 and row["mfu"] == pytest.approx(2e12 / 156e12)
    row = suite.add_mfu({"samples_per_s": 1000.0}, flops, "Some GPU", "bf16")
    assert row["mfu"] is None and row["peak_flops"] is None
    assert row["peak_source"] == "unknown device 'Some GPU'"


@pytest.mark.parametrize(("name", "row", "bf16", "tf32"), [
    ("NVIDIA H200", "H200", 989e12, 494.7e12),
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989e12, 494.7e12),
    ("NVIDIA H100 SXM5 80GB", "H100 SXM", 989e12, 494.7e12),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756e12, 378e12),
    ("NVIDIA A100-SXM4-80GB", "A100", 312e12, 156e12),
    ("NVIDIA A100-PCIE-40GB", "A100", 312e12, 156e12),
])
def test_peak_table_lookup(name, row, bf16, tf32):
    suite = load_module(SCRIPT, "gpu_suite_peaks")
    assert suite.peak_row(name) == row
    assert suite.peak_flops(name, "fp32") == (tf32, f"{row} tf32 dense")
    for precision in ("bf16", "bf16+compile", "bf16+cudagraphs"):
        assert suite.peak_flops(name, precision) == (bf16, f"{row} bf16 dense")


@pytest.mark.parametrize("name", ["NVIDIA H200 NVL", "NVIDIA H100 NVL", "NVIDIA L4",
                                  "NVIDIA GeForce RTX 4090", "Tesla V100-SXM2-16GB"])
def test_peak_table_refuses_devices_it_does_not_hold(name):
    suite = load_module(SCRIPT, "gpu_suite_unknown")
    assert suite.peak_row(name) is None
    assert suite.peak_flops(name, "bf16") == (None, f"unknown device {name!r}")
    assert suite.peak_flops(None, "fp32") == (None, "not a CUDA device")
    with pytest.raises(ValueError, match="precision"):
        suite.peak_flops("NVIDIA H200", "fp16")


def test_budget_skips_compilation_and_keeps_the_rest(tmp_path, capsys):
    suite = load_module(SCRIPT, "gpu_suite_budget")
    out = tmp_path / "suite.json"
    assert suite.main(["--tiny", "--budget", "0", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    for preset in report["presets"].values():
        for precision in ("bf16+compile", "bf16+cudagraphs"):
            assert "skipped" in preset["precisions"][precision]
        assert "skipped" in preset["auto_batch"]
        assert preset["precisions"]["bf16"]["rs"]["samples_per_s"] > 0 and preset["smoke"]["ok"]
    # Without compiled rates the hours fall back to eager bf16.
    assert {row["precision"] for row in report["expected_gpu_hours"].values()} == {"bf16"}
    assert "skipped (over --budget)" in capsys.readouterr().out
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="--budget"):
            suite.parse_args(["--tiny", "--budget", bad, "--out", str(out)])


def test_compare_reports_ratios_and_targets(tiny, tmp_path):
    suite, report = tiny
    compare = load_module(SCRIPT.with_name("gpu_compare.py"), "gpu_compare")
    before = json.loads(json.dumps(report))
    for preset in before["presets"].values():
        for rows in preset["precisions"].values():
            for mode in MODES:
                if mode in rows:
                    rows[mode]["samples_per_s"] /= 2
    before_path, after_path = tmp_path / "before.json", tmp_path / "after.json"
    before_path.write_text(json.dumps(before))
    after_path.write_text(json.dumps(report))
    out = tmp_path / "ratios.json"
    assert compare.main([str(before_path), str(after_path), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ratios"]["cifar10-50M bf16"] == pytest.approx(
        {mode: 2.0 for mode in MODES})
    # CUDA graphs were skipped on the CPU; the CPU has no MFU, so no MFU target is met.
    assert "cifar10-50M bf16+cudagraphs" in result["missing"]
    targets = result["targets"]["imagenet-552M"]
    assert targets["bf16+compile mfu met"] is False and "eager bf16 / fp32" in targets
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ValueError, match="not a GPU suite report"):
        compare.main([str(tmp_path / "bad.json"), str(after_path)])


def test_presets_and_precisions_select_what_runs(tmp_path):
    suite = load_module(SCRIPT, "gpu_suite_select")
    out = tmp_path / "suite.json"
    assert suite.main(["--tiny", "--presets", "cifar10-50M", "--precisions", "fp32",
                       "--no-auto-batch", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["presets"]) == ["cifar10-50M"]
    preset = report["presets"]["cifar10-50M"]
    # bf16 always runs: the hours need it.
    assert set(preset["precisions"]) == {"fp32", "bf16"} and "auto_batch" not in preset
    assert {row["preset"] for row in report["expected_gpu_hours"].values()} == {"cifar10-50M"}
