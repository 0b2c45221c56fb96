from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainables.datasets import (
    DatasetError,
    DigitsSpec,
    FileSpec,
    Mnist1dSpec,
    SyntheticSpec,
    load_dataset,
    resolve_file,
)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CAVIAR_DATA_DIR", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    return tmp_path


def test_digits_split_is_fixed_and_standardized_on_train_only() -> None:
    a = load_dataset(DigitsSpec(name="digits", seed=3))
    b = load_dataset(DigitsSpec(name="digits", seed=3))
    c = load_dataset(DigitsSpec(name="digits", seed=4))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_train, c.y_train)
    np.testing.assert_array_equal(a.y_test, c.y_test)  # the test split does not move with the seed
    assert a.n_classes == 10 and a.input_shape == (1, 8, 8)
    assert len(a.x_train) + len(a.x_val) + len(a.x_test) == 1797
    # fitted on train: train features have mean 0 (std 1 where not constant); validation does not exactly
    assert np.allclose(a.x_train.mean(0), 0, atol=1e-4)
    assert not np.allclose(a.x_val.mean(0), 0, atol=1e-4)
    assert np.isfinite(a.x_val).all()


def test_mnist1d_is_generated_offline_with_its_own_test_split(data_dir: Path) -> None:
    d = load_dataset(Mnist1dSpec(name="mnist1d", validation_fraction=0.2))
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (3200, 800, 1000)
    assert d.input_shape == (1, 40) and d.n_classes == 10
    assert (data_dir / "cache" / "mnist1d-v1.npz").exists()


def test_synthetic_imbalance() -> None:
    d = load_dataset(SyntheticSpec(name="synthetic", n_samples=3000, n_classes=3, imbalance=10.0))
    counts = np.bincount(np.concatenate([d.y_train, d.y_val, d.y_test]))
    assert counts[0] / counts[-1] > 5


def test_file_datasets_load_npz_csv_and_parquet(data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 4)), rng.integers(0, 3, 200)
    np.savez(data_dir / "datasets" / "a.npz", x=x, y=y)
    frame = pd.DataFrame(x, columns=list("abcd")).assign(label=np.array(["cat", "dog", "eel"])[y])
    frame.to_csv(data_dir / "datasets" / "a.csv", index=False)
    frame.to_parquet(data_dir / "datasets" / "a.parquet")
    for name in ("a.npz", "a.csv", "a.parquet"):
        d = load_dataset(FileSpec(name="file", path=name))
        assert d.n_classes == 3 and d.x_train.shape[1] == 4
        assert len(d.x_train) + len(d.x_val) + len(d.x_test) == 200


@pytest.mark.parametrize("path", ["../secret.npz", "sub/../../secret.npz", "/etc/passwd.csv", "link.npz"])
def test_file_paths_outside_the_data_directory_are_refused(data_dir: Path, path: str) -> None:
    secret = data_dir / "secret.npz"
    np.savez(secret, x=np.zeros((10, 2)), y=np.zeros(10))
    os.symlink(secret, data_dir / "datasets" / "link.npz")
    with pytest.raises(DatasetError, match=r"dataset\.path: .*(outside the data directory|absolute path)"):
        load_dataset(FileSpec(name="file", path=path))


def test_other_file_types_and_missing_files(data_dir: Path) -> None:
    with pytest.raises(DatasetError, match=r"must end in \.npz, \.csv or \.parquet"):
        resolve_file("model.pkl")
    with pytest.raises(DatasetError, match=r"no file 'missing\.csv'"):
        load_dataset(FileSpec(name="file", path="missing.csv"))


def test_the_split_is_scikit_learns_index_for_index_without_importing_it(data_dir: Path) -> None:
    """``_split`` reimplements ``train_test_split(..., stratify=y)`` (a plain shuffle when a class has one
    sample) in NumPy: the same rows on each side, in the same order, for random sizes, classes, label
    types, fractions and seeds; the digits come from the file scikit-learn ships, equal to ``load_digits``.
    Loading the built-in datasets in a fresh process (MNIST-1D generated already) imports neither
    scikit-learn nor SciPy."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from trainables.datasets import _digits, _split

    rs = np.random.RandomState(0)
    compared = refused = 0
    for _ in range(300):
        n, k = int(rs.randint(10, 400)), int(rs.randint(2, 12))
        y = rs.randint(0, k, size=n)
        if rs.rand() < 0.2:
            y[rs.randint(n)] = 99  # a class of one sample: not stratified
        labels: np.ndarray = np.array([f"c{v}" for v in y]) if rs.rand() < 0.3 else y
        x = rs.randn(n, 3)
        fraction, seed = float(rs.choice([0.1, 0.2, 0.25, 0.33, 0.5])), int(rs.randint(0, 2**32 - 1))
        stratify = labels if np.unique(labels, return_counts=True)[1].min() >= 2 else None
        try:
            theirs = train_test_split(x, labels, test_size=fraction, random_state=seed, stratify=stratify)
        except ValueError:  # a side too small to hold every class: refused by both
            with pytest.raises(ValueError):
                _split(x, labels, fraction, seed)
            refused += 1
            continue
        ours = _split(x, labels, fraction, seed)
        assert all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True)), (n, k, fraction, seed)
        compared += 1
    assert compared > 250 and refused >= 1
    digits = load_digits()
    assert np.array_equal(_digits()[:, :-1], digits.data) and np.array_equal(_digits()[:, -1].astype(int), digits.target)
    load_dataset(Mnist1dSpec(name="mnist1d"))  # generated once (the mnist1d package uses SciPy); trials read the file
    code = ("import sys; from trainables.datasets import DigitsSpec, Mnist1dSpec, load_dataset; import trainables.engine; "
            "load_dataset(DigitsSpec(name='digits')); load_dataset(Mnist1dSpec(name='mnist1d')); "
            "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, env=dict(os.environ))
    assert out.stdout.split("\n")[-2] == "[]", out.stdout + out.stderr
