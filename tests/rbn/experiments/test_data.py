import gzip

import numpy as np
import pytest

from rbn.experiments import data


def test_reads_the_real_dataset():
    train, test = data.load_split("train"), data.load_split("test")  # ./run.sh test installs the package
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28) and test.labels.shape == (10000,)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    x = train.images / 255.0
    assert abs(x.mean() - data.MEAN) < 1e-3 and abs(x.std() - data.STD) < 1e-3


def write_idx(path, array, dtype_code=0x08, gz=True):
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def test_round_trip_plain_and_gzip(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    write_idx(tmp_path / "b", a, gz=False)
    assert np.array_equal(data.read_idx(tmp_path / "a.gz"), a)
    assert np.array_equal(data.read_idx(tmp_path / "b"), a)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "bad magic"),
        (b"garbage garbage garbage", "bad magic"),
        (bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big"), "truncated IDX header"),
        (bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"abc", "header promises 10"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path, payload, message):
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(data.DatasetError, match=message):
        data.read_idx(path)


def test_truncated_gzip_is_a_clear_error(tmp_path):
    write_idx(tmp_path / "t.gz", np.zeros((100, 28, 28), np.uint8))
    (tmp_path / "t.gz").write_bytes((tmp_path / "t.gz").read_bytes()[:40])
    with pytest.raises(data.DatasetError, match="cannot read IDX file"):
        data.read_idx(tmp_path / "t.gz")


def test_missing_dataset_names_the_package(tmp_path):
    with pytest.raises(data.DatasetError, match="apt-get install dataset-fashion-mnist"):
        data.load_split("train", tmp_path)
