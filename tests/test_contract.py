"""The contract shared by converters, runtime and eval: tile spec (fast, torch-free)."""
import argparse

import pytest

from conftest import run_tool
from drsan_kit.edge_runtime.contract import (DEFAULT_MARGIN, DEFAULT_TILE, WHOLE_FRAME, argtype, format_tile,
                                             parse_artifact_tile, parse_tile, parse_tiles, parse_window,
                                             window_tile)


@pytest.mark.parametrize("text,tile", [("192x336", (192, 336)), ("24X32", (24, 32)), (" 48 ", (48, 48))])
def test_parse_tile_reads_hxw_and_square(text, tile):
    assert parse_tile(text) == tile
    assert parse_tile(format_tile(tile)) == tile


@pytest.mark.parametrize("text,message", [("abc", "HxW"), ("3x4x5", "HxW"), ("0x8", "positive"), ("", "HxW")])
def test_parse_tile_names_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tile(text)


def test_artifact_tiles_have_a_minimum():
    assert parse_artifact_tile("8x8") == (8, 8)
    with pytest.raises(ValueError, match="at least 8x8"):
        parse_artifact_tile("4x64")


def test_windows_and_lists():
    assert parse_window("0") == parse_window("full") == WHOLE_FRAME
    assert window_tile(parse_window("0")) is None and window_tile(None) is None
    assert window_tile(parse_window("16x24")) == (16, 24)
    with pytest.raises(ValueError, match="0 for the whole frame"):
        parse_window("big")
    assert parse_tiles("48,96,192x336") == [(48, 48), (96, 96), DEFAULT_TILE]
    assert parse_tiles("") == []


def test_argtype_turns_errors_into_usage_errors():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tile", type=argtype(parse_tile))
    with pytest.raises(argparse.ArgumentTypeError, match="HxW"):
        argtype(parse_tile)("nope")
    assert ap.parse_args(["--tile", "8x16"]).tile == (8, 16)


def test_every_tiler_default_is_the_contract_margin():
    from drsan_kit.edge_runtime.tiler import Tiler
    from drsan_kit.edge_runtime.upscaler import Upscaler

    class Flexible:
        name, scale, input_hw = "fake", 2, None

    assert Tiler(2, (64, 64)).margin == DEFAULT_MARGIN
    assert Upscaler(Flexible(), tile=(64, 64)).tiler.margin == DEFAULT_MARGIN


@pytest.mark.parametrize("script", ["edge_runtime/run.py", "converters/to_onnx.py", "eval/drift.py",
                                    "eval/benchmark.py"])
def test_bad_tile_is_a_one_line_usage_error(script, tmp_path):
    proc = run_tool(script, "--tile", "abc", "--artifacts", tmp_path, "x.png", check=False)
    assert proc.returncode == 2 and "HxW" in proc.stderr and "Traceback" not in proc.stderr


def test_precision_table_knows_every_tflite_mode_and_its_sources():
    from drsan_kit.converters.to_tflite import parse_quant
    from drsan_kit.edge_runtime.contract import PRECISIONS, PTQ, QAT, TFLITE_MODES, precision

    assert parse_quant("all") == list(TFLITE_MODES) == ["fp32", "fp16", "int8", "int8_io", "int16x8"]
    assert {m for m in TFLITE_MODES if QAT in precision(m).quantization} == {"int8", "int8_io"}
    assert all(PTQ in p.quantization for p in PRECISIONS.values() if p.integer)
    assert [m for m in TFLITE_MODES if precision(m).io == "int8"] == ["int8_io"]
    assert all(p.prelu == ("decomposed" if p.integer else "native") for p in PRECISIONS.values())
    with pytest.raises(ValueError, match="unknown precision"):
        precision("int4")
    with pytest.raises(argparse.ArgumentTypeError, match="int4"):
        parse_quant("fp32,int4")


@pytest.mark.parametrize("name,level", [("int8_io", "int8"), ("fp16_w8", "fp16"), ("int16x8", "int16x8")])
def test_checks_use_the_tolerance_of_their_precision(name, level):
    import numpy as np

    from drsan_kit.converters import common
    from drsan_kit.edge_runtime.contract import TOLERANCES

    ref = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    tol = TOLERANCES[level]
    small = min(tol.max_abs, 10 ** (-tol.min_psnr / 20)) / 2   # inside both limits
    ok = common.enforce(common.compare(ref + small, ref), name, "x")
    assert ok["passed"] and ok["tolerance"] == {"min_psnr": tol.min_psnr, "max_abs": tol.max_abs}
    with pytest.raises(common.ConversionError, match=f"outside the {level} tolerance"):
        common.enforce(common.compare(ref + tol.max_abs * 2, ref), name, "x")
