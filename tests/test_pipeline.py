"""Pipeline composition: the certificate follows the configuration; bad settings fail early."""

import json
from pathlib import Path

import pytest
import torch

from denoised_drs.data import load_sample
from denoised_drs.modes import CertificateKind
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig

FAST = {"n0": 10, "n": 40, "batch": 25, "device": "cpu"}


@pytest.fixture(scope="module")
def sample():
    data = load_sample()
    images = torch.stack([data[i][0] for i in range(3)])
    labels = [data[i][1] for i in range(3)]
    return images, labels


def test_rs_and_drs_records(tiny_checkpoints, sample):
    images, labels = sample
    rs = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], sigma=0.25, **FAST)
    records = rs.certify(images, labels, indices=[0, 100, 200])
    assert [r.idx for r in records] == [0, 100, 200]
    assert all(len(r.p_lower) == 1 and r.radius_paper is None for r in records)
    assert all(r.correct == int(r.predict == r.label) for r in records)
    drs = Pipeline(mode="drs", classifier_l=tiny_checkpoints["l"],
                   classifier_r=tiny_checkpoints["r"], sigma=0.18, sigma_r=0.3, **FAST)
    assert drs.config.certificate == "independent"
    assert drs.smoothed.kind is drs.config.certificate is CertificateKind.INDEPENDENT
    # The same index gives the same certificate; another index other noise. The noisy
    # sub-images the voter sees are recorded, since a tiny model's counts may coincide.
    seen = []
    hook = drs.smoothed.voter.register_forward_hook(
        lambda module, args, out: seen.append(args[0][0].clone()))

    def certify_and_record_noise(idx):
        seen.clear()
        return drs.certify_one(images[0], labels[0], idx), torch.cat(seen)

    record, noisy = certify_and_record_noise(0)
    assert len(record.p_lower) == 2 and sum(record.counts_top) <= 80
    again, noisy_again = certify_and_record_noise(0)
    assert again.counts_top == record.counts_top and torch.equal(noisy_again, noisy)
    _, noisy_other = certify_and_record_noise(1)
    hook.remove()
    assert noisy_other.shape == noisy.shape and not torch.equal(noisy_other, noisy)
    assert len(drs.predict(images[:2])) == 2


def test_denoised_modes_pick_their_certificates(tiny_checkpoints, sample):
    images, labels = sample
    common = {"mode": "drs", "classifier_l": tiny_checkpoints["l"],
              "classifier_r": tiny_checkpoints["r"], "denoiser": tiny_checkpoints["denoiser"],
              "sigma": 0.25, **FAST}
    joint = Pipeline(**common, denoise="joint")
    assert joint.config.certificate == "coupled"
    assert joint.smoothed.kind is joint.config.certificate is CertificateKind.COUPLED
    record = joint.certify_one(images[1], labels[1], 1)
    assert record.radius_paper is not None and record.radius_paper >= record.radius
    split = Pipeline(**common, denoise="split")
    assert split.config.certificate == "independent"
    assert split.smoothed.kind is split.config.certificate is CertificateKind.INDEPENDENT
    assert split.certify_one(images[1], labels[1], 1).radius_paper is None
    denoised_rs = Pipeline(mode="rs", classifier=tiny_checkpoints["full"],
                           denoiser=tiny_checkpoints["denoiser"], sigma=0.5, **FAST)
    assert denoised_rs.config.certificate == "rs"
    assert denoised_rs.smoothed.kind is denoised_rs.config.certificate is CertificateKind.RS
    denoised_rs.check_image_shape((1, 28, 28))
    with pytest.raises(ValueError, match="do not fit"):
        denoised_rs.check_image_shape((1, 32, 32))


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"n0": 50, "n": 40}, "N0"),
        ({"alpha": 1.0}, "alpha"),
        ({"mode": "tri"}, "mode"),
        ({"denoise": "both"}, "denoise"),
        ({"autocast": "fp8"}, "autocast"),
        ({"classifier": []}, "classifier"),
        ({"compile": 1}, "compile must be true, false or null"),
        ({"compile_mode": "fast"}, "compile_mode must be one of"),
        ({"compile": False, "compile_mode": "default"}, "compile is off"),
        ({"batch": "big"}, "batch must be an integer or 'auto'"),
        ({"batch": 0}, "batch must be positive or 'auto'"),
    ],
)
def test_impossible_settings_are_rejected(tiny_checkpoints, bad, message):
    settings = {"mode": "rs", "classifier": tiny_checkpoints["full"], **FAST, **bad}
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**settings)


def test_missing_checkpoint_and_odd_image_size(tiny_checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        Pipeline(mode="rs", classifier=str(tmp_path / "nowhere.pt"), **FAST)
    drs = Pipeline(mode="drs", classifier_l=tiny_checkpoints["l"],
                   classifier_r=tiny_checkpoints["r"], **FAST)
    with pytest.raises(ValueError, match="even"):
        drs.check_image_shape((1, 27, 28))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_files_round_trip(tiny_checkpoints, tmp_path, suffix):
    pipe = Pipeline(mode="drs", classifier_l=tiny_checkpoints["l"],
                    classifier_r=tiny_checkpoints["r"], sigma=0.18, **FAST)
    saved = tmp_path / "config.json"
    pipe.save_config(saved)
    values = json.loads(saved.read_text())
    path = tmp_path / f"again{suffix}"
    if suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(values))
    else:
        path.write_text(json.dumps(values))
    assert Pipeline.from_file(path).config == pipe.config
    path.write_text(json.dumps({**values, "sigmaa": 1}))
    with pytest.raises(ValueError, match="unknown configuration keys"):
        PipelineConfig.from_file(path)
    # Keyword arguments get the same one-line message, not the dataclass's TypeError.
    with pytest.raises(ValueError, match=r"unknown configuration keys \['sigmaa'\]"):
        Pipeline(**{**values, "sigmaa": 1})


def test_several_checkpoints_make_an_ensemble(tiny_checkpoints, sample):
    from denoised_drs.models import EnsembleClassifier

    images, labels = sample
    single = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], sigma=0.25, **FAST)
    twice = Pipeline(mode="rs", classifier=[tiny_checkpoints["full"]] * 2, sigma=0.25, **FAST)
    assert isinstance(twice.smoothed.voter.classifiers[0], EnsembleClassifier)
    # Averaging a model's logits with its own changes nothing.
    assert (twice.certify_one(images[0], labels[0], 0).counts_top
            == single.certify_one(images[0], labels[0], 0).counts_top)


def test_config_types_are_checked_and_numpy_scalars_stored_as_python_numbers():
    import numpy as np

    config = PipelineConfig(mode="rs", classifier=Path("c.pt"), n=np.int64(500),
                            sigma=np.float32(0.25), denoiser=Path("d.pt"))
    assert (type(config.n), type(config.sigma), config.denoiser, config.classifier) == (
        int, float, "d.pt", ["c.pt"])
    json.dumps(config.to_dict())  # saved beside every result
    for bad in ({"n": "abc"}, {"batch": 1.5}, {"seed": True}, {"sigma": float("nan")},
                {"sigma": 1e300}, {"alpha": None}, {"device": 3}, {"classifier": 5}):
        with pytest.raises(ValueError, match="must be"):
            PipelineConfig(**{"mode": "rs", "classifier": "c.pt", **bad})


def test_labels_outside_the_classes_are_refused(tiny_checkpoints, sample):
    images, _ = sample
    pipe = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], sigma=0.25, **FAST)
    for label in (-1, 10):
        with pytest.raises(ValueError, match=rf"label {label} of image 0 lies outside \[0, 10\)"):
            pipe.certify_one(images[0], label, 0)


def test_a_saved_result_configuration_is_read_back(tiny_checkpoints, tmp_path):
    pipe = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], sigma=0.25, dataset="sample",
                    **FAST)
    saved = tmp_path / "out.tsv.config.json"
    pipe.save_config(saved, {"dataset": "sample", "data_dir": None, "skip": 2, "max": 9,
                             "content": {"classifier": []}})
    assert Pipeline.from_file(saved).config == pipe.config


def test_certify_dataset_refuses_bad_labels_before_writing(tiny_checkpoints, sample, tmp_path):
    from denoised_drs.runner import certify_dataset

    images, _ = sample
    pipe = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], sigma=0.25, **FAST)
    dataset = [(images[0], 0), (images[1], 12)]
    with pytest.raises(ValueError, match=r"image 1 has label 12, outside \[0, 10\)"):
        certify_dataset(pipe, dataset, [0, 1], tmp_path / "r.tsv", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_images_outside_unit_range_are_refused(tiny_checkpoints, sample):
    images, labels = sample
    rs = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], sigma=0.25, **FAST)
    for bad in (images * 255, (images * 255).to(torch.uint8)):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            rs.certify(bad, labels)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            rs.predict(bad)
    nan = images.clone()
    nan[1, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        rs.certify(nan, labels)


def test_fp16_autocast_on_a_cpu_is_refused_before_any_model_loads(tiny_checkpoints):
    with pytest.raises(ValueError, match="fp16 autocast on a CPU"):
        Pipeline(mode="rs", classifier=tiny_checkpoints["full"], sigma=0.25,
                 denoiser=tiny_checkpoints["denoiser"], autocast="fp16", device="cpu")


def test_compile_traces_the_whole_step_into_one_graph(tiny_checkpoints, sample, compile_calls):
    # One graph for noise -> denoiser -> classifier -> votes: no graph break (a break
    # would trace several) and no recompilation for the short last batches of N0 = 10
    # and N = 40 at batch 16 (padded to the full batch).
    graphs = compile_calls.graphs
    images, labels = sample
    common = {"mode": "rs", "classifier": tiny_checkpoints["full"],
              "denoiser": tiny_checkpoints["denoiser"], "sigma": 0.5, **FAST, "batch": 16}
    eager = Pipeline(**common)
    pipe = Pipeline(**common, compile=True)
    assert eager.compile_mode is None and pipe.compile_mode == "default"
    pipe.check_image_shape((1, 28, 28))  # its one-image probe runs the voter eagerly
    assert graphs == []
    compiled = pipe.certify_one(images[1], labels[1], 1)
    assert len(graphs) == 1 and len(compile_calls.modules) == 1
    assert compiled.n_used == FAST["n"]
    # The fixture's backend runs the traced operations eagerly: the same numbers.
    reference = eager.certify_one(images[1], labels[1], 1)
    assert (compiled.predict, compiled.radius) == (reference.predict, reference.radius)
    pipe.certify_one(images[2], labels[2], 2)
    assert len(graphs) == 1  # another image: the same graph
    assert PipelineConfig.from_dict(pipe.config.to_dict()).compile is True


def test_compile_defaults_to_on_for_cuda_only(tiny_checkpoints):
    from denoised_drs.pipeline import _compile_mode

    config = PipelineConfig(mode="rs", classifier=tiny_checkpoints["full"], **FAST)
    assert _compile_mode(config, torch.device("cpu")) is None
    assert _compile_mode(config, torch.device("cuda")) == "default"
    off = PipelineConfig(mode="rs", classifier=tiny_checkpoints["full"], compile=False, **FAST)
    assert _compile_mode(off, torch.device("cuda")) is None
    graphs = PipelineConfig(mode="rs", classifier=tiny_checkpoints["full"], **FAST,
                            compile_mode="reduce-overhead")
    assert _compile_mode(graphs, torch.device("cuda")) == "reduce-overhead"
    assert _compile_mode(graphs, torch.device("cpu")) is None


def test_auto_batch_on_a_cpu_is_the_cpu_default_capped_by_the_samples(tiny_checkpoints, sample,
                                                                       capsys):
    from denoised_drs.pipeline_config import CPU_AUTO_BATCH

    images, labels = sample
    pipe = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], **{**FAST, "batch": "auto"})
    assert pipe.batch is None
    record = pipe.certify_one(images[0], labels[0], 0)
    assert pipe.batch == min(CPU_AUTO_BATCH, max(FAST["n0"], FAST["n"])) == FAST["n"]
    assert pipe.batch_note == "batch 40: the CPU default 1000, at most max(N0, N) = 40"
    assert capsys.readouterr().err == ""  # printed where measured (CUDA) only
    # Results do not depend on the batch.
    fixed = Pipeline(mode="rs", classifier=tiny_checkpoints["full"], **FAST)
    assert fixed.certify_one(images[0], labels[0], 0).radius == record.radius


def test_bf16_on_a_cpu_without_native_bf16_warns(tiny_checkpoints, monkeypatch):
    import warnings

    from denoised_drs import diffusion

    settings = {"mode": "rs", "classifier": tiny_checkpoints["full"], **FAST, "autocast": "bf16"}
    monkeypatch.setattr(diffusion, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="no native bf16"):
        Pipeline(**settings)
    monkeypatch.setattr(diffusion, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Pipeline(**settings)


def test_auto_batch_halves_after_an_out_of_memory_error_and_certifies_the_same(
        tiny_checkpoints, sample, capsys):
    images, labels = sample
    settings = {"mode": "rs", "classifier": tiny_checkpoints["full"], **FAST,
                "n0": 100, "n": 400}
    reference = Pipeline(**settings).certify_one(images[0], labels[0], 0)
    pipe = Pipeline(**{**settings, "batch": "auto"})
    pipe.check_image_shape(tuple(images[0].shape))
    assert pipe.batch == 400
    sample_counts = pipe.smoothed.sample_counts
    seen = []

    def out_of_memory_above_150(x, num, batch_size, *args, **kwargs):
        seen.append(batch_size)
        if batch_size > 150:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return sample_counts(x, num, batch_size, *args, **kwargs)

    pipe.smoothed.sample_counts = out_of_memory_above_150
    record = pipe.certify_one(images[0], labels[0], 0)
    # Halved to whole 64-sample blocks: 400 -> 200 -> 192, then 96 -> 64; the same
    # certificate.
    assert seen[:3] == [400, 192, 64] and pipe.batch == 64
    assert (record.predict, record.radius) == (reference.predict, reference.radius)
    assert "out of memory at batch 192: batch 64 from now on" in capsys.readouterr().err
    assert pipe.batch_note.endswith("out of memory at batch 192, batch 64 from then on")
    # A fixed batch is the user's: the error goes through.
    fixed = Pipeline(**{**settings, "batch": 400})
    fixed.smoothed.sample_counts = out_of_memory_above_150
    with pytest.raises(torch.cuda.OutOfMemoryError):
        fixed.certify_one(images[0], labels[0], 0)
