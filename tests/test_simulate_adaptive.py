"""benchmarks/simulate_adaptive.py: adaptive certification simulated on vote counts."""

import json
from pathlib import Path

import pytest
from module_files import load_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "simulate_adaptive.py"
HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA\tcount\tnonfinite\tn_used"


def load_script():
    return load_module(SCRIPT, "simulate_adaptive")


def test_a_larger_tolerance_draws_fewer_samples_and_never_adds_radius(tmp_path, capsys):
    rows = [(0, 1, 1, 1, 10000), (1, 2, 2, 1, 9990), (2, 3, 3, 1, 9000), (3, 4, 5, 0, 8000)]
    lines = [HEADER] + [f"{i}\t{label}\t{pred}\t0.5\t{ok}\t1.0\t0.9\t{count}\t0\t10000"
                        for i, label, pred, ok, count in rows]
    (tmp_path / "fixed.tsv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "sim.json"
    assert load_script().main([str(tmp_path / "fixed.tsv"), "--kind", "rs", "--sigma", "0.25",
                               "--n-max", "20000", "--tolerance", "0.0125", "0.1",
                               "--json", str(out)]) == 0
    assert "4 images of" in capsys.readouterr().out
    fixed, default, loose = json.loads(out.read_text())["rows"]
    assert fixed["mean_n_used"] == 20000 and fixed["acr"] > 0
    assert loose["mean_n_used"] < default["mean_n_used"] <= 20000
    assert loose["acr"] < default["acr"] <= fixed["acr"] + 0.01


def test_a_file_without_counts_is_refused(tmp_path):
    (tmp_path / "plain.tsv").write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
                                        "0\t1\t1\t0.5\t1\t1.0\n")
    with pytest.raises(ValueError, match="n_used"):
        load_script().main([str(tmp_path / "plain.tsv"), "--sigma", "0.25",
                            "--tolerance", "0.05"])
