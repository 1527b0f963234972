"""Projected tokens: tokens stored as their coordinates on the top-K principal directions of the cache's tokens.

The directions are fitted by PCA on a seeded sample of the cache's *training* clips (split ``train`` or empty,
labelled; val and test clips are never looked at), on every token of those clips (CLS and patches alike, after any
patch pooling), at most ``max_tokens`` token vectors. A token x of width D becomes ``y = (x - mean) @ W.T`` with W
the K x D matrix of unit principal directions (largest variance first, each with its largest entry positive so that
the fit is reproducible). ``projection.npy`` beside the shards holds W and the mean as one (K + 1, D) float32 array
(rows 0..K-1: W, row K: mean); the manifest's ``tokens.projection`` records its sha256, so a resumed run must fit
the very same projection. ``x ~ y @ W + mean`` maps projected tokens back (what the directions left out is lost).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from step_cache.cache.files import fsync_dir
from step_cache.errors import InputError
from step_cache.interface import option

PROJECTION_NAME = "projection.npy"


@dataclass
class Projection:
    components: np.ndarray  # (K, D) float32, orthonormal rows
    mean: np.ndarray  # (D,) float32
    explained: float  # share of the sample's variance the K directions keep
    fit_clips: int
    fit_tokens: int
    seed: int

    @property
    def array(self) -> np.ndarray:
        return np.concatenate([self.components, self.mean[None]]).astype(np.float32)

    def sha256(self) -> str:
        return hashlib.sha256(self.array.tobytes()).hexdigest()

    def apply(self, tokens: np.ndarray) -> np.ndarray:
        """(..., D) -> (..., K) float32."""
        return (np.asarray(tokens, dtype=np.float32) - self.mean) @ self.components.T

    def record(self) -> dict[str, Any]:
        """``tokens.projection`` of the manifest."""
        return {
            "method": "pca",
            "components": int(self.components.shape[0]),
            "source_dim": int(self.components.shape[1]),
            "file": PROJECTION_NAME,
            "sha256": self.sha256(),
            "explained_variance": round(float(self.explained), 6),
            "fit": {"clips": self.fit_clips, "tokens": self.fit_tokens, "seed": self.seed, "splits": ["train", ""]},
        }

    def save(self, directory: Path) -> Path:
        path = directory / PROJECTION_NAME
        tmp = directory / f".{PROJECTION_NAME}.tmp"
        with open(tmp, "wb") as handle:
            np.save(handle, self.array)
        tmp.replace(path)
        fsync_dir(directory)
        return path


def fit_pca(vectors: np.ndarray, k: int, *, fit_clips: int, seed: int) -> Projection:
    """Top-``k`` principal directions of (n, D) ``vectors`` (covariance in float64, ``numpy.linalg.eigh``)."""
    x = np.asarray(vectors, dtype=np.float64)
    n, dim = x.shape
    if not 1 <= k < dim:
        raise InputError(f"{option('project', k)}: choose 1..{dim - 1} components (the tokens have width {dim})")
    if n < 2:
        raise InputError(f"{option('project')}: the cache has too few training tokens to fit a projection")
    mean = x.mean(axis=0)
    centred = x - mean
    covariance = centred.T @ centred / (n - 1)
    values, vectors_ = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(values)[::-1][:k]
    components = vectors_[:, order].T
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(axis=1)])
    components *= signs[:, None]
    explained = float(values[order].sum() / max(values.sum(), np.finfo(np.float64).tiny))
    return Projection(components.astype(np.float32), mean.astype(np.float32), explained, fit_clips, n, seed)


def sample_training_clips(labels: np.ndarray, splits: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` labelled training clips (split ``train`` or empty), drawn with ``seed``, sorted."""
    candidates = np.nonzero((labels >= 0) & np.isin(splits, ["train", ""]))[0]
    if len(candidates) == 0:
        raise InputError(
            f"{option('project')}: the cache has no training clips (labelled, split 'train' or empty) to fit on"
        )
    chosen = np.random.default_rng(seed).choice(candidates, size=min(count, len(candidates)), replace=False)
    return np.sort(chosen)


def subsample_tokens(tokens: np.ndarray, max_tokens: int, seed: int) -> np.ndarray:
    """(..., D) -> at most ``max_tokens`` rows of (n, D), drawn with ``seed``."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    if len(flat) <= max_tokens:
        return flat
    rows = np.sort(np.random.default_rng([seed, 1]).choice(len(flat), size=max_tokens, replace=False))
    return flat[rows]


def check_projection(directory: Path, record: dict[str, Any]) -> str | None:
    """What is wrong with a projected cache's ``projection.npy`` (None when it matches the manifest)."""
    path = directory / record.get("file", PROJECTION_NAME)
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        return f"{path}: unreadable projection ({error})"
    if hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest() != record.get("sha256"):
        return f"{path}: differs from the projection the manifest records (sha256)"
    return None
