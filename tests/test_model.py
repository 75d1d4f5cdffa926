import pytest
import torch

from conftest import randomised
from drsan_kit.core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from drsan_kit.core.model import build_model, count_macs, count_params
from drsan_kit.core.variants import PAPER_GMACS, PAPER_PARAMS, SCALES, VARIANTS

ALL = [(v, s) for v in VARIANTS for s in SCALES]


@pytest.mark.parametrize("variant,scale", ALL)
def test_parameter_counts_equal_facts(variant, scale):
    assert count_params(build_model(variant, scale)) == PAPER_PARAMS[variant][scale]


@pytest.mark.parametrize("variant,scale", [a for a in ALL if PAPER_GMACS[a[0]][a[1]]])
def test_macs_match_paper_within_one_percent(variant, scale):
    gmacs = count_macs(build_model(variant, scale)) / 1e9
    assert abs(gmacs / PAPER_GMACS[variant][scale] - 1) < 0.01


@pytest.mark.parametrize("scale", SCALES)
def test_output_shape(scale):
    m = build_model("32s", scale).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 3, 10, 13))
    assert y.shape == (2, 3, 10 * scale, 13 * scale)


def test_dra_coefficients_reachable_and_injectable():
    m = randomised(build_model("32s", 2))
    x = torch.rand(2, 3, 12, 12)
    coeffs = m.coefficients(x)
    assert len(coeffs) == 4 and all(c.shape == (2, 10) for c in coeffs)
    with torch.no_grad():
        ref = m(x)
        assert torch.allclose(m(x, coeffs=coeffs), ref, atol=1e-6)
        # r given from outside changes the result: the argument is really used
        other = [c + 0.5 for c in coeffs]
        assert not torch.allclose(m(x, coeffs=other), ref, atol=1e-3)
        # one DRAG run with r from outside
        f = m.head(x)
        drag = m.body[0]
        assert torch.allclose(drag(f, drag.coefficients(f)), drag(f), atol=1e-6)


def test_dcr_upsampler_order_equals_crd_after_channel_permutation():
    from drsan_kit.converters.export import to_dcr

    m = randomised(build_model("32s", 4))
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.allclose(to_dcr(m)(x), m(x), atol=1e-5)


def test_checkpoint_round_trip_and_mismatch_errors(tmp_path):
    m = randomised(build_model("32s", 4))
    path = save_checkpoint(tmp_path / "w.pt", m, {"training": {"iterations": 7}})
    loaded, blob = load_checkpoint(path, "32s", 4)
    assert blob["meta"]["training"]["iterations"] == 7
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
    with pytest.raises(CheckpointError, match="DRSAN-32s.*variant 48s"):
        load_checkpoint(path, "48s", 4)
    with pytest.raises(CheckpointError, match="x4.*scale x2"):
        load_checkpoint(path, "32s", 2)


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save(build_model("32s", 4).state_dict(), foreign)
    with pytest.raises(CheckpointError, match="not a drsan-kit checkpoint"):
        load_checkpoint(foreign)


@pytest.mark.parametrize("damage,message", [
    (lambda b: b.pop("variant"), "'variant' is missing"),
    (lambda b: b.update(scale="4"), "'scale' is missing or not int"),
    (lambda b: b.pop("upsample_order"), "'upsample_order' is missing"),
    (lambda b: b.update(state_dict="weights"), "'state_dict' is missing or not dict"),
    (lambda b: b.update(variant="99x"), "unknown variant '99x'"),
    (lambda b: b["state_dict"].pop("head.weight"), "Missing key.*head.weight"),
    (lambda b: b["state_dict"].update({"head.weight": torch.zeros(1)}), "size mismatch for head.weight"),
])
def test_checkpoint_with_wrong_contents_is_a_clear_error(tmp_path, damage, message):
    path = save_checkpoint(tmp_path / "w.pt", build_model("32s", 4))
    blob = torch.load(path, weights_only=False)
    damage(blob)
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


@pytest.mark.parametrize("form", ["affine", "sub"])
def test_decomposed_prelu_graph_equals_the_model(form):
    from drsan_kit.converters.export import DecomposedPReLU, deploy_model

    m = randomised(build_model("32s", 3))
    native, decomposed = deploy_model(m), deploy_model(m, decompose_prelu=True, prelu_form=form)
    assert any(isinstance(x, DecomposedPReLU) for x in decomposed.modules())
    assert not any(isinstance(x, torch.nn.PReLU) for x in decomposed.modules())
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert torch.allclose(native(x), decomposed(x), atol=1e-5)
        assert torch.allclose(native(x), m(x).clamp(0, 1), atol=1e-5)
