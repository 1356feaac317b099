"""Image-classification data for ``algo: classify``: scikit-learn's bundled digits, a ``.npz`` file
of ``x``/``y`` arrays, or a folder of images with one subfolder per class; split into seeded,
stratified train/val/test tensors. Images come out as float (N, C, H, W) in [0, 1] (integer arrays
are scaled: uint8 by 1/255, other integers by 1/max; float arrays are taken as they are)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from shardlab.configs.checks import ConfigError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataError(ConfigError):
    """Data that cannot be used (missing, corrupt, wrong shapes); the message says what to fix."""


@dataclass
class Splits:
    """Train/val/test images (float, N×C×H×W) and integer labels, with the class names."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    classes: list[str]

    @property
    def shape(self) -> list[int]:
        """(C, H, W) of one image."""
        return list(self.x["train"].shape[1:])


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8×8 digits (1,797 images, bundled with the package: nothing is downloaded)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images[:, None].astype(np.float32) / 16.0, digits.target.astype(np.int64), [str(i) for i in range(10)]


def _scaled(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if np.issubdtype(x.dtype, np.integer):
        top = max(int(x.max()), 1) if x.size else 1
        return x.astype(np.float32) / top
    return x.astype(np.float32)


def _as_images(x: np.ndarray, path: str) -> np.ndarray:
    if x.ndim == 2:  # feature vectors: one row of pixels
        return x[:, None, None, :]
    if x.ndim == 3:  # (N, H, W) grayscale
        return x[:, None]
    if x.ndim == 4:
        return x
    raise DataError(f"{path}: x has shape {x.shape}; expected (N, D), (N, H, W) or (N, C, H, W)")


def _labels(y: np.ndarray, n: int, path: str) -> tuple[np.ndarray, list[str]]:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: y has shape {y.shape}; expected one label per image, shape ({n},)")
    if not (np.issubdtype(y.dtype, np.integer) or y.dtype.kind in "UO" or y.dtype == np.bool_):
        raise DataError(f"{path}: y has dtype {y.dtype}; labels must be integers or strings")
    classes, index = np.unique(y, return_inverse=True)
    return index.astype(np.int64), [str(c) for c in classes]


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``x`` (images or feature rows) and ``y`` (labels) from a .npz file (no pickles)."""
    if not os.path.isfile(path):
        raise DataError(f"data file {path} not found; set data.path to a .npz with x and y arrays")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(f"{path} has no array named {', '.join(missing)} (it has "
                                f"{', '.join(archive.files) or 'none'}); save it with np.savez(path, x=..., y=...)")
            x, y = archive["x"], archive["y"]
    except DataError:
        raise
    except Exception as exc:  # numpy raises several types for truncated or foreign files
        raise DataError(f"data file {path} is corrupt or not a .npz ({type(exc).__name__}); re-save it "
                        "with np.savez") from None
    images = _as_images(_scaled(x), path)
    labels, classes = _labels(y, len(images), path)
    return images, labels, classes


def load_folder(path: str, channels: int = 1, image_size: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images under ``path/<class>/``, read with PIL as grayscale (1) or RGB (3), optionally resized."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isdir(path):
        raise DataError(f"image folder {path} not found; set data.path to a folder with one subfolder per class")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    files = [(os.path.join(path, c, f), label) for label, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(path, c))) if f.lower().endswith(IMAGE_EXTENSIONS)]
    if len(classes) < 2 or not files:
        raise DataError(f"image folder {path} needs at least two class subfolders holding images "
                        f"({', '.join(IMAGE_EXTENSIONS)}); found {len(classes)} subfolders, {len(files)} images")
    images, size = [], (image_size, image_size) if image_size else None
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image = image.convert("L" if channels == 1 else "RGB")
                size = size or image.size
                if image.size != size:
                    if not image_size:
                        raise DataError(f"image {file} is {image.size[0]}×{image.size[1]} but the first image is "
                                        f"{size[0]}×{size[1]}; set data.image_size to resize them all")
                    image = image.resize(size)
                images.append(np.asarray(image, dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"image {file} cannot be read ({type(exc).__name__}); remove or replace it") from None
    x = np.stack(images)
    x = x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)
    return x.astype(np.float32) / 255.0, np.array([label for _, label in files], dtype=np.int64), classes


def load_arrays(data: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images and labels of the configured source (``data`` is a DataConfig)."""
    if data.source == "digits":
        return load_digits_arrays()
    if data.source == "npz":
        return load_npz(data.path)
    return load_folder(data.path, data.channels, data.image_size)


def split(x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, tuple]:
    """Stratified train/val/test split, the same for the same seed."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    stratify = y if counts.min() >= 3 else None  # stratifying needs every class in every part
    try:
        x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                                          stratify=stratify)
        parts = {"test": (x_test, y_test)}
        if val_fraction > 0:
            x_train, x_val, y_train, y_val = train_test_split(
                x_rest, y_rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                stratify=y_rest if stratify is not None else None)
            parts.update(train=(x_train, y_train), val=(x_val, y_val))
        else:
            parts.update(train=(x_rest, y_rest), val=(x_rest[:0], y_rest[:0]))
    except ValueError as exc:
        raise DataError(f"cannot split {len(y)} images into train/val/test ({str(exc).splitlines()[0]}); "
                        "use more data or smaller data.val_fraction / data.test_fraction") from None
    return parts


def load_splits(data: Any) -> Splits:
    """The configured data, split by ``data.split_seed`` (``data`` is a DataConfig)."""
    x, y, classes = load_arrays(data)
    parts = split(x, y, data.val_fraction, data.test_fraction, data.split_seed)
    return Splits({k: torch.from_numpy(np.ascontiguousarray(v[0])) for k, v in parts.items()},
                  {k: torch.from_numpy(np.ascontiguousarray(v[1])) for k, v in parts.items()}, classes)
