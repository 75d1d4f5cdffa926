"""core/device_sampler.py: patches cut by tensor indexing match numpy crops, LR and HR stay aligned,
batches depend only on (seed, iteration), and train.py resumes exactly on that path."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import straight_and_resumed, train_args
from drsan_kit.core.checkpoint import read_checkpoint
from drsan_kit.core.device_sampler import DeviceSampler, load_pairs
from drsan_kit.core.imresize import imresize


def _dihedral(a, t):
    """The reference: numpy flips and a transpose on an (H, W, C) patch."""
    if t & 1:
        a = a[::-1]
    if t & 2:
        a = a[:, ::-1]
    return a.transpose(1, 0, 2) if t & 4 else a


def _pairs(scale, sizes=((20, 26), (17, 17), (30, 19))):
    rng = np.random.default_rng(3)
    pairs = []
    for h, w in sizes:
        lr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # nearest upsampling: every HR pixel names the LR pixel it belongs to
        pairs.append((lr, np.ascontiguousarray(lr.repeat(scale, 0).repeat(scale, 1))))
    return pairs


@pytest.mark.parametrize("scale", [2, 3])
def test_patches_are_the_numpy_crops_with_their_transform(scale):
    pairs, patch = _pairs(scale), 6
    sampler = DeviceSampler(pairs, scale, patch, seed=5, device="cpu")
    seen = set()
    for it in range(6):
        lr_b, hr_b = sampler.batch(32, it)
        assert lr_b.dtype == torch.uint8 and lr_b.shape == (32, 3, patch, patch)
        assert hr_b.shape == (32, 3, patch * scale, patch * scale)
        assert lr_b.is_contiguous(memory_format=torch.channels_last)
        for (img, y, x, t), lp, hp in zip(sampler.draws(32, it).T, lr_b, hr_b):
            lr, hr = pairs[img]
            want = _dihedral(lr[y : y + patch, x : x + patch], t)
            assert np.array_equal(lp.permute(1, 2, 0).numpy(), want)
            hr_want = _dihedral(hr[y * scale : (y + patch) * scale, x * scale : (x + patch) * scale], t)
            assert np.array_equal(hp.permute(1, 2, 0).numpy(), hr_want)
            # and the HR patch is still the LR patch's blocks after the transform
            assert np.array_equal(hr_want, want.repeat(scale, 0).repeat(scale, 1))
            seen.add(int(t))
    assert seen == set(range(8))


def test_batches_depend_only_on_seed_and_iteration():
    pairs = _pairs(2)
    a, b = (DeviceSampler(pairs, 2, 8, seed=1, device="cpu") for _ in range(2))
    other = DeviceSampler(pairs, 2, 8, seed=2, device="cpu")
    for it in (0, 7, 10**9):
        assert all(torch.equal(u, v) for u, v in zip(a.batch(16, it), b.batch(16, it)))
    assert not torch.equal(a.batch(16, 3)[0], a.batch(16, 4)[0])
    assert not torch.equal(a.batch(16, 3)[0], other.batch(16, 3)[0])
    assert torch.equal(next(a.batches(16, 7))[1], b.batch(16, 7)[1])


def test_area_sampling_follows_lr_area_and_uniform_does_not():
    pairs = _pairs(2, sizes=((64, 64), (8, 8)))
    area = DeviceSampler(pairs, 2, 8, seed=0, device="cpu", sampling="area")
    uniform = DeviceSampler(pairs, 2, 8, seed=0, device="cpu", sampling="uniform")
    share = lambda s: np.mean(np.concatenate([s.draws(256, i)[0] for i in range(8)]) == 1)
    assert share(area) < 0.05 and 0.4 < share(uniform) < 0.6


def test_bad_pairs_are_refused():
    lr = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="smaller than"):
        DeviceSampler([(lr, np.zeros((20, 20, 3), np.uint8))], 2, 12, seed=0, device="cpu")
    with pytest.raises(ValueError, match="not x2"):
        DeviceSampler([(lr, np.zeros((20, 22, 3), np.uint8))], 2, 8, seed=0, device="cpu")
    with pytest.raises(ValueError, match="no training images"):
        DeviceSampler([], 2, 8, seed=0, device="cpu")


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(folder / "tiny.png")
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


@pytest.mark.parametrize("workers", [0, 2])
def test_load_pairs_makes_matlab_lr_and_counts_skips(data, workers):
    lines = []
    files = sorted(data.iterdir())
    pairs = load_pairs(files, 2, 8, log=lines.append, workers=workers)
    assert len(pairs) == 3
    lr, hr = pairs[0]
    assert hr.shape == (36, 40, 3) and np.array_equal(lr, imresize(hr, 1 / 2))
    assert lines[-1].startswith("training images: 3 used, 1 too small") and "1 unreadable" in lines[-1]
    assert any("broken.png" in line for line in lines)


def _args(data, out, iters, **extra):
    return train_args(data, out, iters, patch=8, data_on_device="on", **extra)


def test_train_on_device_resumes_exactly(data, tmp_path, capsys):
    from drsan_kit.core.train import main as train_main

    a, b = straight_and_resumed(lambda out, iters, **kw: _args(data, out, iters, **kw), tmp_path)
    out = capsys.readouterr().out
    assert "resumed from" in out and "patches cut on cpu" in out
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert b["meta"]["training"]["data_on_device"] is True
    # the host sampler path draws other patches, so it ends elsewhere
    train_main(_args(data, tmp_path / "host", 4)[:-2] + ["--data-on-device", "off"])
    c = read_checkpoint(tmp_path / "host" / "last.pt")["state_dict"]
    assert not all(torch.equal(a["state_dict"][k], c[k]) for k in c)


def test_lr_scaling_rule_is_applied_and_recorded(data, tmp_path):
    from drsan_kit.core.train import main as train_main, scaled_lr

    assert scaled_lr(2e-4, "sqrt", 256) == pytest.approx(8e-4)
    assert scaled_lr(2e-4, "linear", 64) == pytest.approx(8e-4) and scaled_lr(2e-4, "none", 256) == 2e-4
    train_main(_args(data, tmp_path / "run", 1, lr_scaling="sqrt"))
    training = read_checkpoint(tmp_path / "run" / "model.pt")["meta"]["training"]
    assert training["lr"] == pytest.approx(1e-3 * (2 / 16) ** 0.5) and training["lr_scaling"] == "sqrt"


def test_train_speed_reports_the_end_to_end_figure(data, tmp_path, capsys):
    from drsan_kit.eval.train_speed import main as speed_main

    report = tmp_path / "speed.md"
    speed_main(["--data", str(data), "--scale", "2", "--patch", "8", "--batch", "2", "--steps", "2",
                "--warmup", "1", "--threads", "1", "--device", "cpu", "--out", str(report)])
    text = capsys.readouterr().out
    assert text == report.read_text() and "Command: `python eval/train_speed.py --data" in text
    assert "Machine: " in text and "Device: cpu (CPU)" in text
    row = [line for line in text.splitlines() if line.startswith("| 2 |")][0].split("|")
    assert float(row[5].replace(",", "")) > 0 and row[3].strip() == "channels_last"
    with pytest.raises(SystemExit, match="no such folder"):
        speed_main(["--data", str(tmp_path / "nowhere")])
