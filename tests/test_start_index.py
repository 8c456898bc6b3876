"""``--start``: completing an every-20th run into an every-10th one gives the same rows."""

from __future__ import annotations

import pytest

from denoised_drs.runner import select_indices


def test_start_selects_the_images_an_every_skip_run_left_out():
    evens = select_indices(100, 20)
    odds = select_indices(100, 20, start=10)
    assert odds == [10, 30, 50, 70, 90]
    assert sorted(evens + odds) == select_indices(100, 10)
    assert select_indices(100, 20, 45, start=10) == [10, 30]


@pytest.mark.parametrize("start", [-1, 1.5, True, 100])
def test_a_start_that_selects_nothing_or_is_no_index_is_refused(start):
    with pytest.raises(ValueError, match="start"):
        select_indices(100, 20, start=start)


def test_the_cli_completes_an_every_other_run_with_the_rows_of_an_every_image_run(tmp_path):
    import contextlib
    import io
    import json
    from pathlib import Path

    import torch
    from module_files import load_module

    from denoised_drs.cli import run_script
    from denoised_drs.models import ClassifierSpec, create_model, save_classifier

    script = load_module(Path(__file__).resolve().parents[1] / "scripts" / "certify_diffusion.py",
                         "certify_start")

    def run(*argv: str) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                run_script(lambda: script.main(list(argv)), "certify_diffusion.py")
            except SystemExit as stop:
                return stop.code or 0, err.getvalue()
        return 0, err.getvalue()

    torch.manual_seed(0)
    spec = ClassifierSpec.for_dataset("small_cnn", "fashion-mnist", sigma=0.25)
    save_classifier(tmp_path / "c.pt", create_model(spec.arch, **spec.model_options()), spec)
    common = ["--dataset", "sample", "--mode", "rs", "--classifier", str(tmp_path / "c.pt"),
              "--sigma", "0.25", "--N0", "10", "--N", "50", "--max", "6", "--device", "cpu"]
    assert run(*common, "--outfile", str(tmp_path / "all.tsv"))[0] == 0
    odd = ["--skip", "2", "--start", "1", "--outfile", str(tmp_path / "odd.tsv")]
    assert run(*common, *odd)[0] == 0

    def rows(name: str) -> dict[str, list[str]]:
        lines = (tmp_path / name).read_text().splitlines()[1:]
        # every column but time (index 5)
        return {line.split("\t")[0]: line.split("\t")[:5] + line.split("\t")[6:] for line in lines}

    every = rows("all.tsv")
    assert rows("odd.tsv") == {idx: every[idx] for idx in ("1", "3", "5")}
    saved = json.loads((tmp_path / "odd.tsv.config.json").read_text())
    assert saved["start"] == 1 and saved["content"]["data"]["indices"]["start"] == 1
    status, err = run(*common, "--skip", "2", "--start", "0",
                      "--outfile", str(tmp_path / "odd.tsv"))
    assert status == 2 and "start was 1, now None" in err
