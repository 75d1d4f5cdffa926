import pytest
import torch

from drsan_kit.core import qat
from drsan_kit.core.checkpoint import load_checkpoint, save_checkpoint
from drsan_kit.core.equalize import carry_ranges, channel_ranges, equalize_direct_path, fill_factors
from drsan_kit.core.model import build_model

from conftest import randomised, run_tool


def _randomised(scale, order="crd"):
    m = randomised(build_model("32s", scale, upsample_order=order))
    with torch.no_grad():
        # uneven channels, as trained direct paths have them
        for conv in (m.head, m.tail, *m.upsampler.convs):
            conv.weight.mul_(torch.rand(conv.out_channels, 1, 1, 1) * 3 + 0.2)
    return m


def _spread(lo, hi):
    """Mean over channels of (channel range / tensor range)^2: 1 when every channel fills the tensor."""
    return float((((hi - lo) / (hi.max() - lo.min())) ** 2).mean())


@pytest.mark.parametrize("scale,order", [(2, "crd"), (3, "dcr"), (4, "crd"), (4, "dcr")])
def test_equalized_model_computes_the_same_and_fills_the_channels(scale, order):
    model = _randomised(scale, order)
    images = torch.rand(4, 3, 20, 24)
    eq, factors = equalize_direct_path(model, images)
    assert model.skip_head is None and eq.skip_head is not None
    x = torch.rand(2, 3, 17, 19)
    with torch.no_grad():
        assert torch.allclose(model(x), eq(x), atol=1e-5)
    assert all(f["min"] >= 1.0 - 1e-6 for f in factors.values()) and factors["up0"]["max"] > 1.2
    # every rescaled tensor: channels closer to filling the tensor's range, and the range not wider
    before = channel_ranges(_with_plain_skip_head(model), images)
    after = channel_ranges(eq, images)
    for name in ("skip", "sum", "up0"):
        assert _spread(*after[name]) > _spread(*before[name])
        assert after[name][1].max() <= before[name][1].max() * (1 + 1e-5)
        assert after[name][0].min() >= before[name][0].min() * (1 + 1e-5)


def _with_plain_skip_head(model):
    import copy

    m = copy.deepcopy(model)
    m.skip_head = copy.deepcopy(m.head)
    return m


def test_fill_factors_fit_each_channel_into_the_box():
    lo, hi = torch.tensor([-1.0, -0.1, 0.0, -0.5]), torch.tensor([1.0, 0.5, 0.25, 0.0])
    s = fill_factors(lo, hi, -1.0, 1.0)
    assert torch.allclose(s, torch.tensor([1.0, 2.0, 4.0, 2.0]))


def test_equalized_checkpoint_round_trips(tmp_path):
    eq, _ = equalize_direct_path(_randomised(2), torch.rand(2, 3, 16, 16))
    path = save_checkpoint(tmp_path / "eq.pt", eq)
    back, blob = load_checkpoint(path)
    assert blob["skip_head"] and back.skip_head is not None
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(back(x), eq(x))


def test_carried_ranges_keep_the_untouched_and_rescale_the_rest():
    model = _randomised(2)
    images = torch.rand(3, 3, 20, 20)
    sim = qat.prepare(model)
    learned = {n: [0.8 * lo, 0.9 * hi] for n, (lo, hi) in qat.recorded_ranges(sim, images).items()
               if n in qat.act_quants(sim)}
    eq, _ = equalize_direct_path(model, images)
    carried = carry_ranges(model, learned, eq, images)
    eq_sim = qat.prepare(eq)
    qat.load_ranges(eq_sim, carried)   # fits the equalized graph: no unknown or missing names
    new_rec = qat.recorded_ranges(eq_sim, images)
    node = {n.split("_", 2)[2]: n for n in learned if n.startswith("aq_")}
    head = node["head"]
    assert carried[head] == learned[head]   # DRAG 0 still reads the head's own features
    skip = next(n for n in carried if n.endswith("_skip_head"))
    lo, hi = new_rec[skip]
    assert carried[skip] == pytest.approx([0.8 * lo, 0.9 * hi], rel=1e-4)
    # the upsampler conv's channels now fill the range its widest channels set: the range stays
    up = next(n for n in carried if n.endswith("_upsampler_convs_0"))
    assert carried[up] == learned[node["upsampler_convs_0"]]


def test_cli_refuses_to_overwrite_its_input_and_to_equalize_twice(tmp_path):
    eq, _ = equalize_direct_path(_randomised(2), torch.rand(2, 3, 16, 16))
    path = save_checkpoint(tmp_path / "eq.pt", eq)
    for out in (path, tmp_path / "again.pt"):
        r = run_tool("core/equalize.py", "--weights", path, "--data", tmp_path, "--out", out, check=False)
        assert r.returncode == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "again.pt").exists()
