"""What converters, the runtime and eval agree on, defined once: the tile spec and the
window rule, the precisions (with their quantization modes and check tolerances), the
backend registry and the manifest.

Standard library only (no numpy, no torch), so that any part of the kit, and the device
path in particular, can read it. It lives in edge_runtime because that is the part every
other part already depends on; from the rest of the kit it uses only core/atomic.py and the
variant registry, core/variants.py (plain Python too).

Tiles are LR (height, width) tuples everywhere in code; "HxW" strings are their text form
on command lines, in file names and in CoreML metadata; manifests store [h, w] lists.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from ..core import jsontext

DEFAULT_TILE = (192, 336)   # LR (h, w): a 1280x720 frame is 4x4 windows with 8-px margins
DEFAULT_MARGIN = 8          # LR context pixels kept around each window's core, then cropped away
MIN_ARTIFACT_TILE = 8       # the smallest fixed input shape a converter will build
WHOLE_FRAME = 0             # what --tile 0 (or "full") parses to: each frame runs in one piece
# How a window smaller than a fixed-shape model's input is filled up to it: the frame mirrored
# (numpy's "symmetric"). The network learned its borders with zeros beyond them, which no input
# padding reproduces; of the five numpy paddings below, mirroring costs least (held-out training
# images, 192x336 window: docs/runtime.md, reports/padding_32s_x*).
PAD_MODES = ("symmetric", "reflect", "edge", "wrap", "constant")
PAD_MODE = "symmetric"


def check_pad_mode(mode: str) -> str:
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {PAD_MODES}, not {mode!r}")
    return mode


Tile = tuple[int, int]
T = TypeVar("T")


def format_tile(tile: Tile) -> str:
    return f"{tile[0]}x{tile[1]}"


def parse_tile(text: str, minimum: int = 1) -> Tile:
    """"HxW" (or "N" for NxN) -> (h, w); ValueError naming the problem otherwise."""
    t = text.strip().lower()
    try:
        h, w = (int(v) for v in t.split("x")) if "x" in t else (int(t),) * 2
    except ValueError:
        raise ValueError(f"tile must look like HxW (e.g. {format_tile(DEFAULT_TILE)}) or a single size, "
                         f"not {text!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"tile {text} is too small; use at least {minimum}x{minimum} LR pixels"
                         if minimum > 1 else f"tile sizes must be positive, not {text!r}")
    return h, w


def parse_artifact_tile(text: str) -> Tile:
    """A converter's fixed input shape: a tile of at least MIN_ARTIFACT_TILE pixels a side."""
    return parse_tile(text, MIN_ARTIFACT_TILE)


def parse_tiles(text: str, parse: Callable[[str], Tile] = parse_tile) -> list[Tile]:
    """Comma-separated tiles, e.g. "48,96,192x336"; "" gives an empty list."""
    return [parse(t) for t in text.split(",") if t.strip()]


def parse_window(text: str) -> Tile | int:
    """A runtime window: a tile, or WHOLE_FRAME for "0" / "full"."""
    if text.strip().lower() in ("0", "full"):
        return WHOLE_FRAME
    try:
        return parse_tile(text)
    except ValueError as exc:
        raise ValueError(f"{exc}, or 0 for the whole frame") from None


def window_tile(value: Tile | int | None) -> Tile | None:
    """The Tiler's view of a parsed window: None (whole frame) for WHOLE_FRAME or nothing given."""
    return None if value in (None, WHOLE_FRAME) else tuple(value)


MAX_THREADS = 256   # more than any edge CPU has; far more makes interpreters spend minutes creating threads


def _whole_number(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, not {text!r}") from None


def parse_threads(text: str) -> int:
    """--threads: 0 (every core) to MAX_THREADS; ValueError naming the problem otherwise."""
    n = _whole_number(text, "threads")
    if not 0 <= n <= MAX_THREADS:
        raise ValueError(f"threads must be 0 (every core) to {MAX_THREADS}, not {n}")
    return n


def parse_margin(text: str) -> int:
    """--margin: context pixels around each window, 0 or more; ValueError naming the problem otherwise."""
    n = _whole_number(text, "the context margin")
    if n < 0:
        raise ValueError(f"the context margin must be 0 or more pixels, not {n}")
    return n


def parse_count(text: str) -> int:
    """A count of at least 1 (timed runs, frames, ...); ValueError naming the problem otherwise."""
    n = _whole_number(text, "a count")
    if n < 1:
        raise ValueError(f"must be 1 or more, not {n}")
    return n


def argtype(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse` for argparse's type=: its ValueError becomes argparse's one-line usage error."""
    def wrapped(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    wrapped.__name__ = parse.__name__
    return wrapped


@dataclass(frozen=True)
class Window:
    """How frames are cut for one model: the LR window (None: each frame whole) and whether a window
    smaller than it (a frame smaller than the tile) is padded up to it."""
    tile: Tile | None
    pad: bool


def choose_window(model_tile: Tile | None, resizable: bool, requested: Tile | int | None = None,
                  flexible_default: Tile | int = DEFAULT_TILE) -> Window:
    """The one rule for which window runs and whether it is padded.

    model_tile: the model's fixed input (h, w), or None for a shape-flexible model (dynamic ONNX, torch,
    or a resizable model told to take any window). requested: a window, WHOLE_FRAME, or None for the
    default. A fixed-shape model runs its own tile; a resizable one (TFLite) runs a smaller frame at the
    frame's own size, the others pad it. A shape-flexible model runs the requested window (when none is,
    flexible_default: DEFAULT_TILE for the runtime, WHOLE_FRAME where the paper's protocol is wanted) and
    never pads: a smaller frame runs whole.
    """
    if model_tile is not None:
        return Window(tuple(model_tile), pad=not resizable)
    return Window(window_tile(flexible_default if requested is None else requested), pad=False)


@dataclass(frozen=True)
class Tolerance:
    """What a converter's check demands of an artifact against the FP32 PyTorch model on the same crops:
    worst-crop PSNR (dB, RGB in [0, 1]) at least min_psnr and max abs error at most max_abs."""
    min_psnr: float
    max_abs: float

    def as_dict(self) -> dict:
        return {"min_psnr": self.min_psnr, "max_abs": self.max_abs}


TOLERANCES = {
    "fp32": Tolerance(60.0, 2e-3),
    "fp16": Tolerance(42.0, 0.05),
    "int16x8": Tolerance(38.0, 0.1),
    "int8": Tolerance(28.0, 0.5),
}

# How an integer model got its activation ranges: "ptq" calibrates on sample crops after training,
# "qat" takes the ranges a quantization-aware checkpoint learned (core/train.py --qat).
PTQ, QAT = "ptq", "qat"


def stagger_tag(copies: int, upsampler: bool = False, concatenations: bool = False) -> str:
    """How a staggered int8 QAT file is named and labelled: "" without copies, "staggerK" with K
    copies of the direct path, "u" added with the upsampler's output carried K times too, "c"
    with each DRAG's concatenation."""
    if copies <= 1:
        return ""
    return f"stagger{copies}" + ("u" if upsampler else "") + ("c" if concatenations else "")


@dataclass(frozen=True)
class Precision:
    """One precision as the converters build it, the manifest names it and the check judges it."""
    name: str                 # in file names and in the manifest's "precision"
    formats: tuple[str, ...]  # the artifact formats built in it
    integer: bool             # integer activations, so ranges come from calibration or QAT
    activations: str          # "float", "int8" or "int16"
    io: str                   # dtype of the model's input and output tensors
    weights: str              # dtype the weights are stored in
    prelu: str                # "native" PReLU op, or "decomposed" into ops with integer kernels (export.py)
    calibration: str          # "none", "drop-outliers" (int8's 256 levels) or "every-crop" (int16 keeps all)
    quantization: tuple[str, ...]   # where integer ranges may come from (PTQ, QAT); () for float models
    check: str                # key into TOLERANCES

    @property
    def tolerance(self) -> Tolerance:
        return TOLERANCES[self.check]


def _float(name, formats, weights, check):
    return Precision(name, formats, False, "float", "float32", weights, "native", "none", (), check)


def _integer(name, activations, io, calibration, quantization, check):
    return Precision(name, ("tflite",), True, activations, io, "int8", "decomposed", calibration, quantization, check)


PRECISIONS = {p.name: p for p in (
    _float("fp32", ("onnx", "tflite", "coreml"), "float32", "fp32"),
    _float("fp16", ("tflite", "coreml"), "float16", "fp16"),
    _float("fp32_w8", ("coreml",), "int8", "fp32"),   # CoreML compute precision + int8-compressed weights
    _float("fp16_w8", ("coreml",), "int8", "fp16"),
    _integer("int8", "int8", "float32", "drop-outliers", (PTQ, QAT), "int8"),
    _integer("int8_io", "int8", "int8", "drop-outliers", (PTQ, QAT), "int8"),
    _integer("int16x8", "int16", "float32", "every-crop", (PTQ,), "int16x8"),
)}
TFLITE_MODES = tuple(name for name, p in PRECISIONS.items() if "tflite" in p.formats)
# the formats the kit's converters build; a backend registered from outside (docs/extending.md) names none
_BUILT_FORMATS = {f for p in PRECISIONS.values() for f in p.formats}


def precision(name: str) -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(f"unknown precision {name!r}; known: {', '.join(PRECISIONS)}") from None


# --- Backends: one entry per runtime, keyed by format, found by file extension --------------------------


@dataclass(frozen=True)
class BackendSpec:
    """A runtime the kit can run models with, and what it can do. The class is imported only when a
    model is opened, so that reading this table never imports torch, TensorFlow or an interpreter."""
    kind: str                      # the format name: run.py's flag, the manifest's "format"
    extensions: tuple[str, ...]    # file suffixes of its models ("" for none: torch takes a checkpoint)
    module: str                    # ".name" for edge_runtime/backends/name.py, else a module's full path
    cls: str                       # the backend class
    resizable: bool = False        # a fixed-shape model file that still runs windows of other sizes
    coefficients: bool = False     # takes the DRA coefficients from outside (Upscaler coeffs="frame")
    artifact: bool = True          # a format converters write and manifests list (torch is the reference)
    install: str = ""              # what to install when the runtime is missing
    help: str = ""                 # one line for command-line help: what file it takes
    systems: tuple[str, ...] = ()  # platform.system() names it runs on; () for any

    def runs_here(self) -> bool:
        return not self.systems or platform.system() in self.systems


BACKENDS: dict[str, BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Add a runtime (see docs/extending.md); a kind or extension that is already taken is an error."""
    if spec.kind in BACKENDS:
        raise ValueError(f"backend {spec.kind!r} is already registered")
    taken = {e for b in BACKENDS.values() for e in b.extensions if e}
    if clash := taken.intersection(spec.extensions):
        raise ValueError(f"backend {spec.kind!r}: extension {sorted(clash)[0]} already belongs to another backend")
    BACKENDS[spec.kind] = spec
    return spec


for _spec in (
    BackendSpec("tflite", (".tflite",), ".tflite", "TFLiteBackend", resizable=True,
                install="pip install ai-edge-litert (or tflite-runtime, or tensorflow)",
                help="a .tflite model from converters/to_tflite.py"),
    BackendSpec("onnx", (".onnx",), ".onnx", "OnnxBackend", install="pip install onnxruntime",
                help="an .onnx model from converters/to_onnx.py"),
    BackendSpec("coreml", (".mlpackage",), ".coreml", "CoreMLBackend", install="pip install coremltools (macOS)",
                help="an .mlpackage from converters/to_coreml.py (macOS only)", systems=("Darwin",)),
    BackendSpec("torch", (), ".torch", "TorchBackend", coefficients=True, artifact=False,
                install="pip install -e '.[torch]'", help="the PyTorch reference (needs torch; see --weights)"),
):
    register_backend(_spec)


def backend_spec(kind: str) -> BackendSpec:
    try:
        return BACKENDS[kind]
    except KeyError:
        raise ValueError(f"unknown backend {kind!r}; known: {', '.join(BACKENDS)}") from None


def artifact_kinds() -> tuple[str, ...]:
    """The formats converters write (the registry's artifact backends), in registration order."""
    return tuple(k for k, b in BACKENDS.items() if b.artifact)


def artifact_extensions() -> str:
    """The artifact file suffixes, for messages: ".tflite, .onnx, .mlpackage"."""
    return ", ".join(e for k in artifact_kinds() for e in BACKENDS[k].extensions)


def kind_of_path(path) -> str | None:
    """The backend kind whose extension `path` has, or None."""
    suffix = Path(path).suffix.lower()
    return next((b.kind for b in BACKENDS.values() if suffix and suffix in b.extensions), None)


def abilities(backend) -> BackendSpec | None:
    """The registry entry of an open backend (by its `kind`), or None for an object the registry does not
    know, which then has no declared abilities."""
    return BACKENDS.get(getattr(backend, "kind", None))


# --- The manifest: <out>/manifest.json, written by the converters beside their artifacts -------------
#
#     {"schema_version": 1,
#      "model": {"variant": "32s", "scale": 4, "checkpoint": ..., ...},
#      "artifacts": [{"file": "drsan_32s_x4_192x336_int8.tflite", "format": "tflite", "precision": "int8",
#                     "tile": [192, 336], "dynamic_shape": false, "sha256": ..., "size_bytes": ...,
#                     "check": {...}, ...any further fields, e.g. io, calibration, quantization, qat}]}
#
# The runtime and the drift harness read it before guessing anything from shapes; the runtime also
# refuses a file whose size or SHA-256 differs from its entry. Manifests without "schema_version"
# (written before it existed) are version 1.

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


class ManifestError(ValueError):
    """A manifest.json that cannot be read or does not follow the schema; the message says where."""


@dataclass
class ModelInfo:
    variant: str
    scale: int
    checkpoint: str = ""
    extra: dict = field(default_factory=dict)   # checkpoint_sha256, checkpoint_meta, input, output, ...

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        rest = {k: v for k, v in d.items() if k not in ("variant", "scale", "checkpoint")}
        return cls(d["variant"], d["scale"], d.get("checkpoint", ""), rest)

    def to_dict(self) -> dict:
        return {"variant": self.variant, "scale": self.scale, "checkpoint": self.checkpoint, **self.extra}


_ENTRY_FIELDS = ("file", "format", "precision", "tile", "dynamic_shape", "sha256", "size_bytes", "check")


@dataclass
class ArtifactEntry:
    file: str                     # a name in the manifest's folder
    format: str                   # "onnx", "tflite", "coreml"
    precision: str                # a key of PRECISIONS
    tile: Tile | None = None      # fixed LR input (h, w); None for a dynamic shape
    dynamic_shape: bool = False
    sha256: str | None = None
    size_bytes: int | None = None
    check: dict = field(default_factory=dict)   # the converter's check against FP32 PyTorch
    extra: dict = field(default_factory=dict)   # format-specific fields, kept as written

    @property
    def quantization(self) -> str | None:
        """PTQ or QAT for integer artifacts (None for float ones, and for integer ones written before it was
        recorded, which were all PTQ)."""
        return self.extra.get("quantization")

    @property
    def stagger(self) -> int:
        """How many staggered copies carry the direct path of an int8 QAT file (core/stagger.py); 1 for
        every other file. Informational: the file runs the same either way."""
        about = self.extra.get("stagger")
        copies = about.get("copies") if isinstance(about, dict) else None
        return copies if _is(copies, int) and copies > 1 else 1

    @property
    def stagger_tag(self) -> str:
        """"" for a file without staggered copies, "staggerK" with K copies of the direct path,
        "staggerKu" when the upsampler's output is carried K times too, "c" added when each DRAG's
        concatenation is (the names to_tflite.py gives)."""
        about = self.extra.get("stagger")
        about = about if isinstance(about, dict) else {}
        return stagger_tag(self.stagger, about.get("upsampler") is True, bool(about.get("concatenations")))

    @classmethod
    def from_dict(cls, d: dict) -> "ArtifactEntry":
        tile = tuple(d["tile"]) if d.get("tile") else None
        return cls(d["file"], d["format"], d["precision"], tile, bool(d.get("dynamic_shape", tile is None)),
                   d.get("sha256"), d.get("size_bytes"), dict(d.get("check") or {}),
                   {k: v for k, v in d.items() if k not in _ENTRY_FIELDS})

    def to_dict(self) -> dict:
        d = {"file": self.file, "format": self.format, "precision": self.precision,
             "tile": list(self.tile) if self.tile else None, "dynamic_shape": self.dynamic_shape,
             "sha256": self.sha256, "check": self.check, "size_bytes": self.size_bytes, **self.extra}
        # entries written before these were recorded stay without them
        return {k: v for k, v in d.items() if v is not None or k not in ("sha256", "size_bytes")}


@dataclass
class Manifest:
    model: ModelInfo
    artifacts: list[ArtifactEntry] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def entry(self, file: str) -> ArtifactEntry | None:
        return next((a for a in self.artifacts if a.file == file), None)

    @classmethod
    def from_dict(cls, d, where: str = MANIFEST_NAME) -> "Manifest":
        validate_manifest(d, where)
        return cls(ModelInfo.from_dict(d["model"]), [ArtifactEntry.from_dict(a) for a in d.get("artifacts", [])],
                   d.get("schema_version", 1))

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "model": self.model.to_dict(),
                "artifacts": [a.to_dict() for a in self.artifacts]}


def validate_manifest(d, where: str = MANIFEST_NAME):
    """Raise ManifestError naming the first thing in `d` (parsed JSON) that breaks the schema or names
    something this kit does not know (a variant, a precision, a format): a label the runtime would
    otherwise print, or a model it would run, as if it were true."""
    def bad(what):
        raise ManifestError(f"{where}: {what}")

    if not isinstance(d, dict):
        bad("not a JSON object")
    version = d.get("schema_version", 1)
    if not _is(version, int) or version < 1:
        bad(f"schema_version {version!r} is not a positive integer")
    if version > SCHEMA_VERSION:
        bad(f"schema version {version} is newer than this kit reads ({SCHEMA_VERSION}); update the kit")
    _check_model(d.get("model"), bad)
    if not isinstance(d.get("artifacts", []), list):
        bad('"artifacts" is not a list')
    seen = set()
    for i, a in enumerate(d.get("artifacts", [])):
        _check_entry(i, a, bad)
        if a["file"] in seen:
            bad(f"{a['file']} is listed twice")
        seen.add(a["file"])


def _check_model(model, bad):
    from ..core.variants import SCALES, VARIANTS

    if not isinstance(model, dict) or not isinstance(model.get("variant"), str) \
            or not _positive_int(model.get("scale")):
        bad('"model" needs a variant (text) and a scale (positive integer)')
    if model["variant"] not in VARIANTS:
        bad(f"unknown variant {model['variant']!r} (known: {', '.join(VARIANTS)})")
    if model["scale"] not in SCALES:
        bad(f"scale {model['scale']} is not one of {', '.join(map(str, SCALES))}")
    if not isinstance(model.get("checkpoint", ""), str):
        bad(f"checkpoint {model['checkpoint']!r} is not a path (text)")


def _check_entry(i: int, a, bad):
    if not isinstance(a, dict) or not all(isinstance(a.get(k), str) for k in ("file", "format", "precision")):
        bad(f"artifact {i} needs file, format and precision (text)")
    name = a["file"]
    if name != Path(name).name or name in ("", ".", ".."):
        bad(f"artifact {i}: file {name!r} is not a plain name in the manifest's folder")
    if a["format"] not in artifact_kinds():
        bad(f"{name}: unknown format {a['format']!r} (known: {', '.join(artifact_kinds())})")
    if kind_of_path(name) != a["format"]:
        bad(f"{name}: format {a['format']} does not match the file name "
            f"(expected {', '.join(BACKENDS[a['format']].extensions)})")
    p = PRECISIONS.get(a["precision"])
    if p is None:
        bad(f"{name}: unknown precision {a['precision']!r} (known: {', '.join(PRECISIONS)})")
    if a["format"] in _BUILT_FORMATS and a["format"] not in p.formats:
        bad(f"{name}: precision {p.name} is not built as {a['format']}")
    tile = a.get("tile")
    if tile is not None and not (isinstance(tile, list) and len(tile) == 2 and all(map(_positive_int, tile))):
        bad(f"{name}: tile {tile!r} is not [height, width]")
    for key, kind, what in _ENTRY_TYPES:
        if a.get(key) is not None and not _is(a[key], kind):
            bad(f"{name}: {key} {a[key]!r} is not {what}")
    how = a.get("quantization")
    if how is not None and how not in p.quantization:
        bad(f"{name}: quantization {how!r} is not one of {p.name}'s ({', '.join(p.quantization) or 'none'})")
    stagger = a.get("stagger")
    if stagger is not None:
        if not isinstance(stagger, dict) or how != QAT:
            bad(f"{name}: stagger is not an object on a QAT file")
        if not _positive_int(stagger.get("copies")):
            bad(f"{name}: stagger copies {stagger.get('copies')!r} is not a whole number of copies")
        if stagger.get("upsampler", False) not in (True, False):
            bad(f"{name}: stagger upsampler {stagger.get('upsampler')!r} is not true or false")
    for key in _CHECK_NUMBERS:
        value = (a.get("check") or {}).get(key)
        if value is not None and not (_is(value, float) or _is(value, int)):
            bad(f"{name}: check {key} {value!r} is not a number")


# optional entry fields: (key, JSON type, what the message calls it); null always passes
_ENTRY_TYPES = (("sha256", str, "a hex digest (text)"), ("size_bytes", int, "a byte count (integer)"),
                ("check", dict, "an object"), ("dynamic_shape", bool, "true or false"),
                ("qat", dict, "an object"))
# the converter's check figures that reports format as numbers
_CHECK_NUMBERS = ("psnr_vs_reference_db", "mean_psnr_vs_reference_db", "max_abs_error")


def _is(value, kind: type) -> bool:
    """isinstance for parsed JSON, where true and false are not integers."""
    return isinstance(value, bool) if kind is bool else isinstance(value, kind) and not isinstance(value, bool)


def _positive_int(value) -> bool:
    return _is(value, int) and value > 0


def read_manifest(folder) -> Manifest | None:
    """folder/manifest.json as a Manifest; None when there is none; ManifestError when it is unusable."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        if path.exists():   # a folder of that name: no manifest can be read or written there
            raise ManifestError(f"{path}: not a file")
        return None
    try:
        data = jsontext.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
    return Manifest.from_dict(data, str(path))


def write_manifest(folder, manifest: Manifest) -> Path:
    """Write folder/manifest.json atomically: a reader sees the old manifest or the new one, never half."""
    from ..core.atomic import atomic_path

    path = Path(folder) / MANIFEST_NAME
    data = manifest.to_dict()
    validate_manifest(data, str(path))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
    return path


def check_manifest_target(folder, model: ModelInfo) -> Manifest | None:
    """The folder's manifest, if artifacts of `model` may be added to it; ManifestError otherwise.

    A folder holds the artifacts of one checkpoint: entries of another model (or of other weights of
    the same one) would be listed under the new model, or dropped while their files stay unchecked,
    and a damaged manifest would be replaced along with the entries it still protects. Converters
    call this before converting, so that a refused folder gets no half-listed file."""
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    old = manifest.model
    sha, old_sha = model.extra.get("checkpoint_sha256"), old.extra.get("checkpoint_sha256")
    if (old.variant, old.scale) != (model.variant, model.scale):
        what = f"DRSAN-{old.variant} x{old.scale}"
    elif sha and old_sha and sha != old_sha:
        what = f"other weights ({old.checkpoint or 'a checkpoint'} with SHA-256 {old_sha[:12]}...)"
    else:
        return manifest
    raise ManifestError(f"{Path(folder) / MANIFEST_NAME} lists artifacts of {what}; write DRSAN-{model.variant} "
                        f"x{model.scale} from {model.checkpoint or 'these weights'} to another output folder")


def update_manifest(folder, model: ModelInfo, entries: list[ArtifactEntry]) -> Path:
    """Merge entries (by file name) into folder/manifest.json (see check_manifest_target)."""
    manifest = check_manifest_target(folder, model) or Manifest(model)
    new = {e.file for e in entries}
    kept = [a for a in manifest.artifacts if a.file not in new]
    merged = Manifest(model, sorted(kept + list(entries), key=lambda a: a.file))
    return write_manifest(folder, merged)


def artifact_entry(artifact) -> tuple[ModelInfo, ArtifactEntry] | None:
    """(model, artifact entry) for an artifact file, from the manifest beside it, or None."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact.parent)
    entry = manifest.entry(artifact.name) if manifest else None
    return (manifest.model, entry) if entry else None


def sha256(path) -> str:
    """SHA-256 of a file, or of an .mlpackage folder's files in a stable order."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def artifact_size(path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
