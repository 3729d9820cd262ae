"""The body of a reward server's ``POST /score`` request, checked and decoded (no server, no model).

``{"prompts": [...], "images": {"format": "npy" | "png", "data": ...}, "metadata": [...]}`` -> float32 images
(B, C, H, W) in [0, 1], the prompts and one metadata dict per prompt. Every field is checked (JSON shape, batch
size, base64, the ``.npy`` header before any data is read, PNG size and mode, dtype, finiteness, range) and a
refusal is a :class:`RequestError` with an HTTP status and a one-line message. ``.npy`` is read with
``allow_pickle=False``; nothing is ever unpickled. The protocol: docs/reward_server.md.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math

import numpy as np
from PIL import Image

__all__ = ["RequestError", "parse_score_request", "one_line", "MAX_PNG_PIXELS"]

#: a PNG may not decode to more pixels than this (decompression bombs)
MAX_PNG_PIXELS = 4096 * 4096
_NPY_MAGIC = b"\x93NUMPY"
_GREY_MODES = {"1": "L", "L": "L", "LA": "L", "I;16": "I;16", "I;16B": "I;16", "I;16L": "I;16"}
_RGB_MODES = {"RGB": "RGB", "RGBA": "RGB", "P": "RGB", "PA": "RGB"}


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_score_request(body: bytes, max_batch: int):
    """The JSON body -> (images (B, C, H, W) float32 numpy in [0, 1], prompts, metadata); raises RequestError."""
    try:
        req = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RequestError(400, f"malformed JSON body ({one_line(e, 120)})") from None
    if not isinstance(req, dict):
        raise RequestError(400, f"body: expected a JSON object, got {type(req).__name__}")
    unknown = sorted(set(req) - {"prompts", "images", "metadata"})
    if unknown:
        raise RequestError(400, f"body: unknown fields {unknown}; expected prompts, images (and optional metadata)")
    prompts = req.get("prompts")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestError(400, "prompts: expected a list of strings")
    n = len(prompts)
    if n == 0:
        raise RequestError(400, "prompts: empty batch")
    if n > max_batch:
        raise RequestError(400, f"prompts: batch of {n} is larger than the server's max_batch {max_batch}")
    metadata = req.get("metadata")
    if metadata is None:
        metadata = [{} for _ in prompts]
    elif not isinstance(metadata, list) or not all(isinstance(m, dict) for m in metadata):
        raise RequestError(400, "metadata: expected a list of objects")
    elif len(metadata) != n:
        raise RequestError(400, f"metadata: {len(metadata)} entries for {n} prompts")
    images = req.get("images")
    if not isinstance(images, dict):
        raise RequestError(400, "images: expected an object {\"format\": \"npy\" | \"png\", \"data\": ...}")
    unknown = sorted(set(images) - {"format", "data"})
    if unknown:
        raise RequestError(400, f"images: unknown fields {unknown}; expected format and data")
    fmt, data = images.get("format"), images.get("data")
    if fmt == "npy":
        if not isinstance(data, str):
            raise RequestError(400, "images.data: expected a base64 string of an .npy file for format npy")
        array = _decode_npy(_b64("images.data", data), n)
    elif fmt == "png":
        if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
            raise RequestError(400, "images.data: expected a list of base64 PNG strings for format png")
        if len(data) != n:
            raise RequestError(400, f"images.data: {len(data)} images for {n} prompts")
        array = _decode_pngs([_b64(f"images.data[{i}]", d) for i, d in enumerate(data)])
    else:
        raise RequestError(400, f"images.format: expected 'npy' or 'png', got {one_line(repr(fmt), 40)}")
    return array, prompts, metadata


def _b64(where: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: not valid base64") from None


def _decode_npy(raw: bytes, n: int):
    """Check the .npy header (magic, version, dtype float32, shape (n, C, H, W), size) before loading."""
    if not raw.startswith(_NPY_MAGIC):
        raise RequestError(400, "images.data: not an .npy file (bad magic)")
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise RequestError(400, f"images.data: unsupported .npy version {version[0]}.{version[1]}")
    except RequestError:
        raise
    except Exception as e:  # noqa: BLE001 - any header problem is the client's
        raise RequestError(400, f"images.data: bad .npy header ({one_line(e, 120)})") from None
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize != 4:
        raise RequestError(400, f"images.data: dtype {dtype}, expected float32")
    if len(shape) != 4:
        raise RequestError(400, f"images.data: shape {tuple(shape)}, expected 4 dims (B, C, H, W)")
    if shape[0] != n:
        raise RequestError(400, f"images.data: batch of {shape[0]} images for {n} prompts")
    if min(shape) < 1:
        raise RequestError(400, f"images.data: empty dimension in shape {tuple(shape)}")
    expected = math.prod(shape) * 4
    if len(raw) - f.tell() != expected:
        raise RequestError(400, f"images.data: {len(raw) - f.tell()} data bytes, shape {tuple(shape)} "
                                 f"needs {expected}")
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise RequestError(400, f"images.data: cannot read the .npy data ({one_line(e, 120)})") from None
    if not isinstance(array, np.ndarray):
        raise RequestError(400, "images.data: not a single .npy array")
    return _check_values(np.array(array, dtype=np.float32, order="C", copy=True))


def _check_values(array):
    if not bool(np.isfinite(array).all()):
        raise RequestError(400, "images: values contain NaN or Inf")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0.0 or hi > 1.0:
        raise RequestError(400, f"images: values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")
    return array


def _decode_pngs(blobs: list[bytes]):
    out = []
    for i, raw in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
                w, h = im.size
                if w * h > MAX_PNG_PIXELS:
                    raise RequestError(400, f"images.data[{i}]: {w}x{h} pixels is more than {MAX_PNG_PIXELS}")
                mode = _GREY_MODES.get(im.mode) or _RGB_MODES.get(im.mode)
                if mode is None:
                    raise RequestError(400, f"images.data[{i}]: PNG mode {im.mode}, expected grey or RGB")
                im.load()
                if mode == "I;16":
                    a = np.asarray(im, dtype=np.float32) / 65535.0
                else:
                    a = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
        except RequestError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
            raise RequestError(400, f"images.data[{i}]: not a decodable PNG ({type(e).__name__})") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if out and a.shape != out[0].shape:
            raise RequestError(400, f"images.data[{i}]: shape {a.shape} differs from image 0's {out[0].shape}")
        out.append(a)
    return _check_values(np.ascontiguousarray(np.stack(out), dtype=np.float32))
