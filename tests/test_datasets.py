"""Benchmark sets are found through --data or DRSAN_BENCHMARKS only, and a missing folder is a one-line error."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_tool
from drsan_kit.core.datasets import BenchmarkDataError, benchmark_root


@pytest.fixture
def tiny_set(tmp_path):
    hr = tmp_path / "sets" / "Tiny" / "HR"
    hr.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 36, 3), dtype=np.uint8)).save(hr / "noise.png")
    return tmp_path / "sets"


def test_no_folder_and_no_variable_names_what_is_expected(monkeypatch):
    monkeypatch.delenv("DRSAN_BENCHMARKS", raising=False)
    with pytest.raises(BenchmarkDataError) as err:
        benchmark_root(None)
    msg = str(err.value)
    for part in ("--data", "DRSAN_BENCHMARKS", "Set5", "Set14", "B100", "SET/HR", "LR_bicubic"):
        assert part in msg


def test_variable_is_used_and_argument_wins(monkeypatch, tiny_set, tmp_path):
    monkeypatch.setenv("DRSAN_BENCHMARKS", str(tiny_set))
    assert benchmark_root(None) == tiny_set
    with pytest.raises(BenchmarkDataError, match="not found"):
        benchmark_root(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchmarkDataError, match="no benchmark set"):
        benchmark_root(tmp_path / "empty")


def test_cli_without_data_exits_with_one_line(monkeypatch):
    monkeypatch.delenv("DRSAN_BENCHMARKS", raising=False)
    proc = run_tool("eval/bicubic.py", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no benchmark folder") and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


def test_benchmark_report_carries_its_provenance(tiny_set):
    proc = run_tool("eval/benchmark.py", "--variant", "32s", "--scale", "2", "--no-bicubic",
                    env={"DRSAN_BENCHMARKS": str(tiny_set)})
    lines = proc.stdout.splitlines()
    assert lines[0] == "# command: python eval/benchmark.py --variant 32s --scale 2 --no-bicubic"
    assert lines[1].startswith("# commit: ") and lines[2].startswith("# machine: ") and lines[3].startswith("# date: ")
    assert "weights=weights/drsan_32s_x2.pt" in proc.stdout
    proc = run_tool("eval/benchmark.py", "--variant", "32s", "--scale", "2", "--no-bicubic", "--json",
                    "--data", tiny_set)
    report = json.loads(proc.stdout)
    assert report["weights"] == "weights/drsan_32s_x2.pt"
    assert set(report["provenance"]) == {"command", "commit", "machine", "date"}
    assert str(REPO) not in report["provenance"]["command"]
