import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def find_benchmarks() -> Path | None:
    """$DRSAN_BENCHMARKS, else a benchmarks/ folder beside the repository's parent (../shared/benchmarks)."""
    env = os.environ.get("DRSAN_BENCHMARKS")
    for path in ([Path(env)] if env else []) + [REPO.parent / "shared" / "benchmarks"]:
        if (path / "Set5" / "HR").is_dir():
            return path
    return None


@pytest.fixture
def bench_dir():
    path = find_benchmarks()
    if path is None:
        pytest.skip("needs the benchmark sets (Set5/HR, ...): set DRSAN_BENCHMARKS=DIR or place them in "
                    "../shared/benchmarks")
    return path


SHIPPED_X4 = REPO / "weights" / "drsan_32s_x4.pt"
SHIPPED_X2_QAT = REPO / "weights" / "drsan_32s_x2_qat.pt"


def randomised(model):
    """`model` with every parameter nudged at random (seed 0), in eval mode: PReLU slopes start at 0,
    and a fresh model would leave some paths untested."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def straight_and_resumed(make_args, tmp_path, iters=4, stop_at=2):
    """Train `iters` iterations in one go, and again with a stop at `stop_at` and a resume;
    returns both runs' last.pt. make_args(out, iters, **extra) gives core/train.py's arguments."""
    from drsan_kit.core.checkpoint import read_checkpoint
    from drsan_kit.core.train import main as train_main

    train_main(make_args(tmp_path / "straight", iters))
    train_main(make_args(tmp_path / "resumed", iters, stop_at=stop_at))
    train_main(make_args(tmp_path / "resumed", iters))
    return read_checkpoint(tmp_path / "straight" / "last.pt"), read_checkpoint(tmp_path / "resumed" / "last.pt")


def train_args(data, out, iters, patch=16, **extra):
    """core/train.py arguments for a tiny, fast, deterministic x2 run; extra flags as keywords (True: a bare flag)."""
    args = ["--variant", "32s", "--scale", "2", "--data", str(data), "--out", str(out), "--iters", str(iters),
            "--batch", "2", "--patch", str(patch), "--amp", "off", "--threads", "1", "--save-every", "1",
            "--schedule", "cosine", "--warmup", "1", "--lr", "1e-3"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return args
CONVERT_TILE = "24x32"


def run_tool(script, *args, env=None, check=True):
    """Run one of the kit's scripts by path, as a user does; returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run([sys.executable, str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def shipped_x4():
    assert SHIPPED_X4.is_file(), "the shipped checkpoint weights/drsan_32s_x4.pt is missing"
    return SHIPPED_X4


@pytest.fixture(scope="session")
def onnx_artifacts(tmp_path_factory, shipped_x4):
    out = tmp_path_factory.mktemp("onnx")
    run_tool("converters/to_onnx.py", "--variant", "32s", "--scale", "4", "--tile", CONVERT_TILE, "--out", out)
    run_tool("converters/to_onnx.py", "--variant", "32s", "--scale", "4", "--dynamic", "--tile", CONVERT_TILE,
             "--out", out)
    return out


@pytest.fixture(scope="session")
def tflite_artifacts(tmp_path_factory, shipped_x4):
    pytest.importorskip("tensorflow")
    pytest.importorskip("onnx2tf")
    out = tmp_path_factory.mktemp("tflite")
    run_tool("converters/to_tflite.py", "--variant", "32s", "--scale", "4", "--tile", CONVERT_TILE, "--quant", "all",
             "--calib-count", "8", "--out", out)
    return out


def encode_tone(container, stream, tone):
    """Mux a mono float32 signal (shape (1, n), 48 kHz) through an audio stream, frame by frame."""
    import av
    import numpy as np

    step = stream.codec_context.frame_size or 960
    for k in range(0, tone.shape[1], step):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, k:k + step]), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, k
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
