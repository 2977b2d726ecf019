"""The `.npz` codes file written by `xcodec-stream encode` and read by `decode` (docs/CODES_FORMAT.md).

A plain numpy `.npz` (zip of `.npy` arrays, no pickled objects: read with allow_pickle=False).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT_NAME = "xcodec-stream-codes"
FORMAT_VERSION = 1

_INT_FIELDS = (
    "n_q",
    "frame_rate",
    "sample_rate",
    "hop_length",
    "codebook_size",
    "num_samples",
    "original_sample_rate",
    "original_num_samples",
    "format_version",
)
_STR_FIELDS = ("format", "model_id")


@dataclass
class CodesFile:
    """Codes of one mono stream plus what is needed to decode them to the original length."""

    codes: np.ndarray
    """(n_q, F) uint16."""
    frame_rate: int
    sample_rate: int
    hop_length: int
    model_id: str
    num_samples: int
    """Length of the encoded signal at `sample_rate` (16 kHz), before padding to whole frames."""
    original_sample_rate: int
    original_num_samples: int
    """Length of the input file at its own rate; `decode` at that rate gives exactly this many samples."""
    codebook_size: int = 1024
    bandwidth: float | None = None
    format_version: int = FORMAT_VERSION

    @property
    def n_q(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise ValueError(f"codes must have shape (n_q, frames), got {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= min(self.codebook_size, 65536)):
            raise ValueError(f"codes must be in 0..{self.codebook_size - 1}")
        arrays: dict[str, np.ndarray] = {
            "codes": codes.astype(np.uint16),
            "format": np.array(FORMAT_NAME),
            "model_id": np.array(self.model_id),
            "n_q": np.array(self.n_q, dtype=np.int64),
            "frame_rate": np.array(self.frame_rate, dtype=np.int64),
            "sample_rate": np.array(self.sample_rate, dtype=np.int64),
            "hop_length": np.array(self.hop_length, dtype=np.int64),
            "codebook_size": np.array(self.codebook_size, dtype=np.int64),
            "num_samples": np.array(self.num_samples, dtype=np.int64),
            "original_sample_rate": np.array(self.original_sample_rate, dtype=np.int64),
            "original_num_samples": np.array(self.original_num_samples, dtype=np.int64),
            "format_version": np.array(self.format_version, dtype=np.int64),
        }
        if self.bandwidth is not None:
            arrays["bandwidth"] = np.array(self.bandwidth, dtype=np.float64)
        # np.savez appends ".npz" to names without it: write through a file object to keep the name as given
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return path


def save_codes(path: str | os.PathLike, codes_file: CodesFile) -> Path:
    return codes_file.save(path)


def load_codes(path: str | os.PathLike) -> CodesFile:
    """Read and validate a codes file; every problem is a ValueError that names the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"codes file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path} is not a codes file (.npz): {exc}") from None
    fmt = arrays.get("format")
    if fmt is None or fmt.dtype.kind != "U" or str(fmt) != FORMAT_NAME:
        raise ValueError(f"{path} is not an xcodec-stream codes file (field 'format' is not {FORMAT_NAME!r})")
    missing = [k for k in ("codes", *_INT_FIELDS, *_STR_FIELDS) if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing fields {', '.join(missing)}")
    ints: dict[str, int] = {}
    for key in _INT_FIELDS:
        a = arrays[key]
        if a.shape != () or a.dtype.kind not in "iu":
            raise ValueError(f"{path}: field {key!r} must be an integer scalar, got {a.dtype} {a.shape}")
        ints[key] = int(a)
    if ints["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {ints['format_version']} is not supported (this version reads {FORMAT_VERSION})"
        )
    model_id = arrays["model_id"]
    if model_id.shape != () or model_id.dtype.kind != "U":
        raise ValueError(f"{path}: field 'model_id' must be a string")
    codes = arrays["codes"]
    if codes.dtype != np.uint16 or codes.ndim != 2:
        raise ValueError(
            f"{path}: 'codes' must be a uint16 array (n_q, frames), got {codes.dtype} {codes.shape}"
        )
    if codes.shape[0] != ints["n_q"] or codes.shape[0] == 0:
        raise ValueError(f"{path}: 'codes' has {codes.shape[0]} rows but n_q is {ints['n_q']}")
    if codes.size and int(codes.max()) >= ints["codebook_size"]:
        raise ValueError(
            f"{path}: code {int(codes.max())} is out of range for codebook_size {ints['codebook_size']}"
        )
    for key in ("frame_rate", "sample_rate", "hop_length", "codebook_size", "original_sample_rate"):
        if ints[key] <= 0:
            raise ValueError(f"{path}: field {key!r} must be positive, got {ints[key]}")
    if ints["num_samples"] < 0 or ints["original_num_samples"] < 0:
        raise ValueError(f"{path}: negative length")
    if ints["num_samples"] > (codes.shape[1] + 1) * ints["hop_length"]:
        raise ValueError(
            f"{path}: num_samples {ints['num_samples']} is more than {codes.shape[1]} frames of "
            f"{ints['hop_length']} samples can hold"
        )
    bandwidth = float(arrays["bandwidth"]) if "bandwidth" in arrays else None
    return CodesFile(
        codes=codes,
        frame_rate=ints["frame_rate"],
        sample_rate=ints["sample_rate"],
        hop_length=ints["hop_length"],
        model_id=str(model_id),
        num_samples=ints["num_samples"],
        original_sample_rate=ints["original_sample_rate"],
        original_num_samples=ints["original_num_samples"],
        codebook_size=ints["codebook_size"],
        bandwidth=bandwidth,
        format_version=ints["format_version"],
    )
