"""The HDF5 shard schema: the one place that knows key names, dtypes and shapes.

Padded layout (MLPerf v1.0; docs/mlperf.md, "The shards"), N rows:
    input_ids            (N, T)  i4   token ids, 0 after the real tokens
    input_mask           (N, T)  i1   1 on real tokens
    segment_ids          (N, T)  i1   0 = segment A (and padding), 1 = segment B
    masked_lm_positions  (N, P)  i4   ascending positions of the masked tokens, 0-padded
    masked_lm_ids        (N, P)  i4   original ids there, 0-padded
    next_sentence_labels (N,)    i1   1 = random next, 0 = is next
Variable-length layout (NVIDIA's later rounds, DeepSparkHub's varlength shards): no input_mask; rows keep only real tokens and real
masked slots, as vlen int16 (ids, positions) / vlen int8 (segments); next_sentence_labels i1.

Reading accepts exactly these dtypes (NVIDIA's create_pretraining_data.py writes the padded ones) and
only data stored in the file itself: external links, soft links, external storage and virtual
datasets are refused, as they make the reader open other files. Data are stored as NVIDIA and this
project write them, unfiltered, and whole: a compressed dataset (gzip, lzf, ...) or one whose storage
holds fewer bytes than its shape declares is refused before it is read, so what a read allocates is
bounded by the file's own bytes (a 10 MB gzip shard could declare 3 million rows).

Files are written to a temporary name in the same folder and renamed when complete, so a file
with the final name is always whole.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from bert_pretrain.atomic import atomic_path
from bert_pretrain.errors import InputError, SettingsMismatch
from bert_pretrain.regular_file import require_regular

PADDED_DTYPES = {
    "input_ids": np.dtype("i4"),
    "input_mask": np.dtype("i1"),
    "segment_ids": np.dtype("i1"),
    "masked_lm_positions": np.dtype("i4"),
    "masked_lm_ids": np.dtype("i4"),
    "next_sentence_labels": np.dtype("i1"),
}
VARLENGTH_DTYPES = {
    "input_ids": np.dtype("i2"),
    "segment_ids": np.dtype("i1"),
    "masked_lm_positions": np.dtype("i2"),
    "masked_lm_ids": np.dtype("i2"),
}
PADDED_KEYS = tuple(PADDED_DTYPES)  # also `packing.padded_batch`'s argument names
SEQUENCE_KEYS = ("input_ids", "input_mask", "segment_ids")  # (N, T)
PREDICTION_KEYS = ("masked_lm_positions", "masked_lm_ids")  # (N, P)
SHARD_SUFFIXES = (".hdf5", ".h5")
_PREPARE_AGAIN = "prepare it again with bert-pretrain prepare"
# Token ids at or above this come from damaged bytes, not from another vocab: BERT's vocabs hold 30k-120k
# WordPieces, and a random 32-bit value falls below 2^20 once in 4,096.
LARGEST_VOCAB = 2**20


def masked_counts(masked_lm_positions: np.ndarray) -> np.ndarray:
    """(B,) masked-LM slots each padded row really uses, by the reference loader's rule: its first
    count_nonzero(positions) slots (position 0 is always [CLS], never masked, so a 0 is padding)."""
    return np.count_nonzero(masked_lm_positions, axis=1)


def counted_slots(masked_lm_positions: np.ndarray) -> np.ndarray:
    """(B, P) bool: the slots `masked_counts` counts."""
    positions = np.asarray(masked_lm_positions)
    return np.arange(positions.shape[1])[None, :] < masked_counts(positions)[:, None]


def list_shards(directory: str | Path) -> list[Path]:
    """HDF5 files of `directory` whose names contain 'part' (the reference's rule), sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such folder of HDF5 shards")
    files = sorted(p for p in directory.iterdir() if "part" in p.name and p.suffix in SHARD_SUFFIXES)
    if not files:
        raise InputError(f"{directory}: holds no HDF5 shard (files named '*part*.hdf5'); check the path")
    return files


@contextmanager
def _open_for_reading(path: Path):
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass one HDF5 shard file in it")
    require_regular(path, "pass an HDF5 shard file")  # a FIFO would block the open, /dev/zero never end
    try:
        handle = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err}); it may be truncated or not a shard") from None
    with handle:
        _refuse_links(handle, path)
        yield handle


def _refuse_links(f, path: Path) -> None:
    """A shard is plain data: every member of its root is a hard link, so reading it never opens
    another file (an external link) or lands somewhere its name does not say (a soft link)."""
    for name in f:
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else getattr(
                link, "path", "?")
            _refuse_link(path, name, type(link).__name__, target)


def _refuse_link(path: Path, name: str, kind: str, target: str):
    raise InputError(f"{path}: '{name}' is an HDF5 {kind} (to {target}), not data stored in the shard; {_PREPARE_AGAIN}")


def _missing(f, keys) -> list[str]:
    """The keys that are not datasets in the open file `f` (absent, or groups)."""
    return [k for k in keys if not isinstance(f.get(k), h5py.Dataset)]


def _dataset(f, path: Path, key: str, dtype: np.dtype, vlen: bool = False) -> h5py.Dataset:
    """f[key], refused unless it is a dataset whose data lie in this file with the schema's dtype
    (for `vlen`, the element type of a variable-length dataset). External storage and virtual
    datasets read other files: a crafted shard would hand any local file to the reader as tokens."""
    item = f[key]  # a dataset: `_missing` counts a group as missing
    _check_dataset(path, key, dtype, vlen, item.is_virtual, item.external[0][0] if item.external else None,
                   item.dtype, item.id)
    return item


def _check_dataset(path: Path, key: str, dtype: np.dtype, vlen: bool, virtual: bool, external: str | None,
                   stored: np.dtype, dataset: h5py.h5d.DatasetID) -> None:
    """`_dataset`'s checks on what a dataset's header says: its data in the file, unfiltered and whole, the
    schema's dtype."""

    def refuse(problem: str, fix: str = _PREPARE_AGAIN):
        raise InputError(f"{path}: '{key}' {problem}; {fix}")

    if virtual:
        refuse("is a virtual dataset (its data are read from other files), not data stored in the shard")
    if external is not None:
        refuse(f"keeps its data outside the shard (HDF5 external storage in {external}), not in it")
    filters = _filter_names(dataset)
    if filters:
        refuse(f"is stored through the HDF5 filter(s) {', '.join(filters)}, which this project never writes (a "
               "compressed dataset's rows are decompressed whole, whatever the file's size)",
               f"rewrite the file unfiltered (h5repack -f NONE {path.name} OUT.hdf5) or {_PREPARE_AGAIN}")
    # unfiltered, a dataset's storage holds each element's bytes once; less, and a read returns fill values
    declared_bytes = math.prod(dataset.shape) * dataset.get_type().get_size()
    stored_bytes = dataset.get_storage_size()
    if stored_bytes < declared_bytes:
        refuse(f"declares shape {dataset.shape} ({declared_bytes:,} bytes) but stores {stored_bytes:,} bytes (a "
               "shard cut short or crafted)")
    rows = "variable-length rows of " if vlen else ""
    element = h5py.check_vlen_dtype(stored) if vlen else stored
    if element != dtype:
        found = f"{rows}{element}" if element is not None else str(stored)
        refuse(f"has dtype {found}, but the schema stores {rows}{dtype}",
               f"convert it to {rows}{dtype} or {_PREPARE_AGAIN}")


def _filter_names(dataset: h5py.h5d.DatasetID) -> list[str]:
    plist = dataset.get_create_plist()
    return [plist.get_filter(i)[3].decode("ascii", "replace") or str(plist.get_filter(i)[0])
            for i in range(plist.get_nfilters())]


def shard_format(path: str | Path) -> str:
    """'padded' or 'varlength', from the keys and dtypes in the file."""
    path = Path(path)
    with _open_for_reading(path) as f:
        if _missing(f, ["input_ids"]):
            raise InputError(f"{path}: missing key 'input_ids'; not a pretraining shard")
        return "varlength" if h5py.check_vlen_dtype(f["input_ids"].dtype) is not None else "padded"


def num_samples(path: str | Path) -> int:
    path = Path(path)
    with _open_for_reading(path) as f:
        if _missing(f, ["next_sentence_labels"]):
            raise InputError(f"{path}: missing key 'next_sentence_labels'; not a pretraining shard")
        return int(_dataset(f, path, "next_sentence_labels", PADDED_DTYPES["next_sentence_labels"]).shape[0])


@dataclass(frozen=True)
class ShardLayout:
    """What a shard's HDF5 metadata says, no data read: its layout, widths (None for varlength) and rows."""

    format: str  # "padded" or "varlength"
    max_seq_length: int | None
    max_predictions_per_seq: int | None
    rows: int

    def widths(self) -> str:
        if self.format == "varlength":
            return "variable-length rows"
        return f"width {self.max_seq_length} and {self.max_predictions_per_seq} masked-LM slots"


_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "SoftLink", h5py.h5l.TYPE_EXTERNAL: "ExternalLink"}


def shard_layout(path: str | Path) -> ShardLayout:
    """The layout of one shard from its metadata alone: every key of its schema present, with the schema's
    dtype and data in the file, and one row count shared by all keys; else an InputError naming the file.

    The same checks as the readers' (`_open_for_reading`, `_dataset`), through h5py's low-level interface:
    it runs for every shard of a training set before the first step, and h5py's high-level objects cost
    about 4x as much per shard (0.7 against 2.6 ms, benchmarks/shard_check_bench.py)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; pass one HDF5 shard file in it")
    require_regular(path, "pass an HDF5 shard file")  # a FIFO would block the open, /dev/zero never end
    access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    access.set_fclose_degree(h5py.h5f.CLOSE_STRONG)  # closing the file closes every handle opened in it
    try:
        file = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY, fapl=access)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err}); it may be truncated or not a shard") from None
    try:
        return _layout(file, path)
    finally:
        file.close()


def _layout(file, path: Path) -> ShardLayout:
    root = h5py.h5g.open(file, b"/")
    datasets = {}
    for raw in root:
        name = raw.decode("utf-8", "replace")
        kind = root.links.get_info(raw).type
        if kind != h5py.h5l.TYPE_HARD:
            target = root.links.get_val(raw) if kind in _LINK_KINDS else b"?"
            target = ":".join(t.decode("utf-8", "replace") for t in target) if isinstance(target, tuple) else \
                target.decode("utf-8", "replace")
            _refuse_link(path, name, _LINK_KINDS.get(kind, "user-defined link"), target)
        item = h5py.h5o.open(root, raw)
        if isinstance(item, h5py.h5d.DatasetID):
            datasets[name] = item
    if "input_ids" not in datasets:
        raise InputError(f"{path}: missing key 'input_ids'; not a pretraining shard")
    varlength = h5py.check_vlen_dtype(datasets["input_ids"].dtype) is not None
    schema = {**VARLENGTH_DTYPES, "next_sentence_labels": PADDED_DTYPES["next_sentence_labels"]} if varlength \
        else PADDED_DTYPES
    missing = [key for key in schema if key not in datasets]
    if missing:
        raise InputError(f"{path}: missing keys {missing}; a {'variable-length' if varlength else 'padded'} "
                         f"shard needs {list(schema)}")
    for key, dtype in schema.items():
        creation = datasets[key].get_create_plist()
        external = (creation.get_external(0)[0].decode("utf-8", "replace") if creation.get_external_count()
                    else None)
        _check_dataset(path, key, dtype, varlength and key in VARLENGTH_DTYPES,
                       creation.get_layout() == h5py.h5d.VIRTUAL, external, datasets[key].dtype, datasets[key])
    shapes = {key: datasets[key].shape for key in schema}
    rows = shapes["next_sentence_labels"][0] if len(shapes["next_sentence_labels"]) == 1 else None
    expected_rank = {key: 1 if varlength or key == "next_sentence_labels" else 2 for key in schema}
    if rows is None or any(len(shape) != expected_rank[key] or shape[0] != rows for key, shape in shapes.items()):
        raise InputError(f"{path}: its keys' shapes {shapes} do not share one row count; the shard is damaged: "
                         f"{_PREPARE_AGAIN}")
    if varlength:
        return ShardLayout("varlength", None, None, rows)
    widths = [{shapes[key][1] for key in group} for group in (SEQUENCE_KEYS, PREDICTION_KEYS)]
    if any(len(found) != 1 for found in widths):
        raise InputError(f"{path}: keys {list(SEQUENCE_KEYS)} and {list(PREDICTION_KEYS)} must each share one "
                         f"width, but their shapes are {shapes}; the shard is damaged: {_PREPARE_AGAIN}")
    return ShardLayout("padded", widths[0].pop(), widths[1].pop(), rows)


@dataclass(frozen=True)
class ShardShape:
    """What a run expects of its shards: the row width, the masked-LM slots per row, and the vocab size the
    token ids must stay below (None: not checked)."""

    max_seq_length: int
    max_predictions_per_seq: int
    vocab_size: int | None = None


def read_padded(path: str | Path, shape: ShardShape | None = None) -> dict[str, np.ndarray]:
    """All six arrays of a padded shard, validated against `shape` when given (a varlength shard is padded
    on the fly, to `shape`)."""
    path = Path(path)
    if shard_format(path) == "varlength":
        if shape is None:
            raise InputError(f"{path}: a variable-length shard needs max_seq_length and max_predictions_per_seq to pad")
        rows = read_varlength(path)
        try:
            arrays = varlength_to_padded(rows, shape.max_seq_length, shape.max_predictions_per_seq)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
    else:
        with _open_for_reading(path) as f:
            missing = _missing(f, PADDED_DTYPES)
            if missing:
                raise InputError(f"{path}: missing keys {missing}; a padded shard needs {list(PADDED_DTYPES)}")
            arrays = {k: np.asarray(_dataset(f, path, k, dtype)[:]) for k, dtype in PADDED_DTYPES.items()}
    validate_padded(arrays, path, shape)
    return arrays


def validate_padded(arrays: dict[str, np.ndarray], path: str | Path, shape: ShardShape | None = None) -> None:
    """Raise InputError naming `path` and the problem if the arrays break the padded schema (SettingsMismatch
    if they do not have `shape`)."""
    max_seq_length, max_predictions_per_seq, vocab_size = (
        (shape.max_seq_length, shape.max_predictions_per_seq, shape.vocab_size) if shape else (None, None, None))

    def fail(problem: str):
        raise InputError(f"{path}: {problem}")

    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.integer):
            fail(f"key '{key}' has dtype {array.dtype}, expected an integer type ({PADDED_DTYPES[key]})")
    rows = arrays["next_sentence_labels"].shape
    if len(rows) != 1:
        fail(f"key 'next_sentence_labels' has shape {rows}, expected (N,)")
    n = rows[0]
    for group, expected_width, what in (
        (SEQUENCE_KEYS, max_seq_length, "max_seq_length"),
        (PREDICTION_KEYS, max_predictions_per_seq, "max_predictions_per_seq"),
    ):
        shapes = {k: arrays[k].shape for k in group}
        widths = {s[1] for s in shapes.values() if len(s) == 2}
        if any(len(s) != 2 or s[0] != n for s in shapes.values()) or len(widths) != 1:
            fail(f"keys {list(group)} have shapes {shapes}; expected ({n}, {what}) for each")
        width = widths.pop()
        if expected_width is not None and width != expected_width:
            raise SettingsMismatch(path, f"keys {list(group)} have width {width}, but {what} is {expected_width}",
                                   f"pass --{what} {width}")
    seq_len = arrays["input_ids"].shape[1]
    positions = arrays["masked_lm_positions"]
    if positions.size and (positions.min() < 0 or positions.max() >= seq_len):
        fail(f"masked_lm_positions outside the sequence (values {positions.min()}..{positions.max()}, length {seq_len})")
    for key in ("input_mask", "segment_ids", "next_sentence_labels"):
        values = arrays[key]
        if values.size and (values.min() < 0 or values.max() > 1):
            fail(f"key '{key}' holds values outside {{0, 1}} ({values.min()}..{values.max()})")
    # The masked-LM slots the reference counts (the first count_nonzero per row) must lie on real tokens:
    # one in the padding would read a padding state, or another sequence's token once packed.
    lengths = arrays["input_mask"].sum(axis=1, dtype=np.int64)
    if lengths.size and lengths.min() == 0:
        fail(f"row {int(np.argmin(lengths))} has no tokens (input_mask all 0); the shard is damaged")
    outside = counted_slots(positions) & (positions >= lengths[:, None])
    if outside.any():
        row = int(np.argwhere(outside)[0][0])
        fail(f"row {row} masks position {positions[row][outside[row]][0]} but has only {lengths[row]} tokens "
             "(input_mask); the shard is damaged or was written with another layout")
    for key in ("input_ids", "masked_lm_ids"):
        values = arrays[key]
        if not values.size:
            continue
        low, high = values.min(), values.max()
        if low < 0 or high >= max(LARGEST_VOCAB, vocab_size or 0):
            fail(f"key '{key}' holds token ids {low}..{high}, which no vocab gives (ids are 0 or more, and "
                 f"WordPiece vocabs have fewer than {LARGEST_VOCAB:,} tokens); the shard is damaged: {_PREPARE_AGAIN}, "
                 "or copy it again from where it was made")
        if vocab_size is not None and high >= vocab_size:
            raise SettingsMismatch(path, f"key '{key}' holds token ids up to {high}, outside the vocab of "
                                         f"{vocab_size}", "was the shard made with another vocab? (bert_config.json's "
                                         "vocab_size)")


def _reason(err: OSError) -> str:
    """The system's words for a failed write; HDF5's own message is a record of its internals that runs
    over two lines (its time stamp ends in a newline)."""
    return os.strerror(err.errno) if err.errno else " ".join(str(err).split())


def _write_atomically(path: str | Path, write_datasets) -> None:
    path = Path(path)
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            write_datasets(f)
    except OSError as err:
        raise InputError(f"{path}: could not write the shard ({_reason(err)}); check the folder is writable and has "
                         "space") from None


def write_padded(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the six padded arrays with the reference dtypes, uncompressed, atomically."""
    validate_padded(arrays, path)

    def datasets(f):
        for key, dtype in PADDED_DTYPES.items():
            f.create_dataset(key, data=np.asarray(arrays[key]).astype(dtype, copy=False))

    _write_atomically(path, datasets)


@contextmanager
def padded_writer(path: str | Path, num_rows: int, max_seq_length: int, max_predictions_per_seq: int):
    """Write a padded shard of `num_rows` rows block by block: yields `write(arrays)`, which appends a
    block of rows (the six arrays, validated); the file gets its final name once all rows are in."""
    path = Path(path)
    widths = {"next_sentence_labels": ()} | {k: (max_seq_length,) for k in SEQUENCE_KEYS} | {
        k: (max_predictions_per_seq,) for k in PREDICTION_KEYS}
    written = 0

    def write(arrays: dict[str, np.ndarray]) -> None:
        nonlocal written
        validate_padded(arrays, path, ShardShape(max_seq_length, max_predictions_per_seq))
        rows = len(arrays["next_sentence_labels"])
        if written + rows > num_rows:
            raise ValueError(f"{path}: {written + rows} rows written into a shard of {num_rows}")
        try:
            for key, dataset in datasets.items():
                dataset[written:written + rows] = np.asarray(arrays[key]).astype(PADDED_DTYPES[key], copy=False)
        except OSError as err:
            raise InputError(f"{path}: could not write the shard ({_reason(err)}); check the folder has space") from None
        written += rows

    with atomic_path(path) as tmp:
        try:
            handle = h5py.File(tmp, "w")
        except OSError as err:
            raise InputError(f"{path}: could not create the shard ({_reason(err)}); check the folder is writable") from None
        with handle:
            datasets = {key: handle.create_dataset(key, shape=(num_rows, *widths[key]), dtype=dtype)
                        for key, dtype in PADDED_DTYPES.items()}
            yield write
            if written != num_rows:
                raise ValueError(f"{path}: {written} rows written into a shard of {num_rows}")


def read_padded_rows(path: str | Path, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows start..stop-1 of a padded shard's six arrays, as stored (not validated: the caller writes
    them through `padded_writer`, which validates)."""
    path = Path(path)
    with _open_for_reading(path) as f:
        missing = _missing(f, PADDED_DTYPES)
        if missing:
            raise InputError(f"{path}: missing keys {missing}; a padded shard needs {list(PADDED_DTYPES)}")
        return {key: np.asarray(_dataset(f, path, key, dtype)[start:stop]) for key, dtype in PADDED_DTYPES.items()}


def padded_to_varlength(arrays: dict[str, np.ndarray]) -> dict[str, list[np.ndarray] | np.ndarray]:
    """Per-row arrays holding only the real tokens and the real masked slots."""
    lengths = arrays["input_mask"].astype(bool).sum(axis=1)
    counts = masked_counts(arrays["masked_lm_positions"])
    return {
        "input_ids": [row[:n] for row, n in zip(arrays["input_ids"], lengths)],
        "segment_ids": [row[:n] for row, n in zip(arrays["segment_ids"], lengths)],
        "masked_lm_positions": [row[:c] for row, c in zip(arrays["masked_lm_positions"], counts)],
        "masked_lm_ids": [row[:c] for row, c in zip(arrays["masked_lm_ids"], counts)],
        "next_sentence_labels": np.asarray(arrays["next_sentence_labels"]),
    }


def varlength_to_padded(rows: dict, max_seq_length: int, max_predictions_per_seq: int) -> dict[str, np.ndarray]:
    n = len(rows["next_sentence_labels"])
    out = {
        key: np.zeros((n, max_predictions_per_seq if key in PREDICTION_KEYS else max_seq_length), dtype)
        for key, dtype in PADDED_DTYPES.items()
        if key != "next_sentence_labels"
    }
    for i in range(n):
        length = len(rows["input_ids"][i])
        count = len(rows["masked_lm_positions"][i])
        if length > max_seq_length or count > max_predictions_per_seq:
            raise InputError(
                f"row {i} has {length} tokens and {count} masked slots, more than "
                f"max_seq_length {max_seq_length} / max_predictions_per_seq {max_predictions_per_seq}; "
                "pass the values the shards were prepared with"
            )
        out["input_ids"][i, :length] = rows["input_ids"][i]
        out["segment_ids"][i, :length] = rows["segment_ids"][i]
        out["input_mask"][i, :length] = 1
        out["masked_lm_positions"][i, :count] = rows["masked_lm_positions"][i]
        out["masked_lm_ids"][i, :count] = rows["masked_lm_ids"][i]
    out["next_sentence_labels"] = np.asarray(rows["next_sentence_labels"], dtype=PADDED_DTYPES["next_sentence_labels"])
    return out


def read_varlength(path: str | Path) -> dict[str, list[np.ndarray] | np.ndarray]:
    """The rows of a variable-length shard: lists of per-row arrays, plus the NSP labels."""
    path = Path(path)
    with _open_for_reading(path) as f:
        missing = _missing(f, (*VARLENGTH_DTYPES, "next_sentence_labels"))
        if missing:
            raise InputError(f"{path}: missing keys {missing}; not a variable-length shard")
        rows = {k: list(_dataset(f, path, k, dtype, vlen=True)[:]) for k, dtype in VARLENGTH_DTYPES.items()}
        labels = _dataset(f, path, "next_sentence_labels", PADDED_DTYPES["next_sentence_labels"])
        rows["next_sentence_labels"] = np.asarray(labels[:])
    n = len(rows["next_sentence_labels"])
    if any(len(v) != n for v in rows.values()):
        raise InputError(f"{path}: keys have different row counts {({k: len(v) for k, v in rows.items()})}")
    return rows


def write_varlength(path: str | Path, rows: dict) -> None:
    """Write variable-length rows (e.g. from `padded_to_varlength`) atomically."""
    largest = max((int(r.max()) for key in ("input_ids", "masked_lm_ids") for r in rows[key] if len(r)), default=0)
    if largest > np.iinfo(np.int16).max:
        raise InputError(f"{path}: token id {largest} does not fit the variable-length format's int16; use --format padded")

    def datasets(f):
        for key, dtype in VARLENGTH_DTYPES.items():
            data = np.empty(len(rows[key]), dtype=object)
            data[:] = [np.asarray(r, dtype=dtype) for r in rows[key]]
            f.create_dataset(key, data=data, dtype=h5py.vlen_dtype(dtype))
        f.create_dataset("next_sentence_labels", data=np.asarray(rows["next_sentence_labels"], dtype="i1"))

    _write_atomically(path, datasets)
