"""Offline datasets, chosen by name: digits, mnist1d, synthetic and file.

Every dataset is split the same way: a test split held back (the dataset's own where it has one),
then a fixed train/validation split drawn from ``seed``; standardization is fitted on the training
split only and applied to validation and test.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

DATASET_NAMES = ("digits", "mnist1d", "synthetic", "file")
MAX_SEED = 2**32 - 1  # NumPy's and scikit-learn's random_state take seeds below 2**32
MAX_SYNTHETIC_BYTES = 2 << 30  # a generated dataset (float64 while scikit-learn builds it) fits in 2 GiB
MAX_FILE_BYTES = 1 << 30  # a file dataset is read whole into memory by every trial


def data_dir() -> Path:
    """The data directory: ``CAVIAR_DATA_DIR`` or ``~/.caviar``. User files live in ``datasets/``."""
    return Path(os.environ.get("CAVIAR_DATA_DIR") or Path.home() / ".caviar").expanduser()


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Share of the training data held out for validation.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the train/validation split (and of generated data).")


class DigitsSpec(_Spec):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

    name: Literal["digits"]
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


class Mnist1dSpec(_Spec):
    """MNIST-1D, generated locally by the ``mnist1d`` package: 4,000 train / 1,000 test signals of length 40."""

    name: Literal["mnist1d"]


class SyntheticSpec(_Spec):
    """scikit-learn's make_classification; ``imbalance`` is the majority/minority class size ratio."""

    name: Literal["synthetic"]
    n_samples: int = Field(2000, ge=50, le=1_000_000)
    n_features: int = Field(20, ge=2, le=10_000)
    n_informative: int = Field(10, ge=1, le=10_000)
    n_classes: int = Field(3, ge=2, le=100)
    imbalance: float = Field(1.0, ge=1.0, le=1000.0)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)

    # each rule on the field it names (fields are validated in declaration order)
    @field_validator("n_features")
    @classmethod
    def _fits_in_memory(cls, n_features: int, info: ValidationInfo) -> int:
        size = int(info.data.get("n_samples", 0)) * n_features * 8
        if size > MAX_SYNTHETIC_BYTES:
            raise ValueError(f"n_samples x n_features is {size / 2**30:.1f} GiB as float64; the limit is {MAX_SYNTHETIC_BYTES / 2**30:g} GiB")
        return n_features

    @field_validator("n_informative")
    @classmethod
    def _informative(cls, n_informative: int, info: ValidationInfo) -> int:
        n_features = info.data.get("n_features")
        if n_features is not None and n_informative > n_features:
            raise ValueError(f"n_informative ({n_informative}) must be <= n_features ({n_features})")
        return n_informative

    @field_validator("n_classes")
    @classmethod
    def _separable(cls, n_classes: int, info: ValidationInfo) -> int:
        n_informative = info.data.get("n_informative")
        if n_informative is not None and n_classes * 2 > 2**n_informative:
            raise ValueError(f"{n_classes} classes need n_informative >= {(n_classes * 2 - 1).bit_length()} "
                             "(make_classification puts 2 clusters per class on the hypercube's corners)")
        return n_classes


class FileSpec(_Spec):
    """A .npz (arrays ``x``, ``y`` and optionally ``x_test``, ``y_test``), .csv or .parquet file
    under ``<data dir>/datasets``; tables carry the label in the column that ``target`` names
    (``label`` unless set)."""

    name: Literal["file"]
    path: str = Field(min_length=1, max_length=512, description="Relative to <data dir>/datasets.")
    target: str = Field("label", min_length=1, max_length=128, description="The label column of a .csv or .parquet table.")
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)


DatasetSpec = Annotated[DigitsSpec | Mnist1dSpec | SyntheticSpec | FileSpec, Field(discriminator="name")]


@dataclass(frozen=True)
class Dataset:
    """Standardized float32 arrays; ``input_shape`` is the per-sample shape for conv nets."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    input_shape: tuple[int, ...]


class DatasetError(ValueError):
    pass


def resolve_file(path: str, root: Path | None = None) -> Path:
    """Resolve ``path`` inside ``<data dir>/datasets``; refuse anything that lands outside it."""
    base = ((root or data_dir()) / "datasets").resolve()
    if "\x00" in path:
        raise DatasetError("dataset.path: must not contain a NUL character")
    if any(len(part.encode()) > 255 for part in Path(path).parts):
        raise DatasetError("dataset.path: each name in the path must be at most 255 bytes")
    if Path(path).is_absolute():
        raise DatasetError(f"dataset.path: must be relative to the data directory, got an absolute path '{path}'")
    try:
        target = (base / path).resolve()  # resolves symlinks too
    except (OSError, ValueError, RuntimeError) as exc:  # a symlink loop, a name the filesystem refuses
        raise DatasetError(f"dataset.path: cannot resolve '{path}': {type(exc).__name__}") from None
    if not target.is_relative_to(base):
        raise DatasetError(f"dataset.path: '{path}' resolves outside the data directory")
    if target.suffix not in (".npz", ".csv", ".parquet"):
        raise DatasetError(f"dataset.path: '{path}' must end in .npz, .csv or .parquet")
    return target


def check_file(spec: FileSpec, root: Path, max_bytes: int = MAX_FILE_BYTES) -> None:
    """What can be known of a file dataset before any trial runs: the file exists under
    ``<root>/datasets`` and holds its label (a table's ``target`` column, a .npz's ``x`` and ``y``).
    Reads the header and the first rows (a table) or the arrays (a .npz, within ``max_bytes``).
    Raises DatasetError naming the field."""
    path = resolve_file(spec.path, root=root)
    if not path.is_file():
        raise DatasetError(f"dataset.path: no file '{spec.path}' under {root / 'datasets'}")
    size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"dataset.path: {path.name} has {size / 2**20:.0f} MiB; the limit is {max_bytes / 2**20:.0f} MiB "
                           "(every trial reads the whole file into memory)")
    try:
        if path.suffix == ".npz":
            _check_npz(path)
            return
        import pandas as pd

        if path.suffix == ".csv":
            frame = pd.read_csv(path, nrows=200)
        else:  # the first rows only, not the whole file
            import pyarrow.parquet as pq

            frame = next(pq.ParquetFile(path).iter_batches(batch_size=200)).to_pandas()
        columns = [str(c) for c in frame.columns]
    except DatasetError:
        raise
    except Exception as exc:  # unreadable: a malformed or pickled file, not ours to diagnose further
        raise DatasetError(f"dataset.path: cannot read {path.name}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if spec.target not in columns:
        shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
        raise DatasetError(f"dataset.target: column '{spec.target}' is not in {path.name} (its columns: {shown})")
    if frame.empty:
        raise DatasetError(f"dataset.path: {path.name} has a header but no rows")
    text = [str(c) for c in frame.columns if str(c) != spec.target and frame[c].dtype.kind not in "biuf"]
    if text:
        raise DatasetError(f"dataset.path: the feature columns of {path.name} must be numeric; not numeric: {', '.join(text[:10])}")


def _check_npz(path: Path) -> None:
    """The arrays of a .npz from their headers only (nothing is loaded or unpickled): x and y exist,
    are numeric (y may also be strings), x has a sample axis and a feature axis, and x and y (and
    x_test and y_test) have as many samples."""
    import zipfile

    shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            name = member.removesuffix(".npy")
            with archive.open(member) as fp:
                major, _minor = np.lib.format.read_magic(fp)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(fp)  # what np.load reads first: no data, no pickle
            shapes[name] = (tuple(shape), dtype)
    missing = [k for k in ("x", "y") if k not in shapes]
    if missing:
        raise DatasetError(f"dataset.path: a .npz needs arrays 'x' and 'y'; {path.name} lacks {', '.join(missing)}")
    for name, (shape, dtype) in shapes.items():
        if name not in ("x", "y", "x_test", "y_test"):
            continue
        allowed = "biuf" if name.startswith("x") else "biufUS"
        if dtype.kind not in allowed:
            raise DatasetError(f"dataset.path: the array '{name}' of {path.name} must be {'numeric' if allowed == 'biuf' else 'numbers or strings'}, not {dtype}")
        if name.startswith("x") and len(shape) < 2:
            raise DatasetError(f"dataset.path: the array '{name}' of {path.name} needs a sample and a feature axis, not shape {shape}")
    for x, y in (("x", "y"), ("x_test", "y_test")):
        if x in shapes and y in shapes and shapes[x][0][0] != shapes[y][0][0]:
            raise DatasetError(f"dataset.path: '{x}' has {shapes[x][0][0]} samples and '{y}' {shapes[y][0][0]} in {path.name}")


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """``x_train, x_test, y_train, y_test``: scikit-learn's ``train_test_split(x, y, test_size=fraction,
    random_state=seed, stratify=y)`` (stratified when every class has two samples or more, else a plain
    shuffle), index for index, in NumPy alone. scikit-learn's import (SciPy's stats with it) costs each
    trial process and driver about 1.5 s of CPU and 70 MB; tests/trainables/test_datasets.py checks
    the two agree."""
    n = len(y)
    n_test = math.ceil(fraction * n)
    n_train = n - n_test
    rng = np.random.RandomState(seed)
    classes, y_indices, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2:  # a class of one: ShuffleSplit
        perm = rng.permutation(n)
        train, test = perm[n_test:n_test + n_train], perm[:n_test]
    else:  # StratifiedShuffleSplit
        if n_train < len(classes) or n_test < len(classes):
            raise ValueError(f"a split of {n} samples into {n_train} and {n_test} cannot hold each of the {len(classes)} classes")
        by_class = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(counts)[:-1])
        n_i = _approximate_mode(counts, n_train, rng)
        t_i = _approximate_mode(counts - n_i, n_test, rng)
        train_l: list[int] = []
        test_l: list[int] = []
        for i in range(len(classes)):
            members = by_class[i].take(rng.permutation(counts[i]), mode="clip")
            train_l.extend(members[:n_i[i]])
            test_l.extend(members[n_i[i]:n_i[i] + t_i[i]])
        train, test = rng.permutation(train_l), rng.permutation(test_l)
    return x[train], x[test], y[train], y[test]


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's ``utils.extmath._approximate_mode``: per-class draws proportional to the class
    sizes, the remainder given to the largest fractional parts, ties broken by ``rng``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need -= add_now
            if need == 0:
                break
    draws: np.ndarray = floored.astype(int)
    return draws


def _digits() -> np.ndarray:
    """scikit-learn's digits (``load_digits``: 1,797 rows of 64 pixels and the label), read from the
    file scikit-learn ships without importing scikit-learn (see ``_split``)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package; runs none of it
    if spec is None or spec.origin is None:
        raise DatasetError("dataset.name: 'digits' needs scikit-learn installed")
    table: np.ndarray = np.loadtxt(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", delimiter=",")
    return table


def _mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate MNIST-1D once (about 3 s) and cache it under the data directory."""
    cache = data_dir() / "cache" / "mnist1d-v1.npz"
    if not cache.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        state = np.random.get_state()  # make_dataset reseeds NumPy's global generator
        try:
            d = make_dataset(get_dataset_args())
        finally:
            np.random.set_state(state)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, x=d["x"], y=d["y"], x_test=d["x_test"], y_test=d["y_test"])
        os.replace(tmp.name, cache)  # atomic: concurrent trials never read half a file
    with np.load(cache) as f:
        return f["x"], f["y"], f["x_test"], f["y_test"]


def _read_file(spec: FileSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    path = resolve_file(spec.path)
    if not path.is_file():
        raise DatasetError(f"dataset.path: no file '{spec.path}' in the data directory")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:  # never unpickle user files
            if "x" not in f or "y" not in f:
                raise DatasetError("dataset.path: a .npz needs arrays 'x' and 'y'")
            xt = f["x_test"] if "x_test" in f else None
            yt = f["y_test"] if "y_test" in f else None
            return f["x"], f["y"], xt, yt
    import pandas as pd

    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    if spec.target not in frame.columns:
        raise DatasetError(f"dataset.target: column '{spec.target}' not in {path.name}")
    y = frame.pop(spec.target).to_numpy()
    return frame.to_numpy(dtype=np.float32), y, None, None


def _encode_labels(y: np.ndarray, y_test: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Map any label values (strings, sparse ints) onto 0..n_classes-1."""
    classes = np.unique(np.concatenate([y, y_test]))
    return np.searchsorted(classes, y).astype(np.int64), np.searchsorted(classes, y_test).astype(np.int64), len(classes)


def load_dataset(spec: DigitsSpec | Mnist1dSpec | SyntheticSpec | FileSpec) -> Dataset:
    """Load, split and standardize a dataset. Deterministic for a given spec."""
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    input_shape: tuple[int, ...] | None = None
    if isinstance(spec, DigitsSpec):
        digits = _digits()
        x, x_test, y, y_test = _split(digits[:, :-1], digits[:, -1].astype(int), spec.test_fraction, 12345)
        input_shape = (1, 8, 8)
    elif isinstance(spec, Mnist1dSpec):
        x, y, x_test, y_test = _mnist1d_arrays()
        input_shape = (1, x.shape[1])
    elif isinstance(spec, SyntheticSpec):
        from sklearn.datasets import make_classification

        if spec.n_informative > spec.n_features:
            raise DatasetError("dataset.n_informative: must be <= n_features")
        # class sizes fall geometrically from the majority to the minority class
        ratios = np.geomspace(1.0, 1.0 / spec.imbalance, spec.n_classes)
        x, y = make_classification(
            n_samples=spec.n_samples, n_features=spec.n_features, n_informative=spec.n_informative,
            n_redundant=0, n_classes=spec.n_classes, weights=list(ratios / ratios.sum()),
            random_state=spec.seed, flip_y=0.01,
        )
        x, x_test, y, y_test = _split(x, y, spec.test_fraction, (spec.seed + 1) % 2**32)
    else:
        x, y, x_test, y_test = _read_file(spec)
        if x_test is None or y_test is None:
            x, x_test, y, y_test = _split(x, y, spec.test_fraction, (spec.seed + 1) % 2**32)
    y, y_test, n_classes = _encode_labels(np.asarray(y), np.asarray(y_test))
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    x_test = np.asarray(x_test, dtype=np.float32).reshape(len(x_test), -1)
    x_train, x_val, y_train, y_val = _split(x, y, spec.validation_fraction, spec.seed)
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std < 1e-8] = 1.0  # constant features (digits' border pixels) stay zero, not NaN
    norm = lambda a: ((a - mean) / std).astype(np.float32)  # noqa: E731
    return Dataset(
        norm(x_train), y_train, norm(x_val), y_val, norm(x_test), y_test,
        n_classes=n_classes, input_shape=input_shape or (1, x.shape[1]),
    )
