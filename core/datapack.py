"""Pack a folder of training images into shards small enough to travel with a checkout, losslessly.

    python core/datapack.py pack   --data /path/to/train_images --out data/packs --max-mib 30 --holdout 16
    python core/datapack.py verify --packs data/packs
    python core/datapack.py unpack --packs data/packs --out /tmp/train

Every image is stored as the smaller of two lossless forms: its original file bytes, or
its decoded RGB pixels as lossless WebP (only where the original format can be written
back without loss: PNG, BMP, TIFF, WebP, PPM/PGM). `manifest.json` lists each image's
path relative to --data, its shard and the SHA-256 of the uint8 pixel array the kit's
loader decodes from it. `unpack` writes each image back under its original relative
path (so `core/holdout.py` picks the same held-out images from the unpacked folder),
decodes every written file with the kit's loader and stops on the first array whose
digest differs: what arrives is bit-identical to what training would read from --data,
or nothing is written.

Shards are balanced, each a fixed pseudo-random sample of the whole folder, so a job
that can carry only some of them still trains on a mix of every source. With --holdout N,
the N images that `train.py --val-split N` holds out go to a separate `holdout.tar`; a job
that carries it with any part shards validates on exactly those N images.
Packing the same folder twice with the same Pillow gives byte-identical shards.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:   # run by path, e.g. python core/datapack.py
    import importlib

    __package__ = "drsan_kit.core"   # so that the relative imports below resolve (PEP 366)
    importlib.import_module(__package__)

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, features

from . import jsontext
from .holdout import split_holdout
from .images import ImageError, list_images, load_image, to_uint8

FORMAT = "drsan-datapack/1"
MANIFEST = "manifest.json"
HOLDOUT_SHARD = "holdout.tar"
# formats Pillow writes back losslessly, so a WebP-stored image can be unpacked under its own name
_REWRITE = {".png": "PNG", ".bmp": "BMP", ".dib": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM", ".pnm": "PPM"}
_WEBP_MAX_SIDE = 16383
# lossless WebP effort: method 4 / quality 50 came within 0.5% of the slowest setting
# (method 6 / quality 100) at a fifth of its time on 6 training images
_WEBP = {"format": "WEBP", "lossless": True, "quality": 50, "method": 4}


class DatapackError(ValueError):
    """A pack that cannot be made, read or trusted; the message names the file."""


def pixel_digest(rgb: np.ndarray) -> str:
    """SHA-256 of an (H, W, 3) uint8 array's bytes in C order (the shape is stored beside it)."""
    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()).hexdigest()


def _decoded(path: Path) -> tuple[np.ndarray, bool]:
    """What training reads from a file: RGB uint8 and whether the file was single-channel."""
    try:
        img = load_image(path)
    except ImageError as exc:
        raise DatapackError(str(exc)) from None
    return to_uint8(img.rgb), img.gray


def _encode(root: Path, path: Path) -> tuple[dict, bytes]:
    """The manifest entry and stored bytes of one image: the smaller lossless form."""
    rgb, gray = _decoded(path)
    entry = {"path": path.relative_to(root).as_posix(), "height": rgb.shape[0], "width": rgb.shape[1],
             "gray": gray, "sha256": pixel_digest(rgb), "stored": "original"}
    payload = path.read_bytes()
    if path.suffix.lower() in _REWRITE and max(rgb.shape[:2]) <= _WEBP_MAX_SIDE:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, **_WEBP)
        if buf.tell() < len(payload):
            entry["stored"], payload = "webp", buf.getvalue()
    entry["bytes"] = len(payload)
    return entry, payload


def _encode_job(job):
    return _encode(*job)


def _member(entry: dict) -> str:
    return entry["path"] + (".webp" if entry["stored"] == "webp" else "")


# a tar adds a 512-byte header per member, pads data to 512 bytes and ends in at most 10,240 + 1,024
# bytes of zeros; a path over 100 bytes takes an extended header too
_TAR_END = 11264


def _tar_cost(entry: dict) -> int:
    long_name = len(_member(entry).encode()) > 100
    return 512 + 512 * math.ceil(entry["bytes"] / 512) + (1536 if long_name else 0)


def _balanced(entries: list[dict], max_bytes: int) -> list[list[int]]:
    """Split entries into the fewest shards under max_bytes, each a pseudo-random sample of all.

    Images are taken in the order of their path's SHA-256 and each goes to the lightest
    shard so far, so sizes come out nearly equal and every source folder is spread evenly.
    """
    room = max_bytes - _TAR_END
    big = [e for e in entries if _tar_cost(e) > room]
    if big:
        raise DatapackError(f"{big[0]['path']} alone needs {big[0]['bytes'] / 2**20:.3f} MiB, "
                            f"over --max-mib {max_bytes / 2**20:g} with the tar's own bytes")
    order = sorted(range(len(entries)), key=lambda i: hashlib.sha256(entries[i]["path"].encode()).hexdigest())
    count = max(1, math.ceil(sum(_tar_cost(e) for e in entries) / room))
    while True:
        shards, sizes = [[] for _ in range(count)], [0] * count
        for i in order:
            k = sizes.index(min(sizes))
            shards[k].append(i)
            sizes[k] += _tar_cost(entries[i])
        if max(sizes) <= room:
            return [sorted(s, key=lambda i: entries[i]["path"]) for s in shards]
        count += 1


def _write_tar(path: Path, members: list[tuple[str, bytes]]):
    """An uncompressed tar whose bytes depend on the members alone (no times, owners or modes)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fresh_dir(out: Path) -> Path:
    """A temporary folder beside `out`, renamed onto it once complete; `out` must be new or empty."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatapackError(f"{out} already exists and is not an empty folder; give a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)   # mkdtemp makes a private folder; give the user's usual permissions
    return tmp


def _finish(tmp: Path, out: Path):
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


def _pool(workers: int):
    return ProcessPoolExecutor(max_workers=workers) if workers > 1 else None


def _map(fn, jobs, workers: int) -> list:
    pool = _pool(min(workers, len(jobs)))
    if pool is None:
        return [fn(job) for job in jobs]
    with pool:
        return list(pool.map(fn, jobs, chunksize=4))


def pack(data, out, max_mib: float = 30.0, holdout: int = 0, workers: int = 1) -> dict:
    """Pack every image under `data` into shards of at most max_mib MiB in the new folder `out`."""
    root, out = Path(data), Path(out)
    if not root.is_dir():
        raise DatapackError(f"{root}: no such folder")
    if max_mib <= 0:
        raise DatapackError(f"--max-mib must be positive, got {max_mib:g}")
    files = list_images(root)
    if not files:
        raise DatapackError(f"no images (png, jpg, bmp, tif, webp) found under {root}")
    try:
        held = set(split_holdout(root, holdout)[1])
    except ValueError as exc:
        raise DatapackError(f"--holdout: {exc}") from None
    encoded = _map(_encode_job, [(root, p) for p in files], workers)
    groups = {HOLDOUT_SHARD: [i for i, p in enumerate(files) if p in held]} if held else {}
    rest = [i for i, p in enumerate(files) if p not in held]
    parts = _balanced([encoded[i][0] for i in rest], int(max_mib * 2**20)) if rest else []
    groups |= {f"part-{k:02d}.tar": [rest[i] for i in part] for k, part in enumerate(parts)}
    tmp = _fresh_dir(out)
    try:
        shards, images = [], []
        for name, members in groups.items():
            _write_tar(tmp / name, [(_member(encoded[i][0]), encoded[i][1]) for i in members])
            shards.append({"name": name, "images": len(members), "bytes": (tmp / name).stat().st_size,
                           "sha256": file_sha256(tmp / name)})
            images += [encoded[i][0] | {"shard": name} for i in members]
        manifest = {"format": FORMAT, "holdout": len(held), "max_mib": max_mib,
                    "encoder": f"Pillow {Image.__version__}, libwebp {features.version('webp')}",
                    "shards": shards, "images": sorted(images, key=lambda e: e["path"])}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _finish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(packs) -> dict:
    path = Path(packs) / MANIFEST
    try:
        manifest = jsontext.loads(path.read_text())
    except FileNotFoundError:
        raise DatapackError(f"{path}: no such file (not a folder made by `datapack.py pack`)") from None
    except (OSError, ValueError) as exc:
        raise DatapackError(f"{path}: cannot read ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatapackError(f"{path}: not a {FORMAT} manifest")
    return manifest


def _safe_relative(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DatapackError(f"manifest path {name!r} leaves the output folder")
    return rel


def _payloads(shard: Path, entries: list[dict]) -> dict[str, tuple[int, int]]:
    """Offset and size of each listed image's bytes in a shard; any other member is an error."""
    try:
        with tarfile.open(shard, "r:") as tar:
            found = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError) as exc:
        raise DatapackError(f"{shard}: cannot read ({exc})") from None
    wanted = {_member(e) for e in entries}
    if set(found) != wanted:
        odd = sorted(set(found) ^ wanted)[0]
        raise DatapackError(f"{shard}: members differ from the manifest (e.g. {odd})")
    return found


def _restore(job) -> str:
    """Write one image back under its relative path and check the decoded pixels; returns its path."""
    shard, offset, size, entry, out = job
    with open(shard, "rb") as fh:
        fh.seek(offset)
        payload = fh.read(size)
    target = Path(out) / _safe_relative(entry["path"])
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry["stored"] == "original":
        target.write_bytes(payload)
    else:
        with Image.open(io.BytesIO(payload)) as im:
            rgb = np.asarray(im.convert("RGB"))
        fmt = _REWRITE[target.suffix.lower()]
        # single-channel files go back single-channel, so the loader reports them gray as before
        pil = Image.fromarray(rgb[..., 0]) if entry["gray"] and fmt != "WEBP" else Image.fromarray(rgb)
        pil.save(target, format=fmt, **({"lossless": True, "quality": 0} if fmt == "WEBP" else
                                         {"compress_level": 1} if fmt == "PNG" else {}))
    rgb, _ = _decoded(target)
    if rgb.shape != (entry["height"], entry["width"], 3) or pixel_digest(rgb) != entry["sha256"]:
        raise DatapackError(f"{entry['path']}: the unpacked pixels differ from the packed ones "
                            f"(SHA-256 or size mismatch; a different image decoder?)")
    return entry["path"]


def unpack(packs, out, require_all: bool = False, workers: int = 1) -> dict:
    """Unpack every shard present in `packs` into the new folder `out`, checking each image bit for bit.

    Returns {"images": n, "shards": [present], "missing": [absent shards]}.
    """
    packs, out = Path(packs), Path(out)
    manifest = read_manifest(packs)
    present, missing = [], []
    for shard in manifest["shards"]:
        path = packs / shard["name"]
        if not path.is_file():
            missing.append(shard["name"])
            continue
        if path.stat().st_size != shard["bytes"] or file_sha256(path) != shard["sha256"]:
            raise DatapackError(f"{path}: SHA-256 differs from the manifest (damaged or from another pack)")
        present.append(shard["name"])
    if missing and (require_all or not present):
        raise DatapackError(f"{packs}: shard(s) missing: {', '.join(missing)}")
    jobs = []
    for name in present:
        entries = [e for e in manifest["images"] if e["shard"] == name]
        where = _payloads(packs / name, entries)
        jobs += [(packs / name, *where[_member(e)], e, None) for e in entries]
    tmp = _fresh_dir(out)
    try:
        done = _map(_restore, [job[:4] + (str(tmp),) for job in jobs], workers)
        _finish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"images": len(done), "shards": present, "missing": missing}


def verify(packs, require_all: bool = False, workers: int = 1) -> dict:
    """Unpack into a temporary folder and check every image; nothing is kept."""
    with tempfile.TemporaryDirectory(prefix="datapack-verify-") as tmp:
        return unpack(packs, Path(tmp) / "images", require_all, workers)


def _describe(result: dict) -> str:
    text = f"{result['images']} images in {len(result['shards'])} shard(s) ({', '.join(result['shards'])})"
    return text + (f"; not present: {', '.join(result['missing'])}" if result["missing"] else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description="Pack a training folder into lossless shards that travel with a "
                                             "checkout, check them, and unpack them bit for bit.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a folder of images into a new folder of shards")
    p.add_argument("--data", required=True, help="folder of training images, read recursively")
    p.add_argument("--out", required=True, help="new (or empty) folder for manifest.json and the shards, "
                                                "e.g. data/packs (ignored by git)")
    p.add_argument("--max-mib", type=float, default=30.0, help="largest shard in MiB (default 30)")
    p.add_argument("--holdout", type=int, default=0, metavar="N",
                   help="put the N images that train.py --val-split N holds out into holdout.tar (default 0)")
    for name, text in (("verify", "check that every shard present decodes to the packed pixels"),
                       ("unpack", "write the images of every shard present into a new folder, checked")):
        q = sub.add_parser(name, help=text)
        q.add_argument("--packs", required=True, help="folder with manifest.json and (some of) its shards")
        if name == "unpack":
            q.add_argument("--out", required=True, help="new (or empty) folder for the images")
        q.add_argument("--all", action="store_true", help="fail when any shard of the manifest is missing "
                                                          "(default: use those present, name the others)")
    for q in sub.choices.values():
        q.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="processes decoding and encoding in parallel (default: one per core)")
    args = ap.parse_args(argv)
    try:
        if args.command == "pack":
            manifest = pack(args.data, args.out, args.max_mib, args.holdout, args.workers)
            webp = sum(e["stored"] == "webp" for e in manifest["images"])
            print(f"packed {len(manifest['images'])} images into {args.out} "
                  f"({webp} as lossless WebP, {len(manifest['images']) - webp} as their original bytes):")
            for shard in manifest["shards"]:
                print(f"  {shard['name']}: {shard['images']} images, {shard['bytes'] / 2**20:.1f} MiB")
            print(f"  total {sum(s['bytes'] for s in manifest['shards']) / 2**20:.1f} MiB")
        elif args.command == "verify":
            print(f"verified: {_describe(verify(args.packs, args.all, args.workers))} decode bit-identical")
        else:
            print(f"unpacked into {args.out}: {_describe(unpack(args.packs, args.out, args.all, args.workers))}, "
                  f"each checked against its SHA-256")
    except DatapackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
