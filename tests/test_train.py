"""core/train.py: exact resume, skipping small images, init from another scale."""
import numpy as np
import pytest
import torch
from PIL import Image

from drsan_kit.core.checkpoint import load_checkpoint, read_checkpoint
from drsan_kit.core.datapack import file_sha256
from conftest import SHIPPED_X2_QAT, straight_and_resumed, train_args
from drsan_kit.core.train import main as train_main


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "imgs" / "nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        big = np.asarray(Image.fromarray(base).resize((64, 72), Image.BICUBIC))
        Image.fromarray(big).save(folder / f"img{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "tiny.bmp")
    return tmp_path / "imgs"


_args = train_args


def test_stop_and_resume_reaches_the_same_weights(data, tmp_path, capsys):
    a, b = straight_and_resumed(lambda out, iters, **kw: _args(data, out, iters, **kw), tmp_path)
    out = capsys.readouterr().out
    assert "resumed from" in out and "1 too small" in out
    a, b = a["state_dict"], b["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and training really changed the weights
    fresh = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert fresh["train_state"]["state"]["iteration"] == 4
    log = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert log[0].startswith("iteration,loss") and len(log) >= 2


def test_validation_and_init_from_other_scale(data, tmp_path, capsys):
    val = tmp_path / "val"
    (val / "HR").mkdir(parents=True)
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 28, 3), dtype=np.uint8)).save(val / "HR" / "v.png")
    train_main(_args(data, tmp_path / "x2", 2, val=val, val_every=2))
    meta = read_checkpoint(tmp_path / "x2" / "model.pt")["meta"]
    assert meta["validation"]["psnr_y"] > 0 and meta["training"]["iterations"] == 2
    args = _args(data, tmp_path / "x4", 1, init_from=tmp_path / "x2" / "model.pt")
    args[args.index("--scale") + 1] = "4"
    args[args.index("--patch") + 1] = "8"
    train_main(args)
    assert "tensors copied" in capsys.readouterr().out
    model, _ = load_checkpoint(tmp_path / "x4" / "model.pt", "32s", 4)
    assert model.scale == 4


def test_no_usable_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        train_main(_args(tmp_path / "empty", tmp_path / "o", 1))


def test_ctrl_c_saves_a_resumable_state(data, tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out, log = tmp_path / "run", tmp_path / "train.log"
    script = Path(__file__).resolve().parents[1] / "core" / "train.py"
    args = _args(data, out, 100000, save_every=100000)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(script), *args], stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not (out / "log.csv").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(1.0)   # a few iterations
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert "stopping at iteration" in text and "SIGINT" in text
    state = read_checkpoint(out / "last.pt")["train_state"]["state"]
    assert state["iteration"] >= 1
    assert (out / "model.pt").is_file()


def test_sampling_by_area_or_uniform(tmp_path):
    from drsan_kit.core.train import PatchSampler

    rng = np.random.default_rng(0)
    for name, size in (("small.png", (40, 40)), ("big.png", (120, 80))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / name)
    quiet = lambda *a: None
    area = PatchSampler(tmp_path, 2, 16, seed=0, log=quiet)
    uniform = PatchSampler(tmp_path, 2, 16, seed=0, log=quiet, sampling="uniform")
    sizes = np.array([lr.shape[0] * lr.shape[1] for lr, _ in area.pairs], dtype=float)
    assert sorted(area.weights) == pytest.approx(sorted(sizes / sizes.sum())) and max(area.weights) > 0.8
    assert uniform.weights == pytest.approx([0.5, 0.5])
    lr, hr = uniform.batch(3)
    assert lr.shape == (3, 3, 16, 16) and hr.shape == (3, 3, 32, 32) and lr.dtype == torch.uint8


def test_batches_depend_only_on_the_iteration_and_workers_give_the_same(data):
    from drsan_kit.core.train import PatchSampler, batches

    sampler = PatchSampler(data, 2, 16, seed=3, log=lambda *a: None)
    a, b = sampler.batch(4, 7), sampler.batch(4, 7)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(sampler.batch(4, 8)[1], a[1])
    inline = [next(it) for it in [batches(sampler, 4, 5, workers=0, pin=False)] for _ in range(3)]
    feed = batches(sampler, 4, 5, workers=2, pin=False)
    for lr, hr in inline:
        got = next(feed)
        assert torch.equal(got[0], lr) and torch.equal(got[1], hr)
    assert torch.equal(inline[2][1], sampler.batch(4, 7)[1])


def test_time_budget_anneals_and_stops(data, tmp_path, capsys):
    train_main(_args(data, tmp_path / "t", 10**6, time_budget=0.03, save_every=10**6))
    assert "time budget of 0.03 minutes spent" in capsys.readouterr().out
    rows = [line.split(",") for line in (tmp_path / "t" / "log.csv").read_text().splitlines()[1:]]
    assert float(rows[-1][2]) < 1e-4   # cosine over time: the last rate is near --min-lr, not 1e-3
    state = read_checkpoint(tmp_path / "t" / "last.pt")["train_state"]["state"]
    assert 1.8 <= state["seconds"] < 10 and state["iteration"] < 10**6


def test_l2_loss_trains_differently_and_is_recorded(data, tmp_path):
    train_main(_args(data, tmp_path / "l1", 2))
    train_main(_args(data, tmp_path / "l2", 2, loss="l2"))
    a, b = (read_checkpoint(tmp_path / name / "last.pt") for name in ("l1", "l2"))
    assert (a["meta"]["training"]["loss"], b["meta"]["training"]["loss"]) == ("l1", "l2")
    # same seed, same batches: only the loss differs, so the weights must too
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # squared errors of values in [0, 1] are smaller than absolute ones
    l1_loss, l2_loss = (float((tmp_path / name / "log.csv").read_text().splitlines()[1].split(",")[1])
                        for name in ("l1", "l2"))
    assert l2_loss < l1_loss


def test_psnr_loss_is_minus_the_mean_patch_psnr_and_weighs_patches_by_their_own_error():
    from drsan_kit.core.train import RELATIVE_FLOOR, psnr_loss

    target = torch.zeros(3, 3, 4, 4)
    pred = target.clone()
    pred[0] += 0.1    # MSE 1e-2: 20 dB
    pred[1] += 0.01   # MSE 1e-4: 40 dB
    # pred[2] is exact: the floor holds it at 45 dB instead of an infinite PSNR
    psnr = -10 * torch.log10(torch.tensor([1e-2, 1e-4, 0.0]) + RELATIVE_FLOOR)
    assert torch.allclose(psnr_loss(pred, target), -psnr.mean())
    assert torch.allclose(psnr[2], torch.tensor(45.0))
    # its gradient is L2's, each patch divided by its own error: the 40 dB patch pulls ~100x harder
    pred.requires_grad_(True)
    psnr_loss(pred, target).backward()
    g = pred.grad.flatten(1).mean(1)
    assert torch.allclose(g[1] / 0.01 / (g[0] / 0.1), torch.tensor((1e-2 + RELATIVE_FLOOR) / (1e-4 + RELATIVE_FLOOR)),
                          rtol=1e-4)


def test_psnr_loss_trains_and_is_recorded(data, tmp_path):
    train_main(_args(data, tmp_path / "l2", 2, loss="l2"))
    train_main(_args(data, tmp_path / "psnr", 2, loss="psnr"))
    a, b = (read_checkpoint(tmp_path / name / "last.pt") for name in ("l2", "psnr"))
    assert b["meta"]["training"]["loss"] == "psnr"
    assert any(not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # the logged loss is minus a PSNR in dB: negative, and a noise-level model on random images is near 10-20 dB
    logged = float((tmp_path / "psnr" / "log.csv").read_text().splitlines()[1].split(",")[1])
    assert -45 < logged < 0


def test_channels_last_learns_the_same_and_saves_plain_tensors(data, tmp_path):
    for layout in ("channels_last", "contiguous"):
        train_main(_args(data, tmp_path / layout, 3, memory_format=layout))
    a, b = (read_checkpoint(tmp_path / name / "last.pt") for name in ("channels_last", "contiguous"))
    assert a["meta"]["training"]["memory_format"] == "torch.channels_last"
    assert b["meta"]["training"]["memory_format"] == "torch.contiguous_format"
    for k, v in a["state_dict"].items():
        assert v.is_contiguous(), k   # loaders and converters expect the plain layout
        # a layout is only a different order of the same sums: fp32 rounding, no more
        torch.testing.assert_close(v, b["state_dict"][k], rtol=1e-4, atol=1e-5)


def test_train_speed_tool_times_every_arm(capsys):
    from drsan_kit.eval.train_speed import main as speed_main
    speed_main(["--scale", "2", "--patch", "8", "--batch", "2", "--steps", "1", "--threads", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "s / step" not in line]
    layouts = [row.split("|")[2].strip() for row in rows]
    assert layouts.count("channels_last") == layouts.count("contiguous") >= 1
    assert all(float(row.split("|")[3]) > 0 for row in rows)


def test_ema_is_validated_shipped_and_resumed_exactly(data, tmp_path):
    train_main(_args(data, tmp_path / "straight", 4, ema=0.5))
    train_main(_args(data, tmp_path / "resumed", 4, ema=0.5, stop_at=2))
    train_main(_args(data, tmp_path / "resumed", 4, ema=0.5))
    a, b = (read_checkpoint(tmp_path / name / "last.pt") for name in ("straight", "resumed"))
    ema_a, ema_b = a["train_state"]["ema"], b["train_state"]["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)   # the average resumes exactly too
    shipped = read_checkpoint(tmp_path / "straight" / "model.pt")
    assert shipped["meta"]["training"]["ema_decay"] == 0.5
    for k, v in shipped["state_dict"].items():
        assert torch.equal(v, ema_a["module." + k]), k          # model.pt is the average...
    assert any(not torch.equal(v, a["state_dict"][k]) for k, v in shipped["state_dict"].items())  # ...not the raw weights


def test_held_out_split_is_never_trained_on_and_is_recorded(data, tmp_path, capsys):
    from drsan_kit.core.holdout import split_holdout

    train_files, held = split_holdout(data, 1)
    assert len(held) == 1 and held[0] not in train_files and len(train_files) == 3
    assert split_holdout(data, 1)[1] == held   # fixed: the same call gives the same split
    train_main(_args(data, tmp_path / "run", 2, val_split=1, val_every=2))
    out = capsys.readouterr().out
    # 3 of the 4 images are left for training (the tiny one is too small either way)
    assert "validation: 1 held-out images" in out
    meta = read_checkpoint(tmp_path / "run" / "model.pt")["meta"]
    assert meta["validation"]["set"] == "holdout:1"
    assert meta["validation"]["files"] == [held[0].relative_to(data).as_posix()]
    assert meta["validation"]["psnr_y"] > 0
    with pytest.raises(SystemExit, match="--val-split"):
        train_main(_args(data, tmp_path / "bad", 1, val_split=9))


def test_qat_fine_tuning_resumes_exactly_and_ships_ranges(data, tmp_path, capsys):
    train_main(_args(data, tmp_path / "float", 2))
    qat_args = dict(init_from=tmp_path / "float" / "model.pt", qat=True, qat_freeze=3, val_split=1, val_every=2)
    a, b = straight_and_resumed(lambda out, iters, **kw: _args(data, out, iters, **qat_args, **kw), tmp_path)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["train_state"]["qat"][k], b["train_state"]["qat"][k]) for k in a["train_state"]["qat"])
    shipped = read_checkpoint(tmp_path / "resumed" / "model.pt")
    ranges = shipped["meta"]["qat"]["ranges"]
    assert len(ranges) > 100 and all(lo <= hi for lo, hi in ranges.values())
    assert shipped["meta"]["qat"]["iterations"] == 4
    # model.pt holds the last validated weights, and its score is theirs (the best is kept beside it)
    scores = [float(r.split(",")[4]) for r in (tmp_path / "resumed" / "log.csv").read_text().splitlines()[1:]
              if r.split(",")[4]]
    assert len(scores) >= 2
    assert shipped["meta"]["validation"]["psnr_y"] == pytest.approx(scores[-1], abs=1e-4)
    assert shipped["meta"]["validation"]["best_psnr_y"] == pytest.approx(max(scores), abs=1e-4)
    # ranges stopped moving at the freeze: they are those of iteration 3 in both runs
    assert shipped["meta"]["qat"]["ranges_frozen_at"] == 3
    # the shipped weights are a plain DRSAN that every loader reads
    load_checkpoint(tmp_path / "resumed" / "model.pt", "32s", 2)
    # a QAT run that continues this one counts both runs' iterations and names what it started from
    start = tmp_path / "resumed" / "model.pt"
    train_main(_args(data, tmp_path / "more", 2, init_from=start, qat=True, val_split=1))
    more = read_checkpoint(tmp_path / "more" / "model.pt")["meta"]
    assert (more["qat"]["iterations"], more["qat"]["iterations_before"]) == (6, 4)
    assert more["qat"]["init_from_sha256"] == more["training"]["init_from_sha256"] == file_sha256(start)
    # ... and starts from its ranges: frozen before the first step, they come out unchanged
    train_main(_args(data, tmp_path / "kept", 1, init_from=start, qat=True, qat_freeze=0, val_split=1))
    assert read_checkpoint(tmp_path / "kept" / "model.pt")["meta"]["qat"]["ranges"] == ranges
    # tracked from there, they move (towards these weights' batch min/max)
    assert more["qat"]["ranges"] != ranges


def test_teacher_replaces_the_hr_target_with_its_output(data, tmp_path):
    train_main(_args(data, tmp_path / "t", 1))
    teacher = tmp_path / "t" / "model.pt"
    # a student that starts as the teacher has nothing to learn from it: zero loss, unchanged weights
    train_main(_args(data, tmp_path / "same", 1, init_from=teacher, teacher=teacher, loss="l2"))
    row = (tmp_path / "same" / "log.csv").read_text().splitlines()[1].split(",")
    assert float(row[1]) == 0.0
    a, b = (read_checkpoint(p)["state_dict"] for p in (teacher, tmp_path / "same" / "model.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_checkpoint(tmp_path / "same" / "model.pt")["meta"]["training"]["teacher"] == str(teacher)
    # against HR the same start has a loss
    train_main(_args(data, tmp_path / "hr", 1, init_from=teacher, loss="l2"))
    assert float((tmp_path / "hr" / "log.csv").read_text().splitlines()[1].split(",")[1]) > 0
    with pytest.raises(SystemExit, match="--teacher"):
        train_main(_args(data, tmp_path / "bad", 1, teacher=tmp_path / "missing.pt"))


def test_relative_distillation_weights_follow_the_teachers_own_error():
    from drsan_kit.core.train import RELATIVE_FLOOR, relative_weights, weighted_l2

    hr = torch.zeros(3, 3, 4, 4)
    teacher = hr.clone()
    teacher[0] += 0.1    # MSE 1e-2
    teacher[1] += 0.01   # MSE 1e-4: a patch the teacher gets 100x closer weighs 100x more
    # teacher[2] is exact: its weight stops at the floor instead of growing without bound
    w = relative_weights(teacher, hr)
    assert torch.allclose(w.mean(), torch.tensor(1.0))
    assert torch.allclose(w[1] / w[0], torch.tensor(100.0), rtol=1e-4)
    assert torch.allclose(w[2] / w[0], torch.tensor(1e-2 / RELATIVE_FLOOR), rtol=1e-4)
    # the weighted loss is the weighted mean of per-patch MSEs; uniform weights give plain MSE
    pred = torch.rand(3, 3, 4, 4)
    per = ((pred - teacher) ** 2).flatten(1).mean(1)
    assert torch.allclose(weighted_l2(w)(pred, teacher), (per * w).mean())
    assert torch.allclose(weighted_l2(torch.ones(3))(pred, teacher), torch.nn.functional.mse_loss(pred, teacher))


def test_relative_distillation_trains_and_is_recorded(data, tmp_path):
    train_main(_args(data, tmp_path / "t", 1))
    teacher = tmp_path / "t" / "model.pt"
    train_main(_args(data, tmp_path / "rel", 2, teacher=teacher, loss="l2", distill_weighting="relative"))
    assert read_checkpoint(tmp_path / "rel" / "model.pt")["meta"]["training"]["distill_weighting"] == "relative"
    with pytest.raises(SystemExit, match="--distill-weighting relative needs --teacher and --loss l2"):
        train_main(_args(data, tmp_path / "bad", 1, distill_weighting="relative"))
    assert not (tmp_path / "bad").exists()


def test_damaged_init_from_is_a_one_line_error(data, tmp_path):
    bad = tmp_path / "cut.pt"
    bad.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(SystemExit, match=r"^error: .*cut\.pt"):
        train_main(_args(data, tmp_path / "out", 1, init_from=bad))
    assert not (tmp_path / "out").exists()


def test_learned_qat_ranges_train_resume_exactly_and_ship(data, tmp_path):
    train_main(_args(data, tmp_path / "float", 2))
    train_main(_args(data, tmp_path / "qat", 2, init_from=tmp_path / "float" / "model.pt", qat=True))
    start = tmp_path / "qat" / "model.pt"
    tracked = read_checkpoint(start)["meta"]["qat"]["ranges"]
    learned = dict(init_from=start, qat=True, qat_ranges="learned", qat_range_lr=0.05, qat_freeze=3)
    a, b = straight_and_resumed(lambda out, iters, **kw: _args(data, out, iters, **learned, **kw), tmp_path)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["train_state"]["qat"][k], b["train_state"]["qat"][k]) for k in a["train_state"]["qat"])
    meta = read_checkpoint(tmp_path / "resumed" / "model.pt")["meta"]["qat"]
    assert meta["ranges_mode"] == "learned" and meta["ranges"].keys() == tracked.keys()
    moved = [k for k in tracked if meta["ranges"][k] != tracked[k]]
    assert len(moved) > 100 and all(lo <= hi for lo, hi in meta["ranges"].values())
    # what ships is what the frozen simulation used: the saved state's range, synced from the parameters
    k = moved[0]
    assert meta["ranges"][k] == pytest.approx([float(b["train_state"]["qat"][k + ".lo"]),
                                               float(b["train_state"]["qat"][k + ".hi"])])
    # --lr 0 trains the ranges alone: the weights come out as they went in
    train_main(_args(data, tmp_path / "alone", 3, **{**learned, "lr": 0, "min_lr": 1e-4}))
    w0, w1 = (read_checkpoint(p)["state_dict"] for p in (start, tmp_path / "alone" / "model.pt"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    meta_alone = read_checkpoint(tmp_path / "alone" / "model.pt")["meta"]["qat"]
    assert meta_alone["ranges"] != tracked
    # ranges held from the start are the learned ones carried, and the checkpoint says so
    train_main(_args(data, tmp_path / "held", 1, init_from=tmp_path / "alone" / "model.pt", qat=True,
                     qat_freeze=0, train_params="bias"))
    held = read_checkpoint(tmp_path / "held" / "model.pt")["meta"]["qat"]
    assert held["ranges_mode"] == "learned" and held["ranges"] == meta_alone["ranges"]
    # learned ranges start from trained ones, not from a float checkpoint's nothing
    with pytest.raises(SystemExit, match="--qat-ranges learned: .*start from a QAT checkpoint"):
        train_main(_args(data, tmp_path / "fresh", 1, init_from=tmp_path / "float" / "model.pt", qat=True,
                         qat_ranges="learned"))
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(SystemExit, match="--qat-ranges learned needs --qat"):
        train_main(_args(data, tmp_path / "noqat", 1, qat_ranges="learned"))


def test_held_staggered_ranges_stay_as_carried_while_the_others_learn(data, tmp_path):
    start = SHIPPED_X2_QAT   # equalized: it has the skip head that staggered copies split
    carried = read_checkpoint(start)["meta"]["qat"]["ranges"]
    train_main(_args(data, tmp_path / "held", 2, init_from=start, qat=True, qat_ranges="learned",
                     qat_range_lr=0.05, lr=0, qat_hold_staggered=True))
    qat_meta = read_checkpoint(tmp_path / "held" / "model.pt")["meta"]["qat"]
    held = qat_meta["ranges_held"]
    assert held == ["aq_248_skip_head", "aq_249_tail", "aq_250_add_40", "aq_251_upsampler_convs_0"]
    assert all(qat_meta["ranges"][name] == carried[name] for name in held)
    assert sum(qat_meta["ranges"][name] != carried[name] for name in carried) > 100
    with pytest.raises(SystemExit, match="--qat-hold-staggered needs --qat --qat-ranges learned"):
        train_main(_args(data, tmp_path / "bad", 1, init_from=start, qat=True, qat_hold_staggered=True))
    assert not (tmp_path / "bad").exists()


def test_bias_only_training_holds_every_conv_weight_and_resumes_exactly(data, tmp_path):
    train_main(_args(data, tmp_path / "float", 2))
    start = tmp_path / "float" / "model.pt"
    bias = dict(init_from=start, qat=True, train_params="bias")
    a, b = straight_and_resumed(lambda out, iters, **kw: _args(data, out, iters, **bias, **kw), tmp_path)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    w0, w1 = (read_checkpoint(p)["state_dict"] for p in (start, tmp_path / "resumed" / "model.pt"))
    moved = {k for k in w0 if not torch.equal(w0[k], w1[k])}
    convs = {k for k in w0 if k.endswith(".weight") and w0[k].dim() == 4}
    assert convs and not moved & convs
    # the biases and the PReLU slopes (1-D weights) did move
    assert {k for k in moved if k.endswith(".bias")} and {k for k in moved if k.endswith(".weight")}
    assert read_checkpoint(tmp_path / "resumed" / "model.pt")["meta"]["training"]["train_params"] == "bias"
    # a run resumed with other trainable parameters is refused, not silently mixed
    with pytest.raises(SystemExit, match="--train-params"):
        train_main(_args(data, tmp_path / "resumed", 6, init_from=start, qat=True))


def test_staggered_qat_trains_and_validates_the_graph_that_converts(data, tmp_path):
    """--stagger 2 --stagger-upsampler --stagger-concat: the run resumes exactly, keeps the copied tensors'
    ranges as carried, and the validation score it records is that of the staggered int8 graph built from
    the checkpoint it writes (what converters/to_tflite.py --qat with the same flags converts), not the plain
    one's."""
    from drsan_kit.core import qat
    from drsan_kit.core.holdout import holdout_pairs, split_holdout
    from drsan_kit.core.stagger import stagger_direct_path
    from drsan_kit.core.train import validate

    start = SHIPPED_X2_QAT
    carried = read_checkpoint(start)["meta"]["qat"]["ranges"]
    kw = dict(init_from=start, qat=True, train_params="bias", loss="psnr", lr=1e-4, stagger=2,
              stagger_upsampler=True, stagger_concat=True, val_split=1, val_every=1,
              memory_format="contiguous")   # the layout the score below uses: the same roundings, bit for bit
    a, b = straight_and_resumed(lambda out, iters, **k: _args(data, out, iters, **kw, **k), tmp_path)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    ckpt = read_checkpoint(tmp_path / "resumed" / "model.pt")
    qat_meta = ckpt["meta"]["qat"]
    assert qat_meta["stagger"] == {"copies": 2, "upsampler": True, "concatenations": True}
    assert qat_meta["ranges_held"] == ["aq_063_cat", "aq_124_cat_1", "aq_185_cat_2", "aq_246_cat_3",   # the DRAGs'
                                       "aq_248_skip_head", "aq_249_tail", "aq_250_add_40", "aq_251_upsampler_convs_0"]
    # the copied tensors' ranges stay as carried; the others are tracked through the staggered graph
    assert all(qat_meta["ranges"][name] == carried[name] for name in qat_meta["ranges_held"])
    assert sum(qat_meta["ranges"][name] != carried[name] for name in carried) > 100
    w0 = read_checkpoint(start)["state_dict"]
    assert not torch.equal(w0["skip_head.bias"], ckpt["state_dict"]["skip_head.bias"])

    model, _ = load_checkpoint(tmp_path / "resumed" / "model.pt", "32s", 2)
    pairs = holdout_pairs(split_holdout(data, 1)[1], 2, 256)

    def score(net, ranges):
        sim = qat.prepare(net)
        qat.load_ranges(sim, ranges)
        return validate(sim, pairs, 2, torch.device("cpu"))

    staggered, staggered_ranges, _ = stagger_direct_path(model, qat_meta["ranges"], 2, upsampler=True,
                                                         concatenations=True)
    recorded = ckpt["meta"]["validation"]["psnr_y"]
    assert recorded == pytest.approx(score(staggered, staggered_ranges), abs=1e-9)
    assert recorded != pytest.approx(score(model, qat_meta["ranges"]), abs=1e-6)


def test_stagger_training_needs_qat_ranges_and_its_flags_together(data, tmp_path):
    with pytest.raises(SystemExit, match="--stagger needs --qat"):
        train_main(_args(data, tmp_path / "a", 1, init_from=SHIPPED_X2_QAT, stagger=2))
    with pytest.raises(SystemExit, match="--stagger-upsampler needs --stagger K"):
        train_main(_args(data, tmp_path / "b", 1, init_from=SHIPPED_X2_QAT, qat=True, stagger_upsampler=True))
    with pytest.raises(SystemExit, match="--stagger-concat needs --stagger K"):
        train_main(_args(data, tmp_path / "b", 1, init_from=SHIPPED_X2_QAT, qat=True, stagger_concat=True))
    train_main(_args(data, tmp_path / "float", 1))
    with pytest.raises(SystemExit, match="--stagger: .*start from a QAT checkpoint"):
        train_main(_args(data, tmp_path / "c", 1, init_from=tmp_path / "float" / "model.pt", qat=True, stagger=2))
    assert not any((tmp_path / name).exists() for name in "abc")
