"""Write the ranges of quantization-aware fine-tuning into a full-integer TFLite model.

The TFLite converter quantizes in two steps: calibration records every float tensor's
min/max over a representative dataset, then its quantizer turns the recorded ranges
into int8 scales and zero points. Here the two steps run apart, and in between each
recorded range is replaced by the range that fine-tuning tracked for the same tensor
(core/qat.py). The ops, their order and the quantizer are the converter's own, so the
artifact has the same graph as a post-training one; only its ranges (and the
fine-tuned weights it was exported from) differ.

Which TFLite tensor is which simulated tensor? Both graphs compute the same float
values on the same crops, so a simulated tensor's float min/max over those crops
identifies its TFLite counterpart to float rounding, whatever names onnx2tf gives.
Those min/max are read from the float graph itself (an interpreter that keeps every
tensor), not from the calibration record: the calibrator reads an op's inputs after
the op has run, and ops that run in place (ADD over a depthwise conv's output, for
one) leave it a union of two tensors' ranges.
Views (slices, reshapes, depth-to-space) match their input and get its range, as
the int8 graph requires anyway; tensors that match nothing keep their calibrated range
and are counted in the report.
"""
from __future__ import annotations

import numpy as np

# relative to a tensor's float span: TFLite and PyTorch agree to ~1e-6 on the same crops
MATCH_TOLERANCE = 1e-3


def calibrate_only(converter) -> bytes:
    """The float model with every tensor's calibrated min/max, before quantization."""
    converter._experimental_calibrate_only = True   # the step TensorFlow's QuantizationDebugger also uses
    return converter.convert()


def quantize_calibrated(model: bytes, io_int8: bool) -> bytes:
    """The converter's own quantizer, with the arguments its int8 path passes."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    io = tf.int8 if io_int8 else tf.float32
    return mlir_quantize(model, disable_per_channel=False, input_data_type=io, output_data_type=io)


def recorded_ranges(model: bytes) -> dict[int, tuple[float, float]]:
    """Tensor index -> calibrated (min, max), for the main graph's tensors that have one."""
    from tensorflow.lite.tools import flatbuffer_utils

    graph = flatbuffer_utils.read_model_from_bytearray(model).subgraphs[0]
    out = {}
    for i, t in enumerate(graph.tensors):
        q = t.quantization
        if q is not None and q.min is not None and len(q.min) == 1:
            out[i] = (float(q.min[0]), float(q.max[0]))
    return out


def float_ranges(model: bytes, crops: np.ndarray, tensors) -> dict[int, tuple[float, float]]:
    """Exact float min/max of the given tensors of a float TFLite model over crops (N, H, W, 3)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    index = interp.get_input_details()[0]["index"]
    out: dict[int, tuple[float, float]] = {}
    for x in crops:
        interp.set_tensor(index, x[None].astype(np.float32))
        interp.invoke()
        for i in tensors:
            v = interp.get_tensor(i)
            lo, hi = float(v.min()), float(v.max())
            out[i] = (lo, hi) if i not in out else (min(lo, out[i][0]), max(hi, out[i][1]))
    return out


def output_tensors(model: bytes) -> list[int]:
    """The main graph's output tensor indices."""
    from tensorflow.lite.tools import flatbuffer_utils

    return [int(i) for i in flatbuffer_utils.read_model_from_bytearray(model).subgraphs[0].outputs]


def pair_tensors(tflite: dict[int, tuple[float, float]], torch: dict[str, tuple[float, float]]) -> dict[int, str]:
    """TFLite tensor index -> simulated tensor name, where their float ranges agree."""
    names = list(torch)
    sim = np.array([torch[n] for n in names], dtype=np.float64)
    pairs = {}
    for idx, (lo, hi) in tflite.items():
        span = max(hi - lo, 1e-6)
        err = np.maximum(np.abs(sim[:, 0] - lo), np.abs(sim[:, 1] - hi)) / span
        best = int(np.argmin(err))
        if err[best] <= MATCH_TOLERANCE:
            pairs[idx] = names[best]
    return pairs


def with_ranges(model: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated model with these tensors' recorded ranges replaced."""
    from tensorflow.lite.tools import flatbuffer_utils

    obj = flatbuffer_utils.read_model_from_bytearray(model)
    tensors = obj.subgraphs[0].tensors
    for idx, (lo, hi) in ranges.items():
        tensors[idx].quantization.min = np.array([lo], np.float32)
        tensors[idx].quantization.max = np.array([hi], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def qat_quantize(converter, crops: np.ndarray, sim_ranges, learned: dict[str, list[float]],
                 io_int8: bool, output_range: tuple[float, float]) -> tuple[bytes, dict]:
    """Quantize with the learned ranges.

    converter: a TFLiteConverter set up for int8 (its representative dataset only gives
    tensors without a learned range, such as slices, a fallback range);
    crops: NHWC float crops; sim_ranges: the simulated tensors' float (min, max) on them;
    learned: the ranges fine-tuning tracked, by simulated tensor name;
    output_range: the output image's range, the one the simulation rounds it on. The
    output (min(., 1)) is no simulated tensor of its own, and on crops with black and
    white pixels its float range, [0, 1], would pair it with the input image's.
    Returns the int8 model and a summary of how many tensors took a learned range.
    """
    calibrated = calibrate_only(converter)
    recorded = recorded_ranges(calibrated)
    fixed = {i: tuple(output_range) for i in output_tensors(calibrated) if i in recorded}
    pairs = {i: n for i, n in pair_tensors(float_ranges(calibrated, crops, list(recorded)), sim_ranges).items()
             if i not in fixed}
    model = quantize_calibrated(with_ranges(calibrated, {i: tuple(learned[n]) for i, n in pairs.items()} | fixed),
                                io_int8)
    summary = {"tensors_with_learned_range": len(pairs), "tensors_with_image_range": len(fixed),
               "tensors_calibrated": len(recorded) - len(pairs) - len(fixed),
               "simulated_tensors_used": len(set(pairs.values())), "simulated_tensors": len(sim_ranges)}
    return model, summary
