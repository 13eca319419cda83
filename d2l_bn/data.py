"""Fashion-MNIST for the Batch Normalization chapter, framework-free (numpy and pooch only).

The chapter trains on Fashion-MNIST, as Dive into Deep Learning does. This module gets the four
canonical IDX archives, checks each against its published md5, parses them with numpy and serves
minibatches from memory::

    data = FashionMNIST(batch_size=128)
    for X, y in data.train_dataloader():  # X: float32 (128, 1, 28, 28) in [0, 1], y: int64 (128,)
        ...

Where the archives come from:

* ``root=`` (or the environment variable ``D2L_BN_DATA``): a folder that already holds them, e.g.
  an offline copy. It is only read, never written.
* otherwise they are downloaded with pooch into ``cache_dir`` (or ``D2L_BN_CACHE``, else the user's
  cache folder), trying the mirrors in :data:`MIRRORS` in order; ``urls=`` (or ``D2L_BN_DATA_URL``,
  whitespace-separated) replaces that list.

Every file, local or downloaded, must match its md5, otherwise :class:`DataError` says which file
is wrong and what to do. Parsed arrays are cached in memory and as ``.npy`` files in the cache
folder, so only the first load in the first process pays for decompression.

Framework modules subclass :class:`FashionMNIST`, set ``layout`` and override ``to_tensors``.
"""

from __future__ import annotations

import gzip
import math
import os
import uuid
import warnings
import zlib
from numbers import Integral
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from tqdm import TqdmWarning

with warnings.catch_warnings():
    # pooch imports tqdm.auto, which warns on stderr in a Jupyter kernel without ipywidgets; no
    # progress bar of pooch's is used here.
    warnings.simplefilter("ignore", TqdmWarning)
    import pooch

# Archive name -> md5, as published by Zalando Research (and listed by torchvision).
FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)
TEXT_LABELS = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat',
               'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot')
LAYOUTS = ("NCHW", "NHWC")

_LABELS_MAGIC, _IMAGES_MAGIC = 2049, 2051
# Array name -> (archive, IDX magic number, expected shape).
_ARRAYS = {
    "train_images": ("train-images-idx3-ubyte.gz", _IMAGES_MAGIC, (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte.gz", _LABELS_MAGIC, (60000,)),
    "test_images": ("t10k-images-idx3-ubyte.gz", _IMAGES_MAGIC, (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", _LABELS_MAGIC, (10000,)),
}
# Parsed arrays of this process, keyed by the md5s of the archives they came from.
_LOADED: dict[tuple[str, ...], dict[str, np.ndarray]] = {}


class DataError(ValueError):
    """A Fashion-MNIST file is missing, corrupt, truncated or not the one expected."""


def _md5(path: Path) -> str:
    # pooch's own hash function, so local folders get exactly the check that downloads get
    return pooch.file_hash(str(path), alg="md5")


def _cache_root(cache_dir: Optional[os.PathLike]) -> Path:
    base = cache_dir or os.environ.get("D2L_BN_CACHE") or pooch.os_cache("d2l_bn")
    return Path(base).expanduser() / "fashion-mnist"


def _check_local(path: Path, md5: str) -> None:
    advice = ("Replace it with the canonical archive, or unset D2L_BN_DATA / pass root=None "
              "to download a verified copy.")
    if not path.is_file():
        raise DataError(f"{path} is missing (expected md5 {md5}, actual: no file). {advice}")
    actual = _md5(path)
    if actual != md5:
        raise DataError(f"{path} has md5 {actual}, expected {md5}: it is corrupt, truncated or "
                        f"not the Fashion-MNIST archive. {advice}")


def _download(name: str, md5: str, folder: Path, urls: Sequence[str]) -> Path:
    path = folder / name
    if path.is_file():
        if _md5(path) == md5:
            return path
        # Removed rather than left to pooch, so that a failed re-fetch leaves nothing unverified
        # under the final name.
        path.unlink(missing_ok=True)
    answers = []
    for base in urls:
        url = base.rstrip("/") + "/" + name
        try:
            # pooch downloads to a temporary file and moves it here only if the md5 matches.
            pooch.retrieve(url, known_hash=f"md5:{md5}", fname=name, path=folder,
                           progressbar=False)
            return path
        except (ValueError, OSError) as error:  # requests' errors are OSErrors
            answers.append(f"  {url}: {error}")
    raise DataError(f"could not download a verified copy of {path} (expected md5 {md5}); no file "
                    "was kept. The mirrors answered:\n" + "\n".join(answers) + "\nCheck the "
                    "network, pass urls=[...] or set D2L_BN_DATA_URL to a working mirror, or get "
                    "the archive yourself and pass root= / set D2L_BN_DATA to its folder.")


def fashion_mnist_files(root: Optional[os.PathLike] = None, *,
                        urls: Optional[Sequence[str]] = None,
                        cache_dir: Optional[os.PathLike] = None) -> dict[str, Path]:
    """Paths of the four archives, keyed by file name, each checked against its md5."""
    root = root or os.environ.get("D2L_BN_DATA") or None
    if root is not None:
        paths = {name: Path(root).expanduser() / name for name in FILES}
        for name, md5 in FILES.items():
            _check_local(paths[name], md5)
        return paths
    if urls is None:
        urls = os.environ.get("D2L_BN_DATA_URL", "").split() or MIRRORS
    elif isinstance(urls, str):
        urls = [urls]  # a lone string would otherwise be tried one character at a time
    folder = _cache_root(cache_dir)
    return {name: _download(name, md5, folder, urls) for name, md5 in FILES.items()}


def _parse_idx(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array in an IDX archive; its header must announce ``magic`` and ``shape``."""
    try:
        with gzip.open(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path} is not a readable gzip archive ({error}); replace it with the "
                        f"canonical archive (md5 {FILES.get(path.name, '?')}).") from error
    offset = 4 * (1 + len(shape))
    header = tuple(int.from_bytes(data[i:i + 4], "big") for i in range(0, offset, 4))
    if header != (magic, *shape) or len(data) != offset + math.prod(shape):
        raise DataError(f"{path} holds IDX header {header} and {len(data) - offset} data bytes, "
                        f"expected magic {magic} and shape {shape}; replace it with the canonical "
                        f"archive (md5 {FILES.get(path.name, '?')}).")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def _read_npy(path: Path, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing or unreadable: rebuild it
    return array if array.shape == shape and array.dtype == np.uint8 else None


def _write_npy(path: Path, array: np.ndarray) -> None:
    # Written under a unique temporary name and renamed when complete, so that no process ever
    # reads half a file.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as file:
            np.save(file, array)
        os.replace(tmp, path)
    except OSError:
        # The cache only saves time: a read-only cache folder must not stop the chapter.
        tmp.unlink(missing_ok=True)


def load_fashion_mnist(root: Optional[os.PathLike] = None, *, urls: Optional[Sequence[str]] = None,
                       cache_dir: Optional[os.PathLike] = None) -> dict[str, np.ndarray]:
    """Read-only uint8 arrays ``train_images`` (60000, 28, 28), ``train_labels`` (60000,),
    ``test_images`` (10000, 28, 28) and ``test_labels`` (10000,)."""
    paths = fashion_mnist_files(root, urls=urls, cache_dir=cache_dir)
    key = tuple(FILES.values())  # the files passed their md5 check, so these are their md5s
    if key not in _LOADED:
        arrays = {}
        for array_name, (name, magic, shape) in _ARRAYS.items():
            npy = _cache_root(cache_dir) / f"{name.split('.')[0]}-{FILES[name]}.npy"
            array = _read_npy(npy, shape)
            if array is None:
                array = _parse_idx(paths[name], magic, shape)
                _write_npy(npy, array)
            array.flags.writeable = False  # callers share these arrays: keep them intact
            arrays[array_name] = array
        _LOADED[key] = arrays
    return dict(_LOADED[key])


def images_as_batch(images: np.ndarray, index: np.ndarray, layout: str) -> np.ndarray:
    """The uint8 images at ``index`` as one float32 batch in [0, 1], in ``layout`` ("NCHW":
    (b, 1, 28, 28); "NHWC": (b, 28, 28, 1))."""
    shape = (1, 28, 28) if layout == "NCHW" else (28, 28, 1)
    return (images[index].astype(np.float32) / np.float32(255)).reshape(-1, *shape)


class Batches:
    """Minibatches of one split; every ``iter()`` starts a new epoch."""

    def __init__(self, data: "FashionMNIST", images: np.ndarray, labels: np.ndarray,
                 shuffle: bool, batch_size: int):
        self.data, self.images, self.labels, self.shuffle = data, images, labels, shuffle
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)  # the last batch may be partial

    def __iter__(self) -> Iterator:
        n = len(self.labels)
        order = self.data.rng.permutation(n) if self.shuffle else np.arange(n)
        return self._batches(order)

    def _batches(self, order: np.ndarray) -> Iterator:
        size = self.batch_size
        for start in range(0, len(order), size):
            index = order[start:start + size]
            # Converted per batch: the float32 training set would take 188 MB more memory.
            X = images_as_batch(self.images, index, self.data.layout)
            y = self.labels[index].astype(np.int64)
            yield self.data.to_tensors(X, y)


def _positive_int(name: str, value) -> int:
    """``value`` as an int, or a ValueError naming the argument ``name`` if it is not a positive
    int (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class FashionMNIST:
    """Fashion-MNIST minibatches served from memory; the official test split is the validation
    split, as in the book."""

    layout = "NCHW"  # framework modules for JAX and TensorFlow set "NHWC"

    def __init__(self, batch_size: int = 64, *, root: Optional[os.PathLike] = None, seed: int = 0,
                 urls: Optional[Sequence[str]] = None, cache_dir: Optional[os.PathLike] = None,
                 val_batch_size: Optional[int] = None):
        if self.layout not in LAYOUTS:
            raise ValueError(f"{type(self).__name__}.layout must be one of {LAYOUTS}, "
                             f"got {self.layout!r}")
        self.batch_size = _positive_int("batch_size", batch_size)
        # Prediction does not depend on the batch, so validation may use larger batches, and
        # fewer steps, than training with small ones.
        self.val_batch_size = self.batch_size if val_batch_size is None else _positive_int(
            "val_batch_size", val_batch_size)
        # One generator for all epochs: equal seeds give equal sequences of epochs.
        self.rng = np.random.default_rng(seed)
        arrays = load_fashion_mnist(root, urls=urls, cache_dir=cache_dir)
        self.train = (arrays["train_images"], arrays["train_labels"])
        self.val = (arrays["test_images"], arrays["test_labels"])
        self.num_train, self.num_val = len(self.train[1]), len(self.val[1])

    def get_dataloader(self, train: bool, *, shuffle: Optional[bool] = None) -> Batches:
        """Batches of the training or the validation split. By default the training split is
        shuffled, from ``self.rng``, anew at each ``iter()``; ``shuffle=False`` serves the stored
        order and draws nothing from ``self.rng``, so it leaves the training run's epochs as
        they would have been."""
        images, labels = self.train if train else self.val
        return Batches(self, images, labels, shuffle=train if shuffle is None else shuffle,
                       batch_size=self.batch_size if train else self.val_batch_size)

    def train_dataloader(self) -> Batches:
        return self.get_dataloader(train=True)

    def val_dataloader(self) -> Batches:
        return self.get_dataloader(train=False)

    def text_labels(self, indices: Iterable) -> list[str]:
        """Class names of label indices (ints, numpy or framework scalars)."""
        return [TEXT_LABELS[int(i)] for i in indices]

    def to_tensors(self, X: np.ndarray, y: np.ndarray):
        """Hook for framework subclasses: turn a numpy minibatch into tensors."""
        return X, y
