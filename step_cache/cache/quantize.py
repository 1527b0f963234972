"""int8 tokens: one absmax scale per token, stored beside it (shard format version 2).

A token x (D values) is stored as ``q = round(x / s)`` in int8 with ``s = max|x| / 127`` stored as float16, rounded
*up* to the next float16 when rounding to nearest would make it smaller, so ``|x / s| <= 127`` and no value is
clipped. Dequantized, ``q * s`` is within ``s / 2`` of x in every element (rounding to the nearest integer), i.e.
within 1/254 of the token's largest magnitude. A token of zeros has ``s = 0`` and reads back as zeros. A token with
a NaN or Inf gets a non-finite scale and zeros, so it reads back non-finite and ``verify`` still finds it.

Storage per token: D + 2 bytes instead of 2 D (float16): 0.505x for D = 192, 0.503x for D = 384, 0.501x for D = 768.
"""

from __future__ import annotations

import numpy as np

from step_cache.errors import InputError

TOKEN_DTYPES = ("float16", "float32", "int8")
SCALE_DTYPE = np.float16
_LEVELS = 127  # symmetric: -127..127, so -x quantizes to -q


def check_dtype(dtype: str) -> str:
    if dtype not in TOKEN_DTYPES:
        raise InputError(f"token dtype must be one of {', '.join(TOKEN_DTYPES)}, got {dtype!r}")
    return dtype


def is_quantized(dtype: str) -> bool:
    return dtype == "int8"


def read_dtype(dtype: str) -> np.dtype:
    """The dtype readers hand out for tokens stored as ``dtype``: int8 tokens are dequantized to float16 (their
    error, <= 1/254 of a token's largest value, is far above float16's 1/2048 relative rounding)."""
    return np.dtype("float32" if dtype == "float32" else "float16")


def token_bytes(dtype: str, dim: int) -> int:
    """Bytes one token of width ``dim`` takes on disk and in memory (int8: the values and their scale)."""
    if is_quantized(dtype):
        return dim + np.dtype(SCALE_DTYPE).itemsize
    return dim * np.dtype(dtype).itemsize


def quantize(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., D) float tokens -> int8 values (..., D) and float16 scales (...)."""
    x = np.asarray(tokens, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        absmax = np.abs(x).max(axis=-1)  # NaN or Inf stays: the token must read back non-finite
        scale = np.array(absmax / _LEVELS, dtype=SCALE_DTYPE)  # an array even for a single token
        low = scale.astype(np.float32) * _LEVELS < absmax  # rounded down: step up one float16, so nothing clips
        scale[low] = np.nextafter(scale[low], SCALE_DTYPE(np.inf))
        step = scale.astype(np.float32)[..., None]
        usable = np.isfinite(step) & (step > 0)
        q = np.divide(x, step, out=np.zeros_like(x), where=usable)
    q = np.clip(np.rint(q), -_LEVELS, _LEVELS).astype(np.int8)
    return q, scale


def dequantize(values: np.ndarray, scales: np.ndarray, dtype: np.dtype | str = np.float16) -> np.ndarray:
    """int8 values (..., D) and their scales (...) -> tokens in ``dtype`` (the product is formed in float32)."""
    out = values.astype(np.float32)
    with np.errstate(invalid="ignore"):  # 0 * Inf of a non-finite token: NaN, as it should read
        out *= scales.astype(np.float32)[..., None]
    return out.astype(dtype, copy=False)
