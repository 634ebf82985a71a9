"""Dataset sources: in-memory arrays (offline Fashion-MNIST, TFDS) and dataset facts.

Fashion-MNIST is read straight from the gzipped IDX files that the Debian package
``dataset-fashion-mnist`` installs, so the default job needs neither network nor
TFDS preparation. Other datasets come from TFDS and must have been prepared
(``tfds build <name> --data_dir=...``).
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import zlib

import numpy as np

from ssljax.data.specs import DatasetInfo, dataset_info  # noqa: F401  (their old home)

__all__ = [
    "DatasetInfo",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "dataset_info",
    "load_arrays",
    "parse_split",
    "FASHION_MNIST_DIR_ENV",
    "DEFAULT_FASHION_MNIST_DIR",
]

FASHION_MNIST_DIR_ENV = "SSLJAX_FASHION_MNIST_DIR"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is neither on disk nor prepared for TFDS; the message says how to get it."""


# ----------------------------------------------------------------------------- splits

_SPLIT_RE = re.compile(r"^\s*(\w+)\s*(?:\[\s*([^:\]]*)\s*:\s*([^\]]*)\s*\])?\s*$")


def _bound(text: str, n: int, default: int) -> int:
    text = text.strip()
    if not text:
        return default
    if text.endswith("%"):
        value = round(float(text[:-1]) * n / 100)
    else:
        value = int(text)
    if value < 0:
        value += n
    return min(max(value, 0), n)


def parse_split(split: str, sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """Parses a TFDS-style split string into ``(split, start, stop)`` slices.

    Supports ``name``, ``name[a:b]`` with integer or percent bounds (negative
    counts from the end) and ``+`` to concatenate.

    >>> parse_split("train[:10]+test[-5:]", {"train": 100, "test": 20})
    [('train', 0, 10), ('test', 15, 20)]
    """
    parts = []
    for piece in split.split("+"):
        match = _SPLIT_RE.match(piece)
        if not match or match.group(1) not in sizes:
            raise ValueError(
                f"Cannot parse split {piece!r}; use one of {sorted(sizes)}, "
                "optionally sliced like 'train[:1000]' or 'train[10%:20%]'.")
        name, start, stop = match.groups()
        n = sizes[name]
        lo = _bound(start or "", n, 0)
        hi = _bound(stop or "", n, n)
        parts.append((name, lo, max(lo, hi)))
    return parts


# ----------------------------------------------------------------------------- IDX


REINSTALL_FASHION_MNIST = "sudo apt-get install --reinstall dataset-fashion-mnist"


class DatasetCorruptError(DatasetNotFoundError):
    """A dataset file is on disk but unreadable (truncated, corrupt, not what it claims)."""


def _corrupt(path: str, what: str) -> DatasetCorruptError:
    return DatasetCorruptError(
        f"{path} is {what}; reinstall it with `{REINSTALL_FASHION_MNIST}` (or point "
        f"${FASHION_MNIST_DIR_ENV} at a folder holding intact files).")


def _read_idx(path: str, ndim: int | None = None) -> np.ndarray:
    """Decodes one gzipped IDX file (uint8 payload) into an array.

    Raises:
      DatasetCorruptError: the file is not gzip, is cut short, has the wrong magic number
        or dimensions, or its length disagrees with its header.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
        raise _corrupt(path, f"not a readable gzip file ({type(e).__name__})") from None
    if len(data) < 4:
        raise _corrupt(path, "too short for an IDX header")
    zeros, dtype_code, dims = data[0:2], data[2], data[3]
    if zeros != b"\x00\x00" or dtype_code != 0x08 or (ndim is not None and dims != ndim):
        raise _corrupt(path, f"not a uint8 IDX file of {ndim or 'some'} dimension(s) (magic "
                             f"{data[:4].hex()})")
    offset = 4 + 4 * dims
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if len(data) != offset + int(np.prod(shape)):
        raise _corrupt(path, f"{len(data)} bytes long where its header {shape} needs "
                             f"{offset + int(np.prod(shape))}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


@functools.lru_cache(maxsize=4)
def _load_idx_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = _IDX_FILES[split]
    images = _read_idx(os.path.join(directory, image_file), 3)[..., None]
    labels = _read_idx(os.path.join(directory, label_file), 1).astype(np.int32)
    if len(images) != len(labels):
        raise _corrupt(os.path.join(directory, label_file),
                       f"{len(labels)} labels for {len(images)} images")
    images.flags.writeable = False  # shared by every caller through the cache
    labels.flags.writeable = False
    return images, labels


def _fashion_mnist_dir(data_dir: str | None) -> str:
    if data_dir is not None:
        return data_dir
    return os.environ.get(FASHION_MNIST_DIR_ENV) or DEFAULT_FASHION_MNIST_DIR


def _has_idx_files(directory: str) -> bool:
    return all(
        os.path.isfile(os.path.join(directory, f)) for pair in _IDX_FILES.values() for f in pair)


def _slice_and_concat(parts, load):
    images, labels = [], []
    for name, lo, hi in parts:
        x, y = load(name)
        images.append(x[lo:hi])
        labels.append(y[lo:hi])
    if len(parts) == 1:
        return images[0], labels[0]
    return np.concatenate(images), np.concatenate(labels)


# ----------------------------------------------------------------------------- TFDS


def _tfds_load_arrays(name: str, split: str, data_dir: str | None):
    """Loads a prepared TFDS dataset fully into memory, or raises DatasetNotFoundError."""
    from ssljax.data import _tf  # noqa: F401  (TensorFlow off accelerators first)
    from ssljax import _extras
    tfds = _extras.require("tensorflow_datasets", part=f"Reading {name!r} through TFDS")

    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True, download=False)
    except (tfds.core.DatasetNotFoundError, AssertionError, FileNotFoundError) as e:
        where = data_dir or "~/tensorflow_datasets"
        raise DatasetNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {where}; run "
            f"`tfds build {name} --data_dir={where}` first.") from e
    # Chunks rather than batch_size=-1: same speed, no second full copy, and it also
    # works under tfds.testing.mock_data (whose batch_size=-1 aborts the process).
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(8192)):
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError(f"Split {split!r} of {name} is empty.")
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)


def load_arrays(
    name: str, split: str, *, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole (sliced) split into memory.

    Args:
      name: ``fashion_mnist``, ``cifar10``, ``cifar100`` or ``stl10``.
      split: TFDS-style split, e.g. ``'train'``, ``'test'``, ``'train[:1000]'``.
      data_dir: for ``fashion_mnist`` the folder with the IDX ``.gz`` files (default:
        ``$SSLJAX_FASHION_MNIST_DIR`` or ``/usr/share/datasets/fashion-mnist``; if
        the files are not there, TFDS is tried in ``data_dir``); otherwise the TFDS
        data directory.

    Returns:
      ``(images, labels)``: uint8 ``[N, H, W, C]`` and int32 ``[N]``.

    Raises:
      DatasetNotFoundError: the data is not on disk; the message names the command
        that installs or prepares it.

    >>> images, labels = load_arrays("fashion_mnist", "test[:8]")  # doctest: +SKIP
    >>> images.shape, labels.dtype  # doctest: +SKIP
    ((8, 28, 28, 1), dtype('int32'))
    """
    info = dataset_info(name)
    if not info.in_memory:
        raise ValueError(
            f"{name} is too large for memory; stream it with "
            "ssljax.data.pipeline.make_tfds_stream instead.")
    if name == "coloured_fashion_mnist":
        from ssljax.data import coloured
        sizes = {"train": info.num_train, "test": info.num_test}
        parts = parse_split(split, sizes)

        def load(s):
            gray, labels = load_arrays("fashion_mnist", s, data_dir=data_dir)
            return coloured.tint(gray, coloured.tint_colours(s, len(gray))), labels
        return _slice_and_concat(parts, load)
    if name != "fashion_mnist":
        return _tfds_load_arrays(name, split, data_dir)

    directory = _fashion_mnist_dir(data_dir)
    if _has_idx_files(directory):
        # Slice by the files' real sizes (a custom folder may hold a subset).
        names = {m.group(1) for m in map(_SPLIT_RE.match, split.split("+")) if m}
        sizes = {s: len(_load_idx_split(directory, s)[1]) for s in names & set(_IDX_FILES)}
        parts = parse_split(split, sizes or {"train": info.num_train, "test": info.num_test})
        return _slice_and_concat(parts, lambda s: _load_idx_split(directory, s))
    try:  # data_dir may also be a TFDS data directory with fashion_mnist prepared
        return _tfds_load_arrays(name, split, data_dir)
    except (DatasetNotFoundError, ImportError):
        pass
    raise DatasetNotFoundError(
        f"Fashion-MNIST IDX files are not in {directory}; install them with "
        "`sudo apt-get install dataset-fashion-mnist` (or the README's `make install`), "
        f"or point ${FASHION_MNIST_DIR_ENV} at a folder holding them.")
