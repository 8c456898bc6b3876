"""Winograd 3x3 convolutions (NNPACK) for CPU inference: when they are taken, and that
they agree with the direct convolution and do not depend on the batch."""

import copy

import pytest
import torch
from torch import nn
from torch.autograd import forward_ad

from denoised_drs.diffusion import get_preset, winograd
from denoised_drs.diffusion.winograd import MIN_SIDE, WinogradConv2d, nnpack_ready, use_winograd

needs_nnpack = pytest.mark.skipif(not nnpack_ready(), reason="this torch build has no NNPACK")


@pytest.fixture(autouse=True)
def winograd_wherever_eligible():
    """The tests below check the Winograd path itself, on any CPU: not only where it pays."""
    previous = winograd.set_winograd(True)
    yield
    winograd.set_winograd(previous)


def winograd_conv(cin: int = 8, cout: int = 16) -> tuple[WinogradConv2d, nn.Conv2d]:
    torch.manual_seed(0)
    direct = nn.Conv2d(cin, cout, 3, padding=1)
    fast = copy.deepcopy(direct)
    assert use_winograd(fast) == 1 and type(fast) is WinogradConv2d
    return fast, direct


@needs_nnpack
def test_inference_takes_winograd_and_matches_the_direct_convolution():
    fast, direct = winograd_conv()
    x = torch.randn(5, 8, MIN_SIDE, 24)
    with torch.inference_mode():
        assert fast.uses_winograd(x)
        out, reference = fast(x), direct(x)
        assert not torch.equal(out, reference)  # really another algorithm
        assert torch.allclose(out, reference, rtol=0, atol=1e-4 * reference.abs().max())
        # The same image gives the same bits in any batch (certificates rely on it).
        alone = torch.cat([fast(x[i : i + 1]) for i in range(len(x))])
        assert torch.equal(alone, out)
        # Channels-last input and weights (how the UNet holds them): the same bits.
        fast_cl = copy.deepcopy(fast).to(memory_format=torch.channels_last)
        assert fast_cl.weight.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(fast_cl(x.contiguous(memory_format=torch.channels_last)), out)


@needs_nnpack
def test_wide_layers_are_batch_and_thread_invariant():
    """At 128 channels NNPACK blocks the channels; one image's bits still depend on
    neither its batch nor the thread count."""
    fast, direct = winograd_conv(128, 128)
    x = torch.randn(6, 128, MIN_SIDE, MIN_SIDE)
    threads = torch.get_num_threads()
    outputs = {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with torch.inference_mode():
                assert fast.uses_winograd(x)
                whole = fast(x)
                pieces = torch.cat([fast(x[:1]), fast(x[1:3]), fast(x[3:])])
            assert torch.equal(pieces, whole)
            outputs[count] = whole
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outputs[1], outputs[2])
    with torch.inference_mode():
        reference = direct(x)
    assert torch.allclose(outputs[1], reference, rtol=0, atol=1e-4 * reference.abs().max())


def test_other_calls_run_the_layers_own_forward():
    fast, direct = winograd_conv()
    small = torch.randn(2, 8, MIN_SIDE - 8, MIN_SIDE - 8)
    big = torch.randn(2, 8, MIN_SIDE, MIN_SIDE)
    with torch.inference_mode():
        assert not fast.uses_winograd(small)
        assert torch.equal(fast(small), direct(small))
        assert not fast.uses_winograd(big.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not fast.uses_winograd(big)
            assert torch.equal(fast(big), direct(big))
        with torch.backends.nnpack.flags(enabled=False):  # switched off by the user
            assert not fast.uses_winograd(big)
            assert torch.equal(fast(big), direct(big))
    # Forward-mode AD (NNPACK has no tangent formula): the direct path.
    with torch.no_grad(), forward_ad.dual_level():
        dual = forward_ad.make_dual(big, torch.ones_like(big))
        assert not fast.uses_winograd(dual)
        out = forward_ad.unpack_dual(fast(dual))
        expected = forward_ad.unpack_dual(direct(dual))
        assert torch.equal(out.primal, expected.primal)
        assert torch.equal(out.tangent, expected.tangent)
    # With gradients on (training), the direct path, and gradients flow.
    assert not fast.uses_winograd(big)
    fast(big).sum().backward()
    assert fast.weight.grad is not None and fast.weight.grad.abs().sum() > 0


def test_use_winograd_converts_only_eligible_layers():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1),  # yes
        nn.Conv2d(4, 4, 3, padding=1, stride=2),  # strided: no
        nn.Conv2d(4, 4, 1),  # 1x1: no
        nn.Conv2d(4, 4, 3, padding=1, groups=2),  # grouped: no
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # padding mode: no
        nn.Conv2d(4, 4, 3, padding=1, dilation=2),  # dilated: no
    )
    state = copy.deepcopy(model.state_dict())
    assert use_winograd(model) == 1
    assert [type(m) is WinogradConv2d for m in model] == [True] + [False] * 5
    assert use_winograd(model) == 0  # idempotent
    assert model.state_dict().keys() == state.keys()


@pytest.mark.parametrize("settings", [
    {"kernel_size": 3, "padding": 1, "dilation": 2},
    {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
    {"kernel_size": 3, "padding": 1, "groups": 2},
    {"kernel_size": 3, "padding": 1, "stride": 2},
    {"kernel_size": 5, "padding": 2},
])
def test_a_layer_of_another_shape_always_runs_the_direct_convolution(settings):
    torch.manual_seed(0)
    direct = nn.Conv2d(8, 8, **settings)
    fast = WinogradConv2d(8, 8, **settings)
    fast.load_state_dict(direct.state_dict())
    x = torch.randn(2, 8, MIN_SIDE, MIN_SIDE)
    with torch.inference_mode():
        assert not fast.uses_winograd(x)
        assert torch.equal(fast(x), direct(x))


@needs_nnpack
def test_unet_denoises_within_rounding_of_the_direct_path():
    """The preset UNets convert their 3x3 layers; outputs agree with the direct path."""
    torch.manual_seed(1)
    network = get_preset("improved-small").build_network().eval()
    direct = copy.deepcopy(network)
    for module in direct.modules():
        if type(module) is WinogradConv2d:
            module.__class__ = nn.Conv2d
    converted = sum(type(m) is WinogradConv2d for m in network.modules())
    assert converted > 10
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([100, 500, 900])
    with torch.inference_mode():
        out, reference = network(x, t), direct(x, t)
    assert not torch.equal(out, reference)
    assert (out - reference).abs().max() < 1e-4


@needs_nnpack
def test_torch_compile_traces_the_direct_path():
    # The NNPACK op has no meta kernel: tracing it fails, so compiled code must not see it.
    fast, direct = winograd_conv()
    compiled = torch.compile(fast, backend="eager")
    x = torch.randn(2, 8, MIN_SIDE, MIN_SIDE)
    with torch.inference_mode():
        assert fast.uses_winograd(x)  # eager calls still take Winograd
        assert torch.equal(compiled(x), direct(x))


@needs_nnpack
@pytest.mark.parametrize("faster", [True, False])
def test_winograd_is_taken_only_where_a_timed_layer_ran_faster(monkeypatch, faster):
    winograd.set_winograd(None)
    winograd._calibrated.cache_clear()
    timed = []

    def fake_best_seconds(run, repeats=3):
        timed.append(run)
        # direct first, then Winograd: 1.0 s against 0.5 s (or 2.0 s when slower).
        return 1.0 if len(timed) % 2 else (0.5 if faster else 2.0)

    monkeypatch.setattr(winograd, "_best_seconds", fake_best_seconds)
    fast, direct = winograd_conv()
    try:
        with torch.inference_mode():
            for batch in (1, 7):  # the choice never reads the caller's batch
                x = torch.randn(batch, 8, MIN_SIDE, MIN_SIDE)
                assert fast.uses_winograd(x) is faster
                assert torch.equal(fast(x), direct(x)) is not faster
    finally:
        winograd._calibrated.cache_clear()
    assert len(timed) == 2  # timed once (per thread count), not per call
    assert winograd.set_winograd(False) is None
    with torch.inference_mode():
        assert not fast.uses_winograd(torch.randn(1, 8, MIN_SIDE, MIN_SIDE))


def test_set_winograd_takes_only_true_false_or_none():
    for value in ("off", 0, 1, "on"):
        with pytest.raises(ValueError, match="True, False or None"):
            winograd.set_winograd(value)
    assert winograd.winograd_pays() is True  # the fixture's setting is kept


@needs_nnpack
def test_a_failing_timing_means_the_direct_path(monkeypatch):
    winograd.set_winograd(None)
    winograd._calibrated.cache_clear()

    def refuse(*args, **kwargs):
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    fast, direct = winograd_conv()
    try:
        x = torch.randn(2, 8, MIN_SIDE, MIN_SIDE)
        with torch.inference_mode():
            assert not fast.uses_winograd(x) and torch.equal(fast(x), direct(x))
    finally:
        winograd._calibrated.cache_clear()


@needs_nnpack
def test_the_real_timing_decides_once_per_thread_count():
    winograd.set_winograd(None)
    winograd._calibrated.cache_clear()
    try:
        choice = winograd.winograd_pays()
        assert isinstance(choice, bool) and winograd.winograd_pays() is choice
        assert winograd._calibrated.cache_info().misses == 1
    finally:
        winograd._calibrated.cache_clear()
