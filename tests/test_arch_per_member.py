"""`arch` as one name per ensemble member: checked against the ensembles' sizes."""

import pytest

from denoised_drs.pipeline_config import PipelineConfig

FAST = {"n0": 10, "n": 40, "batch": 25, "device": "cpu"}


def test_one_architecture_per_member_is_kept_and_one_name_stays_a_name():
    config = PipelineConfig(mode="rs", classifier=["a.pt", "b.pt"],
                            arch=["cifar_resnet20", "small_cnn"], **FAST)
    assert config.arch == ["cifar_resnet20", "small_cnn"]
    assert PipelineConfig(mode="rs", classifier=["a.pt"], arch=["resnet50"], **FAST).arch == (
        "resnet50")
    drs = PipelineConfig(mode="drs", classifier_l=["a.pt", "b.pt"],
                         classifier_r=["c.pt", "d.pt"], arch=["resnet50", "small_cnn"], **FAST)
    assert drs.arch == ["resnet50", "small_cnn"]


@pytest.mark.parametrize("settings, message", [
    ({"mode": "rs", "classifier": ["a.pt", "b.pt", "c.pt"], "arch": ["x", "y"]},
     "2 architectures.*classifier has 3"),
    ({"mode": "drs", "classifier_l": ["a.pt", "b.pt"], "classifier_r": ["c.pt"],
      "arch": ["x", "y"]}, "classifier_r has 1"),
    ({"mode": "rs", "classifier": ["a.pt"], "arch": []}, "arch must name"),
    ({"mode": "rs", "classifier": ["a.pt"], "arch": ["x", ""]}, "arch must name"),
    ({"mode": "rs", "classifier": ["a.pt"], "arch": 3}, "arch must name"),
])
def test_an_arch_list_that_does_not_fit_the_ensembles_is_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**settings, **FAST)
