"""The TFLite build steps, as a library: PyTorch model -> ONNX -> (onnx2tf) SavedModel -> TFLite.

converters/to_tflite.py is the command line over these; eval/sensitivity.py builds its
per-layer int8 variants with the same functions, so both quantize exactly alike.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import common, qat_ranges
from .common import quiet
from .export import deploy_model, export_onnx
from ..edge_runtime.contract import PRECISIONS

__all__ = ["quiet", "onnx_to_saved_model", "build_saved_model", "make_converter", "convert_mode", "load_qat",
           "convert_qat"]


def onnx_to_saved_model(onnx_path: Path, workdir: Path, sample: np.ndarray, verbose: bool) -> Path:
    """onnx2tf's TensorFlow path; its self-check data is our own sample crops, never a download."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with quiet(not verbose):   # importing TensorFlow logs CUDA probing and factory registration
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
    from ..core.checkpoint import CheckpointError, load_checkpoint
    from ..edge_runtime.contract import sha256

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
             **({"init_from_sha256": qat["init_from_sha256"]} if qat.get("init_from_sha256") else {}),
             "validation": blob["meta"].get("validation", {}).get("set"),
             **({"trained_stagger": qat["stagger"]} if isinstance(qat.get("stagger"), dict) else {})}
    return model, qat["ranges"], about


def convert_qat(saved_model: Path, model, ranges: dict, mode: str, crops: np.ndarray, verbose: bool):
    """int8 TFLite from the fine-tuned model's SavedModel with the learned ranges written in."""
    import torch

    from ..core import qat

    sim = qat.prepare(model)
    try:
        qat.load_ranges(sim, ranges)
    except ValueError as exc:
        raise common.ConversionError(str(exc)) from None
    recorded = qat.recorded_ranges(sim, torch.from_numpy(crops.transpose(0, 3, 1, 2).copy()))
    # A requantized concatenation input has its source's float values: pair by the source's own
    # range (the quantizer gives the requantizing op the concatenation's grid in any case).
    float_sim = {name: r for name, r in recorded.items() if name in qat.act_quants(sim)}
    learned = qat.ranges(sim)   # the checkpoint's, with the image output's fixed range
    with quiet(not verbose):
        return qat_ranges.qat_quantize(make_converter(saved_model, "int8", crops), crops, float_sim, learned,
                                       io_int8=mode == "int8_io", output_range=qat.IMAGE_RANGE)
