"""The DRS authors' released partition: exactly their sub-images, a true partition, and
usable in every DRS mode."""

import pytest
import torch

from denoised_drs.partition import Checkerboard, DrsRelease, get_partition
from denoised_drs.pipeline import Pipeline
from denoised_drs.pipeline_config import PipelineConfig

FAST = {"n0": 10, "n": 40, "batch": 25, "device": "cpu"}


def authors_masks(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Their two masks as their code builds them (a re-implementation of the loop read in
    xiasong0501/DRS, DDS/imagenet/DRM.py): walk the even flat indices i; a counter
    decides which pixel of the pair (i, i + 1) goes to the first branch, and it is
    advanced after a pair whenever i is a multiple of the row width."""
    first, second = torch.zeros(height * width, dtype=torch.bool), torch.zeros(
        height * width, dtype=torch.bool)
    count = 0
    for i in range(0, height * width, 2):
        if count % 2 == 0:
            first[i], second[i + 1] = True, True
        else:
            first[i + 1], second[i] = True, True
        if i % width == 0:
            count += 1
    return first.view(height, width), second.view(height, width)


@pytest.mark.parametrize("height, width", [(4, 4), (32, 32), (224, 224), (6, 10)])
def test_the_parts_are_the_authors_sub_images(height, width):
    image = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    parts = DrsRelease().split(image)
    for part, mask in zip(parts, authors_masks(height, width)):
        # Their sub-image keeps, row by row, the pixels of its mask in column order.
        expected = image[..., mask].view(2, 3, height, width // 2)
        assert torch.equal(part, expected)


def test_it_is_a_true_partition_and_differs_from_the_checkerboard_in_the_first_pair():
    index = torch.arange(32 * 32, dtype=torch.float32).view(1, 1, 32, 32)
    left, right = DrsRelease().split(index)
    values = torch.cat([left.flatten(), right.flatten()])
    assert torch.equal(values.sort().values, index.flatten())  # disjoint and covering
    assert torch.equal(DrsRelease().merge((left, right)), index)
    board_l, board_r = Checkerboard().split(index)
    # Their l is our r except the first stored pixel of each row, which is our l's.
    assert torch.equal(left[..., 1:], board_r[..., 1:])
    assert torch.equal(left[..., :1], board_l[..., :1])
    assert torch.equal(right[..., 1:], board_l[..., 1:])
    assert get_partition("drs-release").name == "drs-release"


def test_split_denoising_fills_from_its_own_part_only():
    board = DrsRelease()
    part = torch.rand(3, 1, 8, 4, generator=torch.Generator().manual_seed(1))
    fresh = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    filled = board.fill_missing(0, part, 0.5, fresh)
    assert torch.equal(board.split(filled)[0], part)
    assert torch.isfinite(filled).all()
    again = board.fill_missing(0, part, 0.5, fresh)
    assert torch.equal(again, filled)


@pytest.mark.parametrize("denoise", ["joint", "split"])
def test_the_pipeline_runs_drs_modes_on_it(tiny_checkpoints, denoise):
    pipe = Pipeline(mode="drs", classifier_l=tiny_checkpoints["l"],
                    classifier_r=tiny_checkpoints["r"], denoiser=tiny_checkpoints["denoiser"],
                    denoise=denoise, partition="drs-release", sigma=0.25, **FAST)
    assert isinstance(pipe.smoothed.partition, DrsRelease)
    assert isinstance(pipe.smoothed.voter.partition, DrsRelease)
    pipe.check_image_shape((1, 28, 28))
    record = pipe.certify_one(torch.rand(1, 28, 28), 0, 0)
    assert len(record.p_lower) == 2


def test_a_partition_that_does_not_fit_the_mode_is_refused():
    with pytest.raises(ValueError, match="mode 'drs' needs a partition of two or more parts"):
        PipelineConfig(mode="drs", classifier_l="l.pt", classifier_r="r.pt",
                       partition="identity")
    with pytest.raises(ValueError, match="mode 'rs' needs a partition of one part"):
        PipelineConfig(mode="rs", classifier="c.pt", partition="drs-release")
    with pytest.raises(ValueError, match="unknown partition 'tartan'"):
        PipelineConfig(mode="drs", classifier_l="l.pt", classifier_r="r.pt",
                       partition="tartan")


def test_naming_the_modes_own_partition_is_the_default():
    config = PipelineConfig(mode="drs", classifier_l="l.pt", classifier_r="r.pt",
                            partition="checkerboard")
    assert config.partition is None


def test_filled_pixels_carry_noise_of_the_branch_sigma():
    """With a constant image, each missing pixel of the authors' partition (2, 3 or 4
    observed neighbours) has noise of std sigma, like the observed ones."""
    board = DrsRelease()
    sigma = 0.3
    noisy = 0.5 + sigma * torch.randn(4000, 1, 6, 3, generator=torch.Generator().manual_seed(3))
    fresh = torch.randn(4000, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    filled = board.fill_missing(0, noisy, sigma, fresh)
    missing = board.split(filled)[1]
    assert torch.allclose(missing.mean(0), torch.full((1, 6, 3), 0.5), atol=0.03)
    assert torch.allclose(missing.std(0), torch.full((1, 6, 3), sigma), rtol=0.05)
