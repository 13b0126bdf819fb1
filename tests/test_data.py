"""Datasets: the embedded digits, the 2-D mixtures, MNIST-format files, and every way a file can be bad."""
import gzip
import struct

import numpy as np
import pytest

from gan_engine import GanEngineError, load_dataset
from gan_engine.data import read_idx


def write_idx(path, array, compress=False):
    """The IDX format written out by hand: 0, 0, type 0x08, ndim, big-endian dims, bytes."""
    raw = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw += array.astype(np.uint8).tobytes()
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(raw)


def test_digits_is_embedded_and_scaled():
    d = load_dataset("digits")
    assert d.x.shape == (1797, 64) and d.x.dtype == np.float32
    assert d.x.min() == -1.0 and d.x.max() == 1.0
    assert d.image_shape == (1, 8, 8) and sorted(set(d.labels.tolist())) == list(range(10))


@pytest.mark.parametrize("name, k, sigma", [("ring8", 8, 0.01), ("grid25", 25, 0.05)])
def test_mixtures_have_the_protocol_parameters(name, k, sigma):
    d = load_dataset(name)
    assert d.modes.shape == (k, 2) and d.sigma == sigma and d.image_shape is None and d.output == "identity"
    offsets = d.x - d.modes[d.labels]
    assert abs(offsets.std() - sigma) < 0.05 * sigma
    assert len(set(d.labels.tolist())) == k
    if name == "ring8":
        assert np.allclose(np.linalg.norm(d.modes, axis=1), 1.0)
    else:
        assert sorted(set(d.modes[:, 0].tolist())) == [-4, -2, 0, 2, 4]


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_from_an_idx_folder(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    suffix = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(5), compress)
    d = load_dataset("fashion-mnist", str(tmp_path))
    assert d.x.shape == (5, 784) and d.image_shape == (1, 28, 28)
    assert np.allclose(d.x, images.reshape(5, -1) / 127.5 - 1, atol=1e-6)
    assert d.labels.tolist() == [0, 1, 2, 3, 4]


def test_mnist_from_one_idx_file_and_from_npz(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28))
    write_idx(tmp_path / "imgs.idx", images)
    assert load_dataset("mnist", str(tmp_path / "imgs.idx")).x.shape == (3, 784)
    np.savez(tmp_path / "m.npz", x_train=images.astype(np.uint8), y_train=np.array([1, 2, 3]))
    d = load_dataset("mnist", str(tmp_path / "m.npz"))
    assert d.x.shape == (3, 784) and d.labels.tolist() == [1, 2, 3]
    np.savez(tmp_path / "f.npz", x_train=images.reshape(3, 784) / 255.0)
    assert np.allclose(load_dataset("mnist", str(tmp_path / "f.npz")).x, d.x, atol=1e-6)


def test_bad_files(tmp_path):
    with pytest.raises(GanEngineError, match="pass --data PATH"):
        load_dataset("mnist")
    with pytest.raises(GanEngineError, match="does not exist"):
        load_dataset("mnist", str(tmp_path / "nope"))
    with pytest.raises(GanEngineError, match="no train-images-idx3-ubyte"):
        load_dataset("mnist", str(tmp_path))
    images = np.zeros((4, 28, 28))
    write_idx(tmp_path / "t.idx", images)
    raw = (tmp_path / "t.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(raw[:-10])
    with pytest.raises(GanEngineError, match="truncated or corrupt"):
        read_idx(str(tmp_path / "t.idx"))
    (tmp_path / "junk.idx").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(GanEngineError, match="bad magic number"):
        load_dataset("mnist", str(tmp_path / "junk.idx"))
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(GanEngineError, match="cannot read IDX file"):
        read_idx(str(tmp_path / "bad.gz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(GanEngineError, match="not a readable .npz"):
        load_dataset("mnist", str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 28, 28)))
    with pytest.raises(GanEngineError, match="no array named x_train"):
        load_dataset("mnist", str(tmp_path / "other.npz"))


def test_bad_values(tmp_path):
    nan = np.zeros((2, 28, 28))
    nan[1, 3, 3] = np.nan
    np.savez(tmp_path / "nan.npz", x_train=nan)
    with pytest.raises(GanEngineError, match="NaN or infinite"):
        load_dataset("mnist", str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "range.npz", x_train=np.full((2, 28, 28), 3.0))
    with pytest.raises(GanEngineError, match=r"\[0, 1\] or \[-1, 1\]"):
        load_dataset("mnist", str(tmp_path / "range.npz"))
    np.savez(tmp_path / "flat.npz", x_train=np.zeros((2, 30)))
    with pytest.raises(GanEngineError, match="not square"):
        load_dataset("mnist", str(tmp_path / "flat.npz"))


def test_unknown_dataset_and_needless_path():
    with pytest.raises(GanEngineError, match="unknown dataset 'cifar'; choose one of: digits"):
        load_dataset("cifar")
    with pytest.raises(GanEngineError, match="built in"):
        load_dataset("digits", "some/path")
