"""Inference rewrites: same function (to float rounding), BatchNorm gone where traceable."""

import pytest
import torch
from torch import nn

from denoised_drs.models import (
    EnsembleClassifier,
    NormalizedClassifier,
    SmallCNN,
    SubImageClassifier,
    fold_batchnorm,
    prepare_for_inference,
)


def _trained_like(seed: int) -> nn.Module:
    # Non-trivial running statistics, so a wrong fold would show.
    torch.manual_seed(seed)
    model = NormalizedClassifier(SmallCNN(), (0.3,), (0.35,))
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.rand(64, 1, 28, 28) * 2)
    return model.eval()


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("wrap", ["plain", "sub_image", "ensemble"])
def test_prepared_classifier_computes_the_same_logits(wrap):
    if wrap == "plain":
        model, x = _trained_like(0), torch.rand(32, 1, 28, 28)
    elif wrap == "sub_image":
        # SubImageClassifier checks shapes in Python, so fx cannot trace it whole:
        # the fold must reach the network inside it.
        model, x = SubImageClassifier(_trained_like(1), (28, 28)).eval(), torch.rand(32, 1, 28, 14)
    else:
        model, x = (EnsembleClassifier([_trained_like(2), _trained_like(3)]).eval(),
                    torch.rand(32, 1, 28, 28))
    with torch.inference_mode():
        expected = model(x)
    batchnorms = _batchnorms(model)
    prepared = prepare_for_inference(model, "cpu")
    assert batchnorms > 0 and _batchnorms(prepared) == 0 and _batchnorms(model) == batchnorms
    with torch.inference_mode():
        got = prepared(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_untraceable_module_is_copied_and_still_works():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(1)

        def forward(self, x):
            return self.bn(x) if x.sum() > 0 else -x

    model = DataDependent().eval()
    x = torch.rand(4, 1, 3, 3)
    folded = fold_batchnorm(model)
    assert folded is not model and _batchnorms(folded) == 1  # nothing to fold into
    torch.testing.assert_close(folded(x), model(x))
    torch.testing.assert_close(folded(-x), model(-x))


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(SmallCNN().train())
