"""The kit's checkpoint format: one torch file with the weights and what they are.

    {"format": "drsan-kit/1", "variant": "32s", "scale": 4, "upsample_order": "crd",
     "state_dict": {...}, "meta": {"training": {...}, "eval": {...}},
     "train_state": {...}   # only in training checkpoints: optimizer, RNG, iteration}

Converters copy `meta` into every artifact's manifest, so an artifact always says
what it is.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .atomic import atomic_path
from .model import DRSAN, build_model
from .variants import check_scale, get_variant

FORMAT = "drsan-kit/1"
REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO_ROOT / "weights"


class CheckpointError(ValueError):
    pass


def default_weights(variant: str, scale: int) -> Path:
    """The shipped checkpoint for a variant and scale (weights/drsan_<variant>_x<scale>.pt)."""
    return WEIGHTS_DIR / f"drsan_{variant}_x{scale}.pt"


def save_checkpoint(path, model: DRSAN, meta: dict | None = None, train_state: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "variant": model.variant.name,
        "scale": model.scale,
        "upsample_order": model.upsample_order,
        "skip_head": model.skip_head is not None,
        # contiguous: a model trained channels_last still saves the plain layout every loader expects
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    if train_state is not None:
        blob["train_state"] = train_state
    with atomic_path(path) as tmp:   # never a half-written checkpoint, even when killed mid-save
        torch.save(blob, tmp)
    return path


def read_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many kinds for a corrupt file
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a drsan-kit checkpoint (no '{FORMAT}' format tag)")
    for key, kind in _FIELDS:
        if not isinstance(blob.get(key), kind) or isinstance(blob.get(key), bool):
            raise CheckpointError(f"{path}: damaged checkpoint: {key!r} is missing or not {kind.__name__}")
    return blob


_FIELDS = (("variant", str), ("scale", int), ("upsample_order", str), ("state_dict", dict))


def load_checkpoint(path, variant: str | None = None, scale: int | None = None, **model_kwargs):
    """Build the model a checkpoint describes and load it strictly.

    Asking for a variant or scale other than the checkpoint's is an error that
    names both, never a partial load. Returns (model in eval mode, blob).
    """
    blob = read_checkpoint(path)
    if variant is not None and variant != blob["variant"]:
        raise CheckpointError(f"{path}: checkpoint is DRSAN-{blob['variant']}, but variant {variant} was asked for")
    if scale is not None and int(scale) != blob["scale"]:
        raise CheckpointError(f"{path}: checkpoint is x{blob['scale']}, but scale x{scale} was asked for")
    try:
        get_variant(blob["variant"])
        check_scale(blob["scale"])
        model = build_model(blob["variant"], blob["scale"], upsample_order=blob["upsample_order"],
                            skip_head=bool(blob.get("skip_head", False)), **model_kwargs)
        model.load_state_dict(blob["state_dict"], strict=True)
    except (ValueError, KeyError, RuntimeError) as exc:   # unknown variant, wrong or missing tensors, ...
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [exc.__class__.__name__]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]   # torch: "Error(s) ...:"
        raise CheckpointError(f"{path}: checkpoint does not fit DRSAN-{blob['variant']} x{blob['scale']} "
                              f"({reason[:200]})") from None
    return model.eval(), blob


def resolve_weights(weights, variant: str, scale: int) -> Path:
    """--weights if given, else the shipped checkpoint; a clear error when neither exists."""
    path = Path(weights) if weights else default_weights(variant, scale)
    if not path.is_file():
        hint = "" if weights else " (no shipped checkpoint for this variant and scale; pass --weights)"
        raise CheckpointError(f"{path}: checkpoint not found{hint}")
    return path
