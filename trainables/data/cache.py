"""Decode once: JPEGs become one uint8 tensor cached on disk, keyed by folder and settings.

The key hashes the data folder, the decode settings and every image file's relative
path, size and modification time, so editing, adding or removing a file, or asking
for another image size, rebuilds the cache. Split settings (forget count, identity
thresholds) are applied after loading and never force a re-decode. Trials read the
cached tensor and never touch PIL again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .splits import DataError

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("GLI_CACHE_DIR", Path.home() / ".cache" / "gli-study")).expanduser().resolve()


def cache_key(dataset: str, data_dir: Path, image_size: int, files: list[Path]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, dataset, str(data_dir.resolve()), image_size]).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(data_dir)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _decode(path: Path, image_size: int) -> tuple[np.ndarray, str]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: unreadable image ({exc.strerror})") from None
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img = img.convert("RGB")
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    except UnidentifiedImageError:
        raise DataError(f"{path}: corrupt or unsupported image (not a format PIL can identify)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or unsupported image ({exc})") from None
    return array, hashlib.sha256(raw).hexdigest()


def decode_files(files: list[Path], image_size: int, workers: int = 4) -> tuple[torch.Tensor, list[str]]:
    """Decode and resize every file; returns the N x 3 x S x S uint8 tensor and content hashes."""
    out = torch.empty((len(files), 3, image_size, image_size), dtype=torch.uint8)
    hashes: list[str] = [""] * len(files)
    start = last = time.time()
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        for i, (array, digest) in enumerate(pool.map(lambda f: _decode(f, image_size), files)):
            out[i] = torch.from_numpy(array)
            hashes[i] = digest
            if time.time() - last > 5 and len(files) > 500:
                last = time.time()
                print(f"[data] decoded {i + 1}/{len(files)} images ({last - start:.0f}s)", file=sys.stderr, flush=True)
    return out, hashes


def cached(path: Path, build, what: str) -> tuple[dict, bool]:
    """`torch.load(path)` when it reads, else `build()` saved under a temporary name and renamed, so a
    crash never leaves a half-written cache under the final name. Returns (the tensors, whether it was a hit)."""
    if path.exists():
        try:
            return torch.load(path, weights_only=True), True
        except Exception as exc:  # a torn write from a crash: rebuild rather than fail
            print(f"[data] cache {path} unreadable ({exc}); rebuilding", file=sys.stderr)
    print(f"[data] decoding {what} into {path}", file=sys.stderr, flush=True)
    value = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(value, tmp)
    os.replace(tmp, path)
    return value, False


def load_images(
    dataset: str, data_dir: Path, files: list[Path], image_size: int, cache_dir: Path | None
) -> tuple[torch.Tensor, list[str], Path | None, bool]:
    """Images and content hashes for `files`, from the cache when its key still matches.

    Returns (images, hashes, cache file or None, whether it was a cache hit).
    """
    if cache_dir is None:
        images, hashes = decode_files(files, image_size)
        return images, hashes, None, False
    path = cache_dir / f"{dataset}-{cache_key(dataset, data_dir, image_size, files)}.pt"

    def build() -> dict:
        images, hashes = decode_files(files, image_size)
        return {"images": images, "hashes": hashes}

    value, hit = cached(path, build, f"{len(files)} images from {data_dir}")
    return value["images"], list(value["hashes"]), path, hit
