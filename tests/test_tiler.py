"""The tiler, property-style: many frame sizes, tiles and margins."""
import numpy as np
import pytest

from drsan_kit.edge_runtime.tiler import Tiler, axis_spans, pad_to

RADIUS = 2   # receptive field radius of the toy model below


def toy_model(scale):
    """A local model (5x5 box blur, then nearest upscale), so tiles with margin >= RADIUS are exact."""
    def fn(x):
        p = np.pad(x, ((RADIUS, RADIUS), (RADIUS, RADIUS), (0, 0)))
        k = 2 * RADIUS + 1
        blur = sum(p[i : i + x.shape[0], j : j + x.shape[1]] for i in range(k) for j in range(k)) / k**2
        return blur.repeat(scale, 0).repeat(scale, 1)
    return fn


@pytest.mark.parametrize("length", [1, 2, 7, 31, 32, 33, 100, 257])
@pytest.mark.parametrize("tile,margin", [(8, 0), (8, 3), (16, 4), (32, 2)])
def test_spans_cover_each_index_once_with_full_context(length, tile, margin):
    spans = axis_spans(length, tile, margin)
    covered = np.zeros(length, int)
    for s in spans:
        covered[s.keep_from : s.keep_to] += 1
        assert 0 <= s.start and (s.start + tile <= length or length <= tile)
        if s.keep_from > 0:
            assert s.keep_from - s.start >= margin
        if s.keep_to < length:
            assert s.start + tile - s.keep_to >= margin
    assert (covered == 1).all()


@pytest.mark.parametrize("seed", range(12))
def test_tiled_equals_one_shot_for_a_local_model(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 90)), int(rng.integers(1, 90))
    th, tw = int(rng.integers(2 * RADIUS + 1, 40)), int(rng.integers(2 * RADIUS + 1, 40))
    scale = int(rng.choice([2, 3, 4]))
    frame = rng.random((h, w, 3), dtype=np.float32)
    fn = toy_model(scale)
    out = Tiler(scale, (th, tw), margin=RADIUS, pad_small=False).run(frame, fn)
    assert out.shape == (h * scale, w * scale, 3)
    assert np.allclose(out, fn(frame), atol=1e-6)


@pytest.mark.parametrize("h,w", [(1, 1), (3, 50), (50, 2), (20, 20), (45, 70)])
def test_fixed_shape_models_get_exactly_their_shape(h, w):
    seen = set()

    def fn(x):
        seen.add(x.shape)
        return x.repeat(2, 0).repeat(2, 1)

    frame = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    out = Tiler(2, (24, 32), margin=4).run(frame, fn)
    assert seen == {(24, 32, 3)} and out.shape == (2 * h, 2 * w, 3)
    assert np.allclose(out, frame.repeat(2, 0).repeat(2, 1))


def test_pad_to_mirrors_by_default_repeatedly_and_handles_one_pixel():
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    assert pad_to(x, 5, 7).shape == (5, 7, 3)
    y = np.arange(8 * 3, dtype=np.float32).reshape(2, 4, 3)
    p = pad_to(y, 5, 13)
    assert np.array_equal(p[:2, :4], y)
    assert np.array_equal(p[2], p[1]) and np.array_equal(p[3], p[0])          # rows mirrored: 0 1 | 1 0 | 0
    assert np.array_equal(p[0, 4:8], y[0, ::-1]) and np.array_equal(p[0, 8:12], y[0])   # and again past 2x


def test_pad_to_other_modes_and_bad_mode():
    y = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    e = pad_to(y, 4, 3, "edge")
    assert np.array_equal(e[3], e[1]) and np.array_equal(e[:, 2], e[:, 1])
    assert (pad_to(y, 4, 3, "constant")[2:] == 0).all()
    with pytest.raises(ValueError, match="padding mode"):
        pad_to(y, 4, 3, "mirror")
    with pytest.raises(ValueError, match="padding mode"):
        Tiler(2, (8, 8), margin=2, pad_mode="mirror")


def test_tiler_pads_small_frames_with_its_mode():
    frame = np.random.default_rng(1).random((5, 6, 3), dtype=np.float32)
    seen = {}

    def fn(x):
        seen["win"] = x.copy()
        return x.repeat(2, 0).repeat(2, 1)

    for mode in ("symmetric", "edge"):
        out = Tiler(2, (8, 8), margin=2, pad_mode=mode).run(frame, fn)
        assert np.array_equal(seen["win"], pad_to(frame, 8, 8, mode))
        assert np.array_equal(out, frame.repeat(2, 0).repeat(2, 1))   # padding cropped off again


def test_uint8_output_rounds_and_tile_must_exceed_margin():
    frame = np.full((10, 10, 3), 0.5, np.float32)
    out = Tiler(2, (8, 8), margin=2).run(frame, lambda x: x.repeat(2, 0).repeat(2, 1), out_dtype=np.uint8)
    assert out.dtype == np.uint8 and (out == 128).all()
    with pytest.raises(ValueError, match="margin"):
        Tiler(2, (8, 8), margin=4)
    with pytest.raises(ValueError, match="margin must be 0 or more"):
        Tiler(2, (8, 8), margin=-1)


def test_output_memory_is_one_buffer_for_large_frames():
    import tracemalloc

    frame = np.zeros((1080, 1920, 3), np.float32)
    tracemalloc.start()
    Tiler(4, (128, 128), margin=8).run(frame, lambda x: np.zeros((x.shape[0] * 4, x.shape[1] * 4, 3), np.float32),
                                       out_dtype=np.uint8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out_bytes = 1080 * 4 * 1920 * 4 * 3
    assert peak < 1.5 * out_bytes
