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
In the integer modes PReLU is exported as relu(x) + depthwise1x1(x - relu(x), a)
(--prelu sub, the default) or depthwise1x1(x, a) + depthwise1x1(relu(x), 1 - a) (--prelu affine):
the same function, with per-channel slopes, from ops XNNPACK runs in int8.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from drsan_kit.converters import common, qat_ranges
from drsan_kit.converters.export import PRELU_FORMS, deploy_model, export_onnx
from drsan_kit.edge_runtime.contract import PRECISIONS, PTQ, QAT, TFLITE_MODES


def parse_quant(text: str) -> list[str]:
    modes = list(TFLITE_MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in TFLITE_MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"unknown quantization {','.join(bad) or text!r}; "
                                         f"choose from {', '.join(TFLITE_MODES)} or all")
    return modes


@contextlib.contextmanager
def quiet(enabled: bool = True):
    """Silence TensorFlow's and onnx2tf's chatter (C++ logs go to fd 2) unless --verbose."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2), os.dup(1)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        os.dup2(null.fileno(), 1)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            os.dup2(saved[0], 2)
            os.dup2(saved[1], 1)
            os.close(saved[0])
            os.close(saved[1])


def onnx_to_saved_model(onnx_path: Path, workdir: Path, sample: np.ndarray, verbose: bool) -> Path:
    """onnx2tf's TensorFlow path; its self-check data is our own sample crops, never a download."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnx2tf
    import onnx2tf.onnx2tf as o2t_module

    # onnx2tf fetches a sample-image file from the internet to test image-shaped models; give it ours.
    o2t_module.download_test_image_data = lambda: sample
    out = workdir / "saved_model"
    with quiet(not verbose):
        onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(out),
                        copy_onnx_input_output_names_to_tflite=True, output_signaturedefs=True,
                        non_verbose=not verbose)
    if not (out / "saved_model.pb").is_file():
        raise common.ConversionError(f"onnx2tf produced no SavedModel from {onnx_path}")
    return out


def build_saved_model(model, tile, workdir: Path, decomposed: bool, sample: np.ndarray, verbose: bool,
                      prelu_form: str = "sub") -> Path:
    """PyTorch model -> deployable ONNX (DCR, clamped; PReLU decomposed for integer modes) -> SavedModel."""
    workdir.mkdir(parents=True, exist_ok=True)
    deployable = deploy_model(model, decompose_prelu=decomposed, prelu_form=prelu_form)
    onnx_path = export_onnx(deployable, workdir / "model.onnx", tile)
    return onnx_to_saved_model(onnx_path, workdir, sample, verbose)


def make_converter(saved_model: Path, mode: str, calib: np.ndarray):
    """A TFLiteConverter set up for one quantization mode (calibrated on `calib` for the integer ones)."""
    import tensorflow as tf
    from tqdm import tqdm

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    spec = PRECISIONS[mode]
    if spec.weights == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif spec.integer:
        def representative():
            for x in tqdm(calib, desc=f"calibrating {mode}", leave=False, disable=None):
                yield [x[None]]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        if spec.activations == "int16":
            # DEPTH_TO_SPACE has no 16x8 kernel: the two upsampler shuffles stay float.
            conv.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
                tf.lite.OpsSet.TFLITE_BUILTINS]
        else:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if spec.io == "int8":
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    return conv


def convert_mode(saved_model: Path, mode: str, calib: np.ndarray, verbose: bool) -> bytes:
    conv = make_converter(saved_model, mode, calib)
    with quiet(not verbose):
        return conv.convert()


def load_qat(path: str, args):
    """(fine-tuned model, its learned ranges, the manifest's description) of a --qat checkpoint."""
    from drsan_kit.core.checkpoint import CheckpointError, load_checkpoint
    from drsan_kit.edge_runtime.contract import sha256

    try:
        model, blob = load_checkpoint(path, args.variant, args.scale)
    except CheckpointError as exc:
        raise common.ConversionError(str(exc)) from None
    qat = blob.get("meta", {}).get("qat")
    if not qat or not qat.get("ranges"):
        raise common.ConversionError(f"{path}: not a quantization-aware checkpoint (no int8 ranges in its "
                                     f"metadata); make one with core/train.py --qat")
    about = {"checkpoint": common.shown_path(path), "checkpoint_sha256": sha256(Path(path)),
             "iterations": qat.get("iterations"), "init_from": qat.get("init_from"),
             "validation": blob["meta"].get("validation", {}).get("set")}
    return model, qat["ranges"], about


def convert_qat(saved_model: Path, model, ranges: dict, mode: str, crops: np.ndarray, verbose: bool):
    """int8 TFLite from the fine-tuned model's SavedModel with the learned ranges written in."""
    import torch

    from drsan_kit.core import qat

    sim = qat.prepare(model)
    try:
        qat.load_ranges(sim, ranges)
    except ValueError as exc:
        raise common.ConversionError(str(exc)) from None
    float_sim = qat.recorded_ranges(sim, torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()))
    with quiet(not verbose):
        return qat_ranges.qat_quantize(make_converter(saved_model, "int8", crops), crops, float_sim, ranges,
                                       io_int8=mode == "int8_io")


def check_tflite(path: Path, mode: str, crops: np.ndarray, reference: np.ndarray, threads: int) -> dict:
    from drsan_kit.edge_runtime.backends.tflite import TFLiteBackend

    backend = TFLiteBackend(path, threads=threads)
    outputs = np.stack([backend(c) for c in crops])
    return common.enforce(common.compare(outputs, reference), mode, path.name)


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
    ap.add_argument("--calib-count", type=int, default=32, help="calibration crops (default 32)")
    ap.add_argument("--calib-outlier", type=float, default=2.0,
                    help="int8: leave out calibration crops where some layer peaks above this many times its "
                         "median peak over the crops, so one extreme crop cannot coarsen every image's int8 "
                         "steps (default 2; 0 keeps every crop; int16x8 always keeps every crop)")
    ap.add_argument("--prelu", choices=PRELU_FORMS, default="sub",
                    help="how integer modes spell PReLU (default sub; see converters/export.py)")
    ap.add_argument("--qat", default=None, metavar="CKPT",
                    help="build int8/int8_io from this quantization-aware checkpoint (core/train.py --qat) with "
                         "its learned int8 ranges instead of a calibration; written as *_int8_qat.tflite")
    ap.add_argument("--threads", type=int, default=0, help="interpreter threads for the check")
    ap.add_argument("--keep-saved-model", action="store_true", help="keep onnx2tf's SavedModel in --out")
    ap.add_argument("--verbose", action="store_true", help="show onnx2tf and TensorFlow output")
    args = ap.parse_args(argv)
    if args.qat and args.prelu != "sub":
        ap.error("--qat needs --prelu sub, the spelling fine-tuning simulates")
    out = common.prepare_out(args.out)
    model, blob, weights = common.load_reference(args)
    qat_model, qat_ranges_, qat_about = load_qat(args.qat, args) if args.qat else (None, None, None)
    check_images, check_desc = common.sample_images()
    calib_images, calib_desc = common.sample_images(args.calib)
    crops = common.random_crops(check_images, args.tile, args.check_images, seed=common.CHECK_SEED)
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

        def saved_model_for(mode: str) -> Path:
            # Integer modes get PReLU spelled with relu/depthwise-conv/add (see DecomposedPReLU):
            # int16x8 has no PRELU kernel, and int8 PRELU has no XNNPACK kernel.
            key = "qat" if uses_qat(mode) else PRECISIONS[mode].prelu
            if key not in graphs:
                t0 = time.time()
                sample = common.random_crops(check_images, args.tile, 4, seed=3)
                graphs[key] = build_saved_model(qat_model if key == "qat" else model, args.tile, tmp / key,
                                                key != "native", sample, args.verbose, args.prelu)
                print(f"  onnx2tf ({key} PReLU): SavedModel in {time.time() - t0:.0f} s")
            return graphs[key]

        for mode in args.quant:
            saved = saved_model_for(mode)
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
            staged = tmp / f"{stem}_{mode}{'_qat' if qat_summary else ''}.tflite"
            staged.write_bytes(blob_bytes)
            print(f"  {mode}{' (QAT ranges)' if qat_summary else ''}: converted in {time.time() - t0:.0f} s, "
                  f"{len(blob_bytes) / 1e6:.2f} MB")
            if qat_summary:
                print(f"    {qat_summary['tensors_with_learned_range']} tensors took a learned range, "
                      f"{qat_summary['tensors_calibrated']} kept the calibrated one (slices, sigmoid outputs)")
            check = check_tflite(staged, mode, crops, reference, args.threads)
            check["images_from"] = check_desc
            final = out / staged.name
            shutil.move(staged, final)   # only checked files reach --out
            spec = PRECISIONS[mode]
            records.append(common.artifact_record(
                final, "tflite", mode, args.tile, False, check, io=spec.io,
                calibration=(None if qat_summary else mode_calib_desc) if spec.integer else None,
                quantization=(QAT if qat_summary else PTQ) if spec.integer else None,
                **({"qat": qat_about | {"ranges": qat_summary}} if qat_summary else {}),
                prelu=args.prelu if spec.integer else "native",
                converter="onnx2tf (TensorFlow SavedModel) + tf.lite.TFLiteConverter",
                tools=common.tool_versions("torch", "onnx", "onnx2tf", "tensorflow", "ai-edge-litert")))
            # Described as soon as it lands: a later mode's failure leaves a consistent folder.
            common.write_manifest(out, args, blob, weights, records)
        if args.keep_saved_model:
            shutil.copytree(saved_model_for("fp32"), out / f"{stem}_saved_model", dirs_exist_ok=True)
    for r in records:
        print(f"wrote {out / r.file}")


if __name__ == "__main__":
    common.run_cli(main)
