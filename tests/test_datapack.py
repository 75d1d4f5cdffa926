"""core/datapack.py: lossless, repeatable packing; unpacking is checked bit for bit; damage is named."""
import json

import numpy as np
import pytest
from PIL import Image

from drsan_kit.core.checkpoint import read_checkpoint
from drsan_kit.core.datapack import DatapackError, main, pack, unpack, verify
from drsan_kit.core.holdout import split_holdout
from drsan_kit.core.images import list_images, load_image, load_rgb_uint8


@pytest.fixture
def data(tmp_path):
    """A small training folder with every kind of file the packer treats differently."""
    root = tmp_path / "train"
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    rng = np.random.default_rng(0)
    smooth = lambda h, w: np.asarray(Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
                                     .resize((w, h), Image.BICUBIC))
    Image.fromarray(smooth(40, 50)).save(root / "a" / "smooth.png")                  # WebP is smaller
    Image.fromarray(smooth(30, 20)[..., 0]).save(root / "a" / "deep" / "gray.png")    # single-channel
    Image.fromarray(smooth(24, 36)).save(root / "b" / "raw.bmp")
    Image.fromarray(smooth(22, 22)).save(root / "b" / "scan.tif")
    Image.fromarray(smooth(32, 48)).save(root / "b" / "photo.jpg", quality=90)        # kept as it is
    for name in ("noise1.png", "noise2.png", "noise3.png", "noise4.png"):   # about 5 KB each, in any format
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "b" / name)
    return root


def _decoded(root):
    return {p.relative_to(root).as_posix(): load_rgb_uint8(p) for p in list_images(root)}


def test_round_trip_is_bit_identical_under_the_same_names(data, tmp_path):
    manifest = pack(data, tmp_path / "packs", max_mib=0.02, holdout=2)
    stored = {e["path"]: e["stored"] for e in manifest["images"]}
    assert stored["b/photo.jpg"] == "original" and stored["b/raw.bmp"] == "webp"
    assert len(manifest["shards"]) >= 3   # holdout.tar and at least two parts of <= 0.02 MiB
    assert all((tmp_path / "packs" / s["name"]).stat().st_size <= 0.02 * 2**20 for s in manifest["shards"])
    result = unpack(tmp_path / "packs", tmp_path / "out")
    assert result["images"] == 9 and not result["missing"]
    original, back = _decoded(data), _decoded(tmp_path / "out")
    assert original.keys() == back.keys()
    assert all(np.array_equal(original[k], back[k]) for k in original)
    assert load_image(tmp_path / "out" / "a" / "deep" / "gray.png").gray
    # the held-out images of the unpacked folder are the packed holdout shard
    held = {p.relative_to(tmp_path / "out").as_posix() for p in split_holdout(tmp_path / "out", 2)[1]}
    assert held == {e["path"] for e in manifest["images"] if e["shard"] == "holdout.tar"}


def test_packing_twice_gives_the_same_bytes(data, tmp_path):
    pack(data, tmp_path / "one", max_mib=0.02, holdout=1)
    pack(data, tmp_path / "two", max_mib=0.02, holdout=1, workers=2)
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    assert all((tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes() for n in names)


def test_a_job_with_some_shards_keeps_the_same_holdout(data, tmp_path):
    manifest = pack(data, tmp_path / "packs", max_mib=0.02, holdout=2)
    part = next(s["name"] for s in manifest["shards"] if s["name"].startswith("part-"))
    for shard in manifest["shards"]:
        if shard["name"] not in ("holdout.tar", part):
            (tmp_path / "packs" / shard["name"]).unlink()
    result = unpack(tmp_path / "packs", tmp_path / "out")
    assert result["shards"] == ["holdout.tar", part] and result["missing"]
    held = split_holdout(tmp_path / "out", 2)[1]
    assert {p.name for p in held} == {e["path"].split("/")[-1] for e in manifest["images"]
                                      if e["shard"] == "holdout.tar"}
    with pytest.raises(DatapackError, match="missing"):
        verify(tmp_path / "packs", require_all=True)


def test_damaged_shard_is_named_and_nothing_is_written(data, tmp_path, capsys):
    pack(data, tmp_path / "packs", max_mib=1)
    shard = tmp_path / "packs" / "part-00.tar"
    raw = bytearray(shard.read_bytes())
    raw[700] ^= 1
    shard.write_bytes(bytes(raw))
    assert main(["unpack", "--packs", str(tmp_path / "packs"), "--out", str(tmp_path / "out"), "--workers", "1"]) == 1
    assert "part-00.tar: SHA-256 differs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_pixels_that_differ_from_the_manifest_stop_the_unpack(data, tmp_path):
    pack(data, tmp_path / "packs", max_mib=1)
    path = tmp_path / "packs" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["images"][2]["sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    with pytest.raises(DatapackError, match="differ from the packed ones"):
        unpack(tmp_path / "packs", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_manifest_paths_cannot_leave_the_output(data, tmp_path):
    pack(data, tmp_path / "packs", max_mib=1)
    path = tmp_path / "packs" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["images"][0]["path"] = "../escaped.png"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DatapackError):
        unpack(tmp_path / "packs", tmp_path / "out")
    assert not (tmp_path / "escaped.png").exists()


def test_a_manifest_nested_too_deeply_is_an_error_not_a_crash(data, tmp_path):
    pack(data, tmp_path / "packs", max_mib=1)
    (tmp_path / "packs" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DatapackError, match="nested too deeply"):
        unpack(tmp_path / "packs", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_requests_are_one_line_errors(data, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        (["pack", "--data", str(data), "--out", str(tmp_path / "taken")], "not an empty folder"),
        (["pack", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p")], "no such folder"),
        (["pack", "--data", str(data), "--out", str(tmp_path / "p"), "--max-mib", "0.001"], "over --max-mib"),
        (["pack", "--data", str(data), "--out", str(tmp_path / "p"), "--holdout", "9"], "--holdout"),
        (["verify", "--packs", str(tmp_path / "taken")], "manifest.json: no such file"),
    ]
    for argv, message in cases:
        assert main(argv + ["--workers", "1"]) == 1
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine" and not (tmp_path / "p").exists()


def test_cli_reports_what_it_did(data, tmp_path, capsys):
    assert main(["pack", "--data", str(data), "--out", str(tmp_path / "packs"), "--holdout", "1",
                 "--workers", "1"]) == 0
    assert "packed 9 images" in capsys.readouterr().out
    assert main(["verify", "--packs", str(tmp_path / "packs"), "--all", "--workers", "1"]) == 0
    assert "verified: 9 images in 2 shard(s)" in capsys.readouterr().out


def _job(*args, env_out=None):
    import os
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "core" / "gpu_job.sh"
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | ({"OUT": str(env_out)} if env_out else {})
    return subprocess.run(["bash", str(script), *map(str, args)], capture_output=True, text=True, env=env)


def test_gpu_job_trains_returns_small_files_and_resumes_from_them(data, tmp_path):
    pack(data, tmp_path / "packs", max_mib=1, holdout=1)
    train = ["--variant", "32s", "--scale", "2", "--batch", "2", "--patch", "8", "--amp", "off", "--threads", "1",
             "--val-split", "1", "--save-every", "1", "--schedule", "cosine", "--warmup", "1",
             "--data-on-device", "on"]
    first = _job("--packs", tmp_path / "packs", "--minutes", 3, "--reserve", 1, "--split-mib", 1, "--",
                 *train, "--iters", 2, env_out=tmp_path / "one")
    assert first.returncode == 0, first.stdout + first.stderr
    run = tmp_path / "one" / "run"
    pieces = sorted(p.name for p in run.glob("last.pt.part-*"))
    assert len(pieces) >= 2 and not (run / "last.pt").exists()   # a 32s last.pt is over 1 MiB
    log = (run / "job.log").read_text()
    assert "each checked against its SHA-256" in log and "training for at most" in log
    assert "last.pt" in (run / "SHA256SUMS").read_text()
    # the next job, elsewhere, continues from the pieces (joined and checked against SHA256SUMS)
    second = _job("--packs", tmp_path / "packs", "--resume", run, "--out", tmp_path / "two", "--minutes", 3,
                  "--reserve", 1, "--", *train, "--iters", 3)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout and "run: iteration 3" in second.stdout
    state = read_checkpoint(tmp_path / "two" / "run" / "last.pt")["train_state"]["state"]
    assert state["iteration"] == 3 and len(pieces) == len(list(run.glob("last.pt.part-*")))
    with open(run / pieces[-1], "ab") as fh:   # a piece damaged on the way
        fh.write(b"x")
    third = _job("--packs", tmp_path / "packs", "--resume", run, "--out", tmp_path / "three", "--", *train)
    assert third.returncode == 2 and "do not match its SHA256SUMS" in third.stdout   # job.log takes both streams


def test_gpu_job_refuses_what_it_sets_itself(tmp_path):
    for args, message in ((["--out", tmp_path, "--", "--data", "x"], "sets --data itself"),
                          (["--", "--variant", "32s"], "no output folder"),
                          (["--out", tmp_path, "--minutes", "soon", "--", "--variant", "32s"], "not a number"),
                          (["--out", tmp_path, "--resume", tmp_path / "none", "--", "--variant", "32s"], "no last.pt")):
        result = _job(*args)
        assert result.returncode == 2 and message in result.stderr
