"""Tests of d2l_bn.data, all offline: local archives, and downloads from a server on 127.0.0.1."""

import functools
import gzip
import hashlib
import http.server
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from d2l_bn import data
from d2l_bn.data import FILES, DataError, FashionMNIST

LABELS = "train-labels-idx1-ubyte.gz"  # the small archive that the failure tests break


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No test may see the caller's settings, reach a proxy or write to ~/.cache."""
    for name in ("D2L_BN_DATA", "D2L_BN_DATA_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("D2L_BN_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def arrays(fashion_mnist_root, cache):
    return data.load_fashion_mnist(fashion_mnist_root, cache_dir=cache)


@pytest.fixture(scope="module")
def fm(fashion_mnist_root, cache):
    return FashionMNIST(batch_size=128, root=fashion_mnist_root, cache_dir=cache)


class NHWC(FashionMNIST):
    layout = "NHWC"


# --- local folder (root=) ------------------------------------------------------------------------

def broken(good: bytes, how: str) -> bytes:
    if how == "corrupt":
        return good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    return good[: len(good) // 2]


def broken_copy(root: Path, tmp_path: Path, how: str) -> Path:
    """A folder like ``root`` whose LABELS archive is corrupt, truncated or missing."""
    folder = tmp_path / "archives"
    folder.mkdir()
    for name in FILES:
        if name != LABELS:
            (folder / name).symlink_to(root / name)  # only read, so links save copying
    if how != "missing":
        (folder / LABELS).write_bytes(broken((root / LABELS).read_bytes(), how))
    return folder


def test_constants_match_the_published_md5s(fashion_mnist_root):
    published = dict(line.split()[::-1] for line in (fashion_mnist_root / "MD5SUMS").open())
    assert FILES == published
    assert data.MIRRORS[0] == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert data.MIRRORS[1].startswith("https://github.com/zalandoresearch/fashion-mnist/")
    assert data.TEXT_LABELS == ('t-shirt', 'trouser', 'pullover', 'dress', 'coat',
                                'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot')


def test_root_passes_the_md5_check(fashion_mnist_root):
    paths = data.fashion_mnist_files(fashion_mnist_root)
    assert paths == {name: fashion_mnist_root / name for name in FILES}


def test_root_from_the_environment(fashion_mnist_root, monkeypatch):
    monkeypatch.setenv("D2L_BN_DATA", str(fashion_mnist_root))
    monkeypatch.setenv("D2L_BN_DATA_URL", "http://127.0.0.1:9/")  # a download would fail
    assert data.fashion_mnist_files()[LABELS] == fashion_mnist_root / LABELS


@pytest.mark.parametrize("how", ["corrupt", "truncated", "missing"])
def test_bad_file_in_root_raises(fashion_mnist_root, tmp_path, monkeypatch, how):
    folder = broken_copy(fashion_mnist_root, tmp_path, how)
    monkeypatch.setenv("D2L_BN_DATA", str(folder))
    with pytest.raises(DataError) as error:
        data.fashion_mnist_files()
    message = str(error.value)
    assert str(folder / LABELS) in message and FILES[LABELS] in message
    if how != "missing":
        assert hashlib.md5((folder / LABELS).read_bytes()).hexdigest() in message
    assert "D2L_BN_DATA" in message and "root=None" in message


# --- downloads -----------------------------------------------------------------------------------

class Handler(http.server.SimpleHTTPRequestHandler):
    timeout = 10  # a stuck client cannot hold the test server

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(fashion_mnist_root, tmp_path_factory):
    """(server, base URL, folder served) of a local HTTP server with folders good/ (the real
    archives), and truncated/ and corrupt/ (a broken LABELS archive only)."""
    site = tmp_path_factory.mktemp("site")
    (site / "good").mkdir()
    for name in FILES:
        (site / "good" / name).symlink_to(fashion_mnist_root / name)
    for how in ("truncated", "corrupt"):
        (site / how).mkdir()
        (site / how / LABELS).write_bytes(broken((fashion_mnist_root / LABELS).read_bytes(), how))
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/", site
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def cached_all_but(root: Path, cache_dir: Path, missing: str = LABELS) -> Path:
    """Put verified copies of the other archives in the download folder; returns that folder."""
    folder = cache_dir / "fashion-mnist"
    folder.mkdir(parents=True)
    for name in FILES:
        if name != missing:
            shutil.copy(root / name, folder / name)
    return folder


def test_download_all_four(server, tmp_path):
    httpd, base, _ = server
    paths = data.fashion_mnist_files(urls=[base + "good/"], cache_dir=tmp_path)
    assert set(paths) == set(FILES)
    for name, path in paths.items():
        assert path == tmp_path / "fashion-mnist" / name
        assert hashlib.md5(path.read_bytes()).hexdigest() == FILES[name]
    assert {"/good/" + name for name in FILES} <= set(httpd.requests)


@pytest.mark.parametrize("stale", [False, True], ids=["not-cached", "stale-cached"])
@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_bad_download_raises_and_keeps_nothing(fashion_mnist_root, server, tmp_path, how, stale):
    _, base, site = server
    folder = cached_all_but(fashion_mnist_root, tmp_path)
    if stale:
        (folder / LABELS).write_bytes(b"a stale, bad copy")
    with pytest.raises(DataError) as error:
        # (a base URL without its final slash works too)
        data.fashion_mnist_files(urls=[base + how, base + "absent/"], cache_dir=tmp_path)
    message = str(error.value)
    assert str(folder / LABELS) in message and FILES[LABELS] in message
    sent = hashlib.md5((site / how / LABELS).read_bytes()).hexdigest()
    assert sent in message  # the md5 of what the mirror sent
    assert f"{base}{how}/{LABELS}" in message and f"{base}absent/{LABELS}" in message
    assert "404" in message
    assert sorted(p.name for p in folder.iterdir()) == sorted(set(FILES) - {LABELS})


def test_second_mirror_used_when_first_fails(fashion_mnist_root, server, tmp_path):
    _, base, _ = server
    folder = cached_all_but(fashion_mnist_root, tmp_path)
    paths = data.fashion_mnist_files(urls=[base + "corrupt/", base + "good/"], cache_dir=tmp_path)
    assert hashlib.md5(paths[LABELS].read_bytes()).hexdigest() == FILES[LABELS]
    assert paths[LABELS] == folder / LABELS


def test_corrupt_cached_file_is_fetched_again(fashion_mnist_root, server, tmp_path, monkeypatch):
    httpd, base, _ = server
    folder = cached_all_but(fashion_mnist_root, tmp_path, missing="")
    (folder / LABELS).write_bytes(b"not an archive")
    monkeypatch.setenv("D2L_BN_DATA_URL", base + "good/")  # the mirrors, from the environment
    monkeypatch.setenv("D2L_BN_CACHE", str(tmp_path))      # and the cache folder too
    before = len(httpd.requests)
    paths = data.fashion_mnist_files()
    assert paths[LABELS] == folder / LABELS
    assert hashlib.md5(paths[LABELS].read_bytes()).hexdigest() == FILES[LABELS]
    assert httpd.requests[before:] == ["/good/" + LABELS]  # the verified files were kept


# --- parsing and caching -------------------------------------------------------------------------

def test_arrays(arrays):
    shapes = {"train_images": (60000, 28, 28), "train_labels": (60000,),
              "test_images": (10000, 28, 28), "test_labels": (10000,)}
    assert {key: value.shape for key, value in arrays.items()} == shapes
    for key, value in arrays.items():
        assert value.dtype == np.uint8 and not value.flags.writeable
        with pytest.raises(ValueError):
            value[0] = 1
    for key in ("train_labels", "test_labels"):
        assert set(np.unique(arrays[key])) == set(range(10))
    assert arrays["train_images"].max() == 255 and arrays["train_images"].min() == 0


def idx_archive(path: Path, header: tuple, size: int) -> Path:
    path.write_bytes(gzip.compress(b"".join(x.to_bytes(4, "big") for x in header) + bytes(size)))
    return path


@pytest.mark.parametrize("header, size", [((2051, 10), 10),   # wrong magic number
                                          ((2049, 11), 10),   # wrong count
                                          ((2049, 10), 9)])   # data too short
def test_bad_idx_archive_raises(tmp_path, header, size):
    good = idx_archive(tmp_path / "good.gz", (2049, 10), 10)
    assert np.array_equal(data._parse_idx(good, 2049, (10,)), np.zeros(10, np.uint8))
    with pytest.raises(DataError, match="bad.gz"):
        data._parse_idx(idx_archive(tmp_path / "bad.gz", header, size), 2049, (10,))


def test_second_load_is_cached_in_memory(arrays, fashion_mnist_root, cache):
    start = time.perf_counter()
    again = data.load_fashion_mnist(fashion_mnist_root, cache_dir=cache)
    assert time.perf_counter() - start < 0.5  # only the md5 checks
    assert all(again[key] is arrays[key] for key in arrays)


def test_fresh_load_reads_the_npy_cache(arrays, fashion_mnist_root, cache, monkeypatch):
    monkeypatch.setattr(data, "_LOADED", {})
    monkeypatch.setattr(data, "_parse_idx", lambda *args: pytest.fail("parsed again"))
    again = data.load_fashion_mnist(fashion_mnist_root, cache_dir=cache)
    assert all(np.array_equal(again[key], arrays[key]) for key in arrays)
    assert not any(value.flags.writeable for value in again.values())


def test_npy_cache_is_fast_in_a_new_process(arrays, fashion_mnist_root, cache):
    code = ("import time; from d2l_bn import data; t = time.perf_counter(); "
            f"data.load_fashion_mnist({str(fashion_mnist_root)!r}, cache_dir={str(cache)!r}); "
            "print(time.perf_counter() - t)")
    seconds = float(subprocess.run([sys.executable, "-c", code], check=True,
                                   capture_output=True, text=True).stdout)
    assert seconds < 1.0


def test_bad_npy_cache_is_rebuilt(arrays, fashion_mnist_root, cache, tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    shutil.copytree(cache / "fashion-mnist", folder)
    garbage, wrong_shape = (folder / f"{name[:-3]}-{FILES[name]}.npy"
                            for name in (LABELS, "t10k-labels-idx1-ubyte.gz"))
    garbage.write_bytes(b"\x93NUMPY garbage")
    np.save(wrong_shape, np.zeros(3, np.uint8))
    parsed = []
    parse = data._parse_idx
    monkeypatch.setattr(data, "_parse_idx", lambda path, *a: parsed.append(path.name) or
                        parse(path, *a))
    monkeypatch.setattr(data, "_LOADED", {})
    again = data.load_fashion_mnist(fashion_mnist_root, cache_dir=tmp_path)
    assert sorted(parsed) == ["t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert all(np.array_equal(again[key], arrays[key]) for key in arrays)
    assert np.array_equal(np.load(garbage), arrays["train_labels"])
    assert np.array_equal(np.load(wrong_shape), arrays["test_labels"])
    assert not list(folder.glob("*.tmp"))


# --- minibatches ---------------------------------------------------------------------------------

def epoch(loader):
    return np.concatenate([y for _, y in loader])


def test_batches(fm):
    assert (fm.num_train, fm.num_val) == (60000, 10000)
    train, val = fm.train_dataloader(), fm.val_dataloader()
    assert (len(train), len(val)) == (469, 79)
    sizes = [len(y) for _, y in train]
    assert sizes == [128] * 468 + [60000 - 468 * 128]  # the last, partial batch is kept
    assert [len(y) for _, y in val][-1] == 10000 - 78 * 128
    assert len([len(y) for _, y in train]) == 469  # re-iterable
    X, y = next(iter(train))
    assert X.shape == (128, 1, 28, 28) and X.dtype == np.float32
    assert y.shape == (128,) and y.dtype == np.int64
    assert 0 <= X.min() and X.max() <= 1 and 0 <= y.min() and y.max() <= 9


def test_val_batches_are_the_test_split_in_order(fm, arrays):
    X = np.concatenate([X for X, _ in fm.val_dataloader()])
    assert np.array_equal(X[:, 0] * 255, arrays["test_images"])
    assert np.array_equal(epoch(fm.val_dataloader()), arrays["test_labels"])
    assert np.array_equal(epoch(fm.val_dataloader()), arrays["test_labels"])


def test_validation_batch_size_is_its_own(fashion_mnist_root, cache, fm):
    data = FashionMNIST(2, root=fashion_mnist_root, cache_dir=cache, val_batch_size=3000)
    assert {len(y) for _, y in data.train_dataloader()} == {2}
    assert [len(y) for _, y in data.val_dataloader()] == [3000, 3000, 3000, 1000]
    assert np.array_equal(epoch(data.val_dataloader()), epoch(fm.val_dataloader()))
    assert len(data.val_dataloader()) == 4 and len(data.train_dataloader()) == 30000


def test_nhwc_layout_has_the_same_pixels(fashion_mnist_root, cache, fm):
    nhwc = NHWC(batch_size=128, root=fashion_mnist_root, cache_dir=cache)
    X_nhwc, y_nhwc = next(iter(nhwc.val_dataloader()))
    X_nchw, y_nchw = next(iter(fm.val_dataloader()))
    assert X_nhwc.shape == (128, 28, 28, 1)
    assert np.array_equal(X_nhwc, X_nchw.transpose(0, 2, 3, 1))
    assert np.array_equal(y_nhwc, y_nchw)


def test_shuffling_is_seeded(fashion_mnist_root, cache, arrays):
    def two_epochs(seed):
        loader = FashionMNIST(1000, root=fashion_mnist_root, cache_dir=cache,
                              seed=seed).train_dataloader()
        return epoch(loader), epoch(loader)

    first, second = two_epochs(0)
    assert not np.array_equal(first, second)                   # a new order every epoch
    assert np.array_equal(np.sort(first), np.sort(arrays["train_labels"]))  # each image once
    assert not np.array_equal(first, arrays["train_labels"])   # and shuffled
    again = two_epochs(0)
    assert np.array_equal(again[0], first) and np.array_equal(again[1], second)
    assert not np.array_equal(two_epochs(1)[0], first)


def test_unshuffled_training_batches_leave_the_epochs_as_they_were(fashion_mnist_root, cache,
                                                                   arrays):
    def first_two_epochs(extra_pass):
        data = FashionMNIST(1000, root=fashion_mnist_root, cache_dir=cache, seed=0)
        first = epoch(data.train_dataloader())
        if extra_pass:  # e.g. recomputing statistics between epochs
            stored = epoch(data.get_dataloader(train=True, shuffle=False))
            assert np.array_equal(stored, arrays["train_labels"])
        return first, epoch(data.train_dataloader())

    assert all(np.array_equal(a, b) for a, b in zip(first_two_epochs(False),
                                                     first_two_epochs(True)))
    data = FashionMNIST(1000, root=fashion_mnist_root, cache_dir=cache, seed=0)
    assert not np.array_equal(epoch(data.get_dataloader(train=False, shuffle=True)),
                              arrays["test_labels"])


def test_to_tensors_hook_converts_every_batch(fashion_mnist_root, cache):
    class Tagged(FashionMNIST):
        def to_tensors(self, X, y):
            return ("tensor", X.shape), ("tensor", y.shape)

    batches = list(Tagged(5000, root=fashion_mnist_root, cache_dir=cache).val_dataloader())
    assert batches == [(("tensor", (5000, 1, 28, 28)), ("tensor", (5000,)))] * 2


def test_text_labels(fm):
    assert fm.text_labels([0, 9, np.int64(3)]) == ["t-shirt", "ankle boot", "dress"]


def test_training_epoch_is_fast(fm):
    loader = fm.train_dataloader()
    start = time.perf_counter()
    count = sum(len(y) for _, y in loader)
    assert count == 60000 and time.perf_counter() - start < 1.0


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "64"])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        FashionMNIST(batch_size, root="/nonexistent")  # checked before any data is read


@pytest.mark.parametrize("val_batch_size", [0, 2.5, False])
def test_bad_validation_batch_size(val_batch_size):
    with pytest.raises(ValueError, match="val_batch_size must be a positive int"):
        FashionMNIST(64, root="/nonexistent", val_batch_size=val_batch_size)


def test_bad_layout():
    class Wrong(FashionMNIST):
        layout = "NWHC"

    with pytest.raises(ValueError, match="layout must be one of"):
        Wrong(root="/nonexistent")
