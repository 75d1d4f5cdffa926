"""Flags every tool shares, checked alike and before any work: --threads, counts, --margin, outputs, and a
converter's inputs before its output folder is made."""
import importlib
import json

import pytest

from conftest import run_tool


def no_traceback(proc):
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def usage_error(capsys, call, argv) -> str:
    """argparse's one-line complaint when `call(argv)` parses argv; fails if the flags are accepted."""
    with pytest.raises(SystemExit) as stop:
        call(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


# (module, function that parses the flags, other flags); the tools that parse inside main get an input that
# would stop them at once, so that a --threads let through fails the test in seconds, not after a conversion
THREAD_TOOLS = [
    ("drsan_kit.eval.drift", "parse_args", ["--artifacts", "x"]),
    ("drsan_kit.eval.sensitivity", "parse_args", []),
    ("drsan_kit.eval.op_speed", "parse_args", []),
    ("drsan_kit.eval.train_speed", "main", ["--data", "/nonexistent/train"]),
    ("drsan_kit.converters.to_tflite", "main", ["--weights", "/nonexistent/w.pt"]),
    ("drsan_kit.edge_runtime.bench", "parse_args", []),
    ("drsan_kit.edge_runtime.run", "parse_args", ["--torch", "x.png"]),
    ("drsan_kit.eval.int8_budget", "parse_args", []),
]


@pytest.mark.parametrize("value", ["-1", "257", "two"])
@pytest.mark.parametrize("module,function,extra", THREAD_TOOLS, ids=[t[0].rsplit(".", 1)[1] for t in THREAD_TOOLS])
def test_threads_is_checked_alike_by_every_tool(capsys, module, function, extra, value):
    call = getattr(importlib.import_module(module), function)
    line = usage_error(capsys, call, extra + ["--threads", value])
    assert "argument --threads: threads must be" in line


@pytest.mark.parametrize("module", ["drsan_kit.eval.drift", "drsan_kit.eval.op_speed",
                                    "drsan_kit.edge_runtime.bench"])
def test_threads_zero_means_every_core(module):
    from drsan_kit.core.provenance import usable_cores

    args = importlib.import_module(module).parse_args(["--artifacts", "x", "--threads", "0"]
                                                      if module.endswith("drift") else ["--threads", "0"])
    # op_speed names the number that ran in its report; the others resolve 0 when they open a model
    assert args.threads == (usable_cores() if module.endswith("op_speed") else 0)


@pytest.mark.parametrize("argv,message", [
    (["--runs", "0"], "argument --runs: must be 1 or more, not 0"),
    (["--runs", "-1"], "argument --runs: must be 1 or more, not -1"),
])
def test_bench_runs_must_be_a_count(capsys, argv, message):
    from drsan_kit.edge_runtime.bench import main

    assert message in usage_error(capsys, main, argv)


@pytest.mark.parametrize("argv,message", [
    (["--margin", "100"], "error: tile 192x336 is too small for a context margin of 100 px"),
    (["--skip", "torch,torch-full"], "error: --skip torch,torch-full leaves nothing to time"),
])
def test_bench_stops_with_one_line_before_timing(argv, message, shipped_x4):
    proc = no_traceback(run_tool("edge_runtime/bench.py", "--frame", "64x48", "--runs", "1", *argv, check=False))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [message]


def test_bench_checks_its_outputs_before_timing(tmp_path):
    (tmp_path / "taken").mkdir()
    proc = no_traceback(run_tool("edge_runtime/bench.py", "--frame", "64x48", "--json", tmp_path / "taken",
                                 "--md", tmp_path / "taken" / "x.md", check=False))
    assert proc.returncode == 2 and "timing" not in proc.stderr and not proc.stdout
    assert proc.stderr.strip() == f"error: --json {tmp_path / 'taken'}: it is a folder; give a file name"


MARGIN_TOOLS = {"drsan_kit.eval.drift": ["--artifacts", "x"], "drsan_kit.eval.benchmark": [],
                "drsan_kit.edge_runtime.bench": [],
                "drsan_kit.edge_runtime.run": ["--torch", "x.png"]}


@pytest.mark.parametrize("module", MARGIN_TOOLS)
def test_margin_is_checked_alike_when_parsed(capsys, module):
    extra = MARGIN_TOOLS[module]
    line = usage_error(capsys, importlib.import_module(module).parse_args, extra + ["--margin", "-1"])
    assert "argument --margin: the context margin must be 0 or more pixels, not -1" in line


def test_drift_limit_must_be_a_number_of_db(capsys):
    from drsan_kit.eval.drift import parse_args

    for value in ("nan", "-0.1", "inf"):
        assert "argument --max-drift" in usage_error(capsys, parse_args, ["--artifacts", "x", "--max-drift", value])


@pytest.mark.parametrize("script", ["converters/to_onnx.py", "converters/to_tflite.py", "converters/to_coreml.py"])
def test_a_bad_checkpoint_leaves_no_output_folder(script, tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"\x89PNG\r\n\x1a\n not a checkpoint")
    out = tmp_path / "new" / "artifacts"
    proc = no_traceback(run_tool(script, "--weights", damaged, "--out", out, check=False))
    assert proc.returncode == 2 and "error: " in proc.stderr and "damaged.pt" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_a_missing_checkpoint_leaves_no_output_folder(tmp_path):
    proc = no_traceback(run_tool("converters/to_onnx.py", "--weights", tmp_path / "missing.pt",
                                 "--out", tmp_path / "new", check=False))
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_a_folder_of_another_model_is_refused_before_converting(tmp_path, shipped_x4):
    from drsan_kit.edge_runtime.contract import Manifest, ModelInfo, write_manifest

    write_manifest(tmp_path, Manifest(ModelInfo("32s", 2, "weights/drsan_32s_x2.pt")))
    before = (tmp_path / "manifest.json").read_text()
    proc = no_traceback(run_tool("converters/to_onnx.py", "--tile", "24x32", "--out", tmp_path, check=False))
    assert proc.returncode == 2 and "lists artifacts of DRSAN-32s x2" in proc.stderr
    assert "exporting" not in proc.stdout   # refused before the export, not after it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == json.loads(before)


@pytest.mark.parametrize("argv,message", [
    (["--slow", "0"], "argument --slow: must be more than 0 seconds"),
    (["--slow", "nan"], "argument --slow: must be more than 0 seconds"),
])
def test_bench_slow_must_be_a_positive_time(capsys, argv, message):
    from drsan_kit.edge_runtime.bench import parse_args

    assert message in usage_error(capsys, parse_args, argv)


def test_bench_table_names_its_baseline():
    from drsan_kit.edge_runtime.bench import markdown

    row = {"backend": "tflite-int8", "tile": None, "median_ms": 1.0, "output_mp_per_s": 1.0, "speed_vs_torch": 1.0}
    report = {"scale": 4, "variant": "32s", "frame": "64x48", "threads": 2, "runs": 1, "machine": "m", "results": [row]}
    assert "| vs PyTorch eager |" in markdown(report | {"baseline": "torch-full"})
    text = markdown(report | {"baseline": "tflite-int8"})
    assert "| vs tflite-int8 |" in text and "PyTorch eager on the whole frame was skipped" in text


def test_tiling_frames_are_0_to_4(capsys):
    from drsan_kit.eval.tiling import main

    assert "argument --frames: invalid choice: 7" in usage_error(capsys, main, ["--frames", "7"])


@pytest.mark.parametrize("argv,message", [
    (["--skip", "int9"], "error: --skip int9: neither a precision nor a row of this table"),
    (["--whole-frame", "fp32"], "error: --whole-frame fp32: no TFLite model of that precision"),
    (["--json", "same.txt", "--md", "same.txt"], "error: --json and --md are the same file"),
])
def test_bench_names_that_match_nothing_are_refused(argv, message, shipped_x4, tmp_path):
    argv = [str(tmp_path / a) if a == "same.txt" else a for a in argv]
    proc = no_traceback(run_tool("edge_runtime/bench.py", "--frame", "64x48", "--runs", "1", *argv, check=False))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr


def test_bench_lets_go_of_each_model_once_it_is_timed(monkeypatch, tmp_path):
    import weakref

    from drsan_kit.edge_runtime import bench

    class Model:
        pass

    refs, alive = [], []

    def plan(args, threads):
        models = [Model() for _ in range(3)]
        refs.extend(weakref.ref(m) for m in models)
        return [(f"row{i}", m, "") for i, m in enumerate(models)]

    def time_row(label, up, frame, args, note):
        alive.append(sum(r() is not None for r in refs))
        return {"backend": label, "tile": None, "median_ms": 1.0, "output_mp_per_s": 1.0}

    monkeypatch.setattr(bench, "plan", plan)
    monkeypatch.setattr(bench, "bench", time_row)
    assert bench.main(["--frame", "8x8", "--runs", "1", "--md", str(tmp_path / "t.md")]) == 0
    assert alive == [3, 2, 1]   # a whole-frame interpreter holds gigabytes: none outlives its row


def test_bench_rounds_alternate_the_order_and_pool_the_runs(monkeypatch, tmp_path):
    import json

    from drsan_kit.edge_runtime import bench

    seen = []
    # row a is fast early in a round and slow late, row b the reverse: the pooled medians come out alike
    ms = {("a", 0): 10.0, ("b", 1): 30.0, ("b", 0): 10.0, ("a", 1): 30.0}

    def plan(args, threads):
        return [("a", None, ""), ("b", None, "")]

    def time_row(label, up, frame, args, note):
        position = len(seen) % 2
        seen.append(label)
        t = ms[(label, position)]
        return {"backend": label, "tile": None, "median_ms": t, "min_ms": t, "times_ms": [t], "runs": 1,
                "output_mp_per_s": 100.0 / t}

    monkeypatch.setattr(bench, "plan", plan)
    monkeypatch.setattr(bench, "bench", time_row)
    out = tmp_path / "t.json"
    assert bench.main(["--frame", "8x8", "--runs", "1", "--rounds", "2", "--json", str(out)]) == 0
    assert seen == ["a", "b", "b", "a"]
    rows = {r["backend"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["a"]["times_ms"] == [10.0, 30.0] and rows["b"]["times_ms"] == [30.0, 10.0]
    assert rows["a"]["median_ms"] == rows["b"]["median_ms"] == 20.0 and rows["a"]["runs"] == 2
    assert abs(rows["a"]["output_mp_per_s"] - 5.0) < 1e-9   # 100 MP-ms at 20 ms
    assert "median of 2 runs (1 in each of 2 rounds" in bench.markdown(json.loads(out.read_text()))
    # a third round starts in the listed order again
    seen.clear()
    assert bench.main(["--frame", "8x8", "--runs", "1", "--rounds", "3", "--json", str(out)]) == 0
    assert seen == ["a", "b", "b", "a", "a", "b"]
