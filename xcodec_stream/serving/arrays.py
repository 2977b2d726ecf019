"""Arrays on the wire: a msgpack map {dtype, shape, data} with raw little-endian bytes, strictly validated."""

from __future__ import annotations

import math

import numpy as np

# Wire dtype -> numpy dtype. Little-endian only: the byte order is part of the name.
DTYPES: dict[str, np.dtype] = {
    "<i2": np.dtype("<i2"),  # PCM s16
    "<f4": np.dtype("<f4"),  # PCM f32
    "<u2": np.dtype("<u2"),  # codes (codebooks of up to 65536 entries)
}
MAX_NDIM = 2


class ArrayError(ValueError):
    """An array field that does not describe a valid array; the message says why."""


def pack_array(a: np.ndarray) -> dict:
    """numpy array -> wire map. The dtype must be one of DTYPES (converted to little-endian)."""
    a = np.asarray(a)
    for name, dt in DTYPES.items():
        if a.dtype.kind == dt.kind and a.dtype.itemsize == dt.itemsize:
            a = np.ascontiguousarray(a, dtype=dt)
            return {"dtype": name, "shape": list(a.shape), "data": a.tobytes()}
    raise ArrayError(f"dtype {a.dtype} cannot be sent; use one of {sorted(DTYPES)}")


def unpack_array(obj: object, *, what: str = "array") -> np.ndarray:
    """Wire map -> read-only numpy array; raises ArrayError on anything malformed."""
    if not isinstance(obj, dict):
        raise ArrayError(f"{what} must be a map with dtype, shape and data, got {type(obj).__name__}")
    keys = set(obj)
    if keys != {"dtype", "shape", "data"}:
        missing = sorted({"dtype", "shape", "data"} - keys)
        extra = sorted(str(k) for k in keys - {"dtype", "shape", "data"})
        raise ArrayError(f"{what} needs exactly dtype, shape, data (missing {missing}, unexpected {extra})")
    name, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if not isinstance(name, str) or name not in DTYPES:
        raise ArrayError(f"{what}.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_NDIM:
        raise ArrayError(f"{what}.shape must be a list of 1 to {MAX_NDIM} sizes")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ArrayError(f"{what}.shape must hold non-negative integers, got {shape!r}")
    if not isinstance(data, bytes):
        raise ArrayError(f"{what}.data must be binary (msgpack bin), got {type(data).__name__}")
    dt = DTYPES[name]
    expected = math.prod(shape) * dt.itemsize
    if expected != len(data):
        raise ArrayError(
            f"{what}: shape {shape} of {name} needs {expected} bytes, data has {len(data)}"
            + (f" (not a multiple of the {dt.itemsize}-byte sample size)" if len(data) % dt.itemsize else "")
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)
