"""DRSAN checkpoint -> ONNX -> (onnx2tf) TensorFlow SavedModel -> TFLite fp32/fp16/int8/int16x8.

    python converters/to_tflite.py --variant 32s --scale 4 --quant all [--tile 192x336] [--calib DIR] [--out artifacts]

Every file is run with the TFLite interpreter (XNNPACK) on real image crops and
compared with the FP32 PyTorch model before it is reported; a file outside its
precision's tolerance fails the run (exit 2). A manifest.json describes them all.

Quantization modes:
  fp32      float model
  fp16      fp16 weights, fp32 inputs/outputs (dequantized at load)
  int8      full-integer int8 (per-channel weights), float32 input/output
  int8_io   full-integer int8 with int8 input/output tensors
  int16x8   int16 activations, int8 weights, float32 input/output (the two depth-to-space
            ops, which have no 16x8 kernel, stay float)
--qat CKPT (a checkpoint from `core/train.py --qat`): the int8 and int8_io files are built
from its fine-tuned weights with the int8 ranges it learned (converters/qat_ranges.py)
instead of a calibration, and named *_int8_qat.tflite; the other modes, the check's
reference and the manifest's model still come from --weights (the float model).
--stagger K (with --qat): the direct path (skip head, tail and their sum) carried K times,
each copy shifted by 1/K of an int8 step, for log2(K) more bits where half of the int8 error
sits (core/stagger.py); the same float function, a little more arithmetic; named
*_int8_qat_staggerK.tflite. With --stagger-upsampler the upsampler's last conv output is
carried K times too (*_int8_qat_staggerKu.tflite); with --stagger-concat each DRAG's
concatenation, the input of its 1x1 fuse conv, is too ("c" added to the name).
In the integer modes PReLU is exported as relu(x) + depthwise1x1(x - relu(x), a)
(--prelu sub, the default) or depthwise1x1(x, a) + depthwise1x1(relu(x), 1 - a) (--prelu affine):
the same function, with per-channel slopes, from ops XNNPACK runs in int8.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python converters/to_tflite.py
    import importlib

    __package__ = "drsan_kit.converters"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import common
from .export import PRELU_FORMS
from .tflite import build_saved_model, convert_mode, convert_qat, load_qat
from ..core.equalize import equalize_direct_path
from ..core.stagger import MAX_COPIES, stagger_direct_path
from ..core.stagger import flags as stagger_flags, flags_problem as stagger_flags_problem
from ..edge_runtime.backends import open_backend
from ..edge_runtime.contract import (PRECISIONS, PTQ, QAT, TFLITE_MODES, argtype, parse_count, parse_threads,
                                     stagger_tag)


def parse_quant(text: str) -> list[str]:
    modes = list(TFLITE_MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in TFLITE_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"unknown quantization {','.join(bad) or text!r}; "
                                         f"choose from {', '.join(TFLITE_MODES)} or all")
    return modes


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Convert DRSAN to TFLite (via ONNX and onnx2tf) in fp32, fp16, int8 and int16x8, "
                    "each checked with the TFLite interpreter against PyTorch.")
    common.add_model_args(ap)
    ap.add_argument("--quant", type=parse_quant, default=list(TFLITE_MODES),
                    help="comma-separated: fp32,fp16,int8,int8_io,int16x8, or all (default all)")
    ap.add_argument("--calib", default=None,
                    help="folder of images for int8/int16 calibration, random crops at the tile size "
                         "(default: photographs shipped with scikit-image); inputs are RGB in [0, 1], "
                         "mean 0, std 1, no ImageNet statistics")
    ap.add_argument("--calib-count", type=argtype(parse_count), default=32, help="calibration crops (default 32)")
    ap.add_argument("--calib-outlier", type=float, default=2.0,
                    help="int8: leave out calibration crops where some layer peaks above this many times its "
                         "median peak over the crops, so one extreme crop cannot coarsen every image's int8 "
                         "steps (default 2; 0 keeps every crop; int16x8 always keeps every crop)")
    ap.add_argument("--prelu", choices=PRELU_FORMS, default="sub",
                    help="how integer modes spell PReLU (default sub; see converters/export.py)")
    ap.add_argument("--qat", default=None, metavar="CKPT",
                    help="build int8/int8_io from this quantization-aware checkpoint (core/train.py --qat) with "
                         "its learned int8 ranges instead of a calibration; written as *_int8_qat.tflite")
    ap.add_argument("--stagger", type=int, default=1, metavar="K",
                    help="with --qat: carry the direct path (skip head, tail, their sum) K times, each copy "
                         "shifted by 1/K of an int8 step, for log2(K) more bits on the tensors that lose the "
                         "most; the tail conv gets K times its outputs and the first upsampler conv K times its "
                         f"inputs (1 to {MAX_COPIES}; default 1, off; written as *_int8_qat_staggerK.tflite)")
    ap.add_argument("--stagger-upsampler", action="store_true",
                    help="with --stagger K: carry the upsampler's last conv output K times as well, and average "
                         "the copies in the output conv; at x2 +33%% multiply-adds in all against +13%% without "
                         "(written as *_int8_qat_staggerKu.tflite)")
    ap.add_argument("--stagger-concat", action="store_true",
                    help="with --stagger K: carry each DRAG's concatenation K times as well (its requantizing "
                         "identity convs write the shifted copies, its 1x1 fuse conv averages them); about +10%% "
                         "multiply-adds more (\"c\" added to the file name)")
    ap.add_argument("--threads", type=argtype(parse_threads), default=0,
                    help="interpreter threads for the check, 0 for every core this process may use (default 0)")
    ap.add_argument("--keep-saved-model", action="store_true", help="keep onnx2tf's SavedModel in --out")
    args = ap.parse_args(argv)
    common.quiet_startup(args.verbose)
    if args.qat and args.prelu != "sub":
        ap.error("--qat needs --prelu sub, the spelling fine-tuning simulates")
    problem = stagger_flags_problem(args.stagger, args.stagger_upsampler, args.stagger_concat)
    if problem:
        ap.error(problem)
    if args.stagger != 1 and not args.qat:
        ap.error("--stagger needs --qat CKPT: the copies' shifts follow from the checkpoint's learned int8 ranges")
    model, blob, weights = common.load_reference(args)
    qat_model, qat_ranges_, qat_about = load_qat(args.qat, args) if args.qat else (None, None, None)
    trained_for = (qat_about or {}).get("trained_stagger")
    if trained_for and (trained_for.get("copies"), bool(trained_for.get("upsampler")),
                        bool(trained_for.get("concatenations"))) != (
            args.stagger, args.stagger_upsampler, args.stagger_concat):
        # the weights fit the graph they were fine-tuned through best; another one still converts
        print(f"note: {args.qat} was fine-tuned for "
              f"{stagger_flags(trained_for.get('copies'), trained_for.get('upsampler'), trained_for.get('concatenations'))}"
              f"; converting for {stagger_flags(args.stagger, args.stagger_upsampler, args.stagger_concat)}")
    stagger = None
    if args.stagger != 1:
        try:
            qat_model, qat_ranges_, stagger = stagger_direct_path(qat_model, qat_ranges_, args.stagger,
                                                                     upsampler=args.stagger_upsampler,
                                                                     concatenations=args.stagger_concat)
        except ValueError as exc:
            raise common.ConversionError(f"{args.qat}: {exc}") from None
    calib_images, calib_desc = common.sample_images(args.calib)
    out = common.output_folder(args, blob, weights)
    crops, check_desc = common.check_crops(args.tile, args.check_images)
    calib_all = common.random_crops(calib_images, args.tile, args.calib_count, seed=common.CALIB_SEED)
    calib, dropped = calib_all, 0
    if any(PRECISIONS[m].calibration == "drop-outliers" for m in args.quant) and not args.qat:
        calib, dropped = common.drop_outlier_crops(model, calib_all, args.calib_outlier)
    crop_desc = f"random {args.tile[0]}x{args.tile[1]} crops"

    def calibration_for(mode: str) -> tuple[np.ndarray, str]:
        # The outlier rule is for int8's 256 levels; int16x8 has the resolution to keep every crop's range.
        if PRECISIONS[mode].calibration == "every-crop":
            return calib_all, f"{calib_desc} ({len(calib_all)} {crop_desc})"
        return calib, f"{calib_desc} ({len(calib)} {crop_desc}, {dropped} outliers left out)"
    if dropped:
        print(f"calibration: {dropped} of {args.calib_count} crops left out as activation outliers "
              f"(> {args.calib_outlier:g}x a layer's median peak; --calib-outlier 0 keeps them)")
    reference = common.reference_outputs(model, crops)
    stem = f"drsan_{args.variant}_x{args.scale}_{args.tile[0]}x{args.tile[1]}"
    print(f"converting DRSAN-{args.variant} x{args.scale} from {common.shown_path(weights)}, "
          f"tile {args.tile[0]}x{args.tile[1]}")
    records = []
    with tempfile.TemporaryDirectory(prefix="drsan-tflite-") as tmp:
        tmp = Path(tmp)
        graphs = {}

        def uses_qat(mode: str) -> bool:
            return args.qat is not None and QAT in PRECISIONS[mode].quantization

        def equalized(mode: str) -> bool:
            # int8 activations only: int16's levels leave the direct path nothing to gain
            return not uses_qat(mode) and PRECISIONS[mode].activations == "int8"

        def graph_model(key: str):
            if key == "qat":
                return qat_model   # equalized when it was fine-tuned (core/equalize.py)
            if key.endswith("+equalized"):
                eq, factors = equalize_direct_path(model, torch.from_numpy(calib.transpose(0, 3, 1, 2).copy()))
                print(f"  direct path equalized on the calibration crops: skip factors {factors['skip']}")
                return eq
            return model

        def graph_for(mode: str):
            """(SavedModel, the PyTorch model it was exported from), built once per kind of graph."""
            # Integer modes get PReLU spelled with relu/depthwise-conv/add (see DecomposedPReLU):
            # int16x8 has no PRELU kernel, and int8 PRELU has no XNNPACK kernel.
            key = "qat" if uses_qat(mode) else PRECISIONS[mode].prelu + ("+equalized" if equalized(mode) else "")
            if key not in graphs:
                t0 = time.time()
                sample = common.random_crops(common.sample_images()[0], args.tile, 4, seed=3)
                source = graph_model(key)
                graphs[key] = (build_saved_model(source, args.tile, tmp / key, key != "native", sample,
                                                 args.verbose, args.prelu), source)
                print(f"  onnx2tf ({key.replace('+', ', ')} graph): SavedModel in {time.time() - t0:.0f} s")
            return graphs[key]

        for mode in args.quant:
            saved, source = graph_for(mode)
            mode_calib, mode_calib_desc = calibration_for(mode)
            t0 = time.time()
            qat_summary = None
            try:
                if uses_qat(mode):
                    blob_bytes, qat_summary = convert_qat(saved, qat_model, qat_ranges_, mode, calib_all, args.verbose)
                else:
                    blob_bytes = convert_mode(saved, mode, mode_calib, args.verbose)
            except common.ConversionError:
                raise
            except Exception as exc:   # TensorFlow raises many kinds; one line is enough for the user
                raise common.ConversionError(f"TFLite {mode} conversion failed: {str(exc).splitlines()[0][:300]}")
            tag = stagger_tag(args.stagger, args.stagger_upsampler, args.stagger_concat) if stagger else ""
            suffix = ("_qat" + (f"_{tag}" if tag else "")) if qat_summary else ""
            staged = tmp / f"{stem}_{mode}{suffix}.tflite"
            staged.write_bytes(blob_bytes)
            print(f"  {mode}{' (QAT ranges)' if qat_summary else ''}: converted in {time.time() - t0:.0f} s, "
                  f"{len(blob_bytes) / 1e6:.2f} MB")
            if qat_summary:
                print(f"    {qat_summary['tensors_with_learned_range']} tensors took a learned range, "
                      f"{qat_summary['tensors_with_image_range']} the output image's [0, 1], "
                      f"{qat_summary['tensors_calibrated']} kept the calibrated one (slices, sigmoid outputs)")
            with common.quiet(not args.verbose):   # the interpreter's "Created ... XNNPACK delegate" line
                backend = open_backend("tflite", staged, threads=args.threads)
            check = common.check_artifact(backend, crops, reference, mode, staged.name)
            check["images_from"] = check_desc
            final = out / staged.name
            shutil.move(staged, final)   # only checked files reach --out
            spec = PRECISIONS[mode]
            records.append(common.artifact_record(
                final, "tflite", mode, args.tile, False, check, io=spec.io,
                calibration=(None if qat_summary else mode_calib_desc) if spec.integer else None,
                quantization=(QAT if qat_summary else PTQ) if spec.integer else None,
                **({"qat": qat_about | {"ranges": qat_summary}} if qat_summary else {}),
                **({"stagger": stagger} if qat_summary and stagger else {}),
                prelu=args.prelu if spec.integer else "native",
                **({"direct_path_equalized": source.skip_head is not None} if spec.integer else {}),
                converter="onnx2tf (TensorFlow SavedModel) + tf.lite.TFLiteConverter",
                tools=common.tool_versions("torch", "onnx", "onnx2tf", "tensorflow", "ai-edge-litert")))
            # Described as soon as it lands: a later mode's failure leaves a consistent folder.
            common.write_manifest(out, args, blob, weights, records)
        if args.keep_saved_model:
            shutil.copytree(graph_for("fp32")[0], out / f"{stem}_saved_model", dirs_exist_ok=True)
    for r in records:
        print(f"wrote {out / r.file}")


if __name__ == "__main__":
    common.run_cli(main)
