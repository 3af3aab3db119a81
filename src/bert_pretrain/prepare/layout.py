"""Where `prepare` writes (OutputLayout: the MLPerf folder and file names, the folder lock, the manifest)
and what it did (PrepareSummary, the report)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from bert_pretrain.data import shards
from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import hold_folder
from bert_pretrain.prepare.manifest import RECORDS_KEY, read_manifest, write_manifest

PARTS_FOLDER = "reference_parts"  # the reference method's per-input-file outputs
MANIFEST = "prepare_manifest.json"
EVAL_FILE = "part_eval_10k.hdf5"  # the MLPerf name, whatever the number of examples
_SHARD_FOLDER = re.compile(r"\d+_shards_(uncompressed|varlength)")
EVAL_FOLDERS = {"padded": "eval_set_uncompressed", "varlength": "eval_varlength"}  # MLPerf's, DeepSparkHub's
# The folder lock's slots (folder_lock.py): the vocab and eval set, then one per shard, then one per reference part.
_SHARED_SLOT, _FIRST_SHARD_SLOT, _FIRST_PART_SLOT = 0, 1, 1 << 40


@dataclass(frozen=True)
class OutputLayout:
    """<output_dir>/<N>_shards_uncompressed/part_<i>_of_<N>.hdf5 (MLPerf's names: i not zero-padded, so
    the loader's sorted-then-shuffled file order is the reference's) and
    <output_dir>/eval_set_uncompressed/part_eval_10k.hdf5; DeepSparkHub's names for varlength
    (<N>_shards_varlength/part_00000_of_0000N.hdf5, eval_varlength/)."""

    output_dir: Path
    num_shards: int
    varlength: bool

    @property
    def shard_dir(self) -> Path:
        kind = "varlength" if self.varlength else "uncompressed"
        return self.output_dir / f"{self.num_shards}_shards_{kind}"

    @property
    def eval_dir(self) -> Path:
        return self.output_dir / EVAL_FOLDERS["varlength" if self.varlength else "padded"]

    @property
    def eval_path(self) -> Path:
        return self.eval_dir / EVAL_FILE

    @property
    def vocab_path(self) -> Path:
        return self.output_dir / "vocab.txt"

    @property
    def parts_dir(self) -> Path:
        return self.output_dir / PARTS_FOLDER

    def part_path(self, input_file: Path) -> Path:
        """The reference method's output for one input file, named after it as NVIDIA's scripts name it."""
        return self.parts_dir / f"{input_file.name}.hdf5"

    def shard_path(self, index: int) -> Path:
        if not self.varlength:
            return self.shard_dir / f"part_{index}_of_{self.num_shards}.hdf5"
        width = max(5, len(str(self.num_shards)))
        return self.shard_dir / f"part_{index:0{width}d}_of_{self.num_shards:0{width}d}.hdf5"

    def prepare_folders(self, shards: bool = True, with_eval: bool = True) -> None:
        """Create the output folder, and the shard and eval folders (the eval folder only when an eval set
        is written: an empty one would look like a DATA folder's eval set); raise InputError if the output
        folder cannot be written."""
        try:
            for folder in (self.output_dir,) + ((self.shard_dir,) if shards else ()) + (
                    (self.eval_dir,) if with_eval else ()):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise InputError(f"{self.output_dir}: cannot write the output folder ({err.strerror or err}); "
                             "pick a writable --output_dir") from None

    def is_output(self, path: Path) -> bool:
        """Whether `path` is something prepare writes in this output folder, for any settings."""
        try:
            relative = path.resolve().relative_to(self.output_dir.resolve())
        except ValueError:
            return False
        top = relative.parts[0] if relative.parts else ""
        return (top in (MANIFEST, self.vocab_path.name, PARTS_FOLDER, *EVAL_FOLDERS.values())
                or (len(relative.parts) > 1 and _SHARD_FOLDER.fullmatch(top) is not None))

    def has_outputs(self) -> bool:
        """Whether any shard or eval set sits here under its final name, for any settings (the manifest
        is one per output folder: shards of other settings beside these would make it lie)."""
        if not self.output_dir.is_dir():
            return False
        return any(_SHARD_FOLDER.fullmatch(folder.name) and any(folder.glob("part_*.hdf5"))
                   for folder in self.output_dir.iterdir() if folder.is_dir()) or any(
            (self.output_dir / name / EVAL_FILE).exists() for name in EVAL_FOLDERS.values())

    @property
    def manifest_path(self) -> Path:
        return self.output_dir / MANIFEST

    def check_manifest(self, manifest: dict) -> None:
        """Refuse to mix outputs of different settings; record the settings for later runs.

        A manifest with no output beside it (an earlier run failed before writing any) is replaced; the
        records of finished files (prepare/manifest.py) are kept either way.
        """
        old = read_manifest(self.manifest_path)
        records = old.pop(RECORDS_KEY, {})
        if old and self.has_outputs():
            changed = sorted(k for k in manifest.keys() | old.keys() if old.get(k) != manifest.get(k))
            if changed:
                details = "; ".join(f"{k}: {old.get(k)!r} then, {manifest.get(k)!r} now" for k in changed[:4])
                raise InputError(f"{self.output_dir}: holds shards made with other settings ({details}); "
                                 "use another --output_dir or delete this one")
            return
        write_manifest(self.manifest_path, {**manifest, RECORDS_KEY: records})

    def is_complete(self, path: Path) -> bool:
        """A file with the final name is whole (atomic rename); check that it opens and has rows."""
        if not path.exists():
            return False
        try:
            return shards.num_samples(path) > 0
        except InputError:
            return False

    @staticmethod
    def remove_temporaries(path: Path) -> None:
        """Delete what a killed run left while writing `path` (atomic_path's temporary names)."""
        for stale in path.parent.glob(f".{path.name}.tmp-*"):
            stale.unlink(missing_ok=True)

    def spool_dir(self, first: int, end: int) -> Path:
        """The tokens spooled for shards first..end-1 (and the eval set): one name per range, so a rerun
        of the range finds and deletes what a killed run left (`hold` keeps concurrent runs' ranges apart)."""
        return self.output_dir / f".spool-{first}-{end}"

    def hold(self, shards: tuple[int, int] = (0, 0), parts: tuple[int, int] = (0, 0), shared: bool = False):
        """This run's share of the folder, locked for it alone while the block runs (FolderBusy if another
        process holds any of it): the vocab and eval set when `shared`, shards and the reference method's
        parts [first, end). Runs of disjoint ranges (one per machine) write one folder side by side."""
        spans, named = [], []
        if shared:
            spans.append((_SHARED_SLOT, _SHARED_SLOT + 1))
            named.append("the vocab and eval set")
        for (first, end), base, kind in ((shards, _FIRST_SHARD_SLOT, "shards"), (parts, _FIRST_PART_SLOT, "parts")):
            if end > first:
                spans.append((base + first, base + end))
                named.append(f"{kind} {first}:{end}")
        return hold_folder(self.output_dir, "--output_dir", " and ".join(named) or "nothing", spans)

    @property
    def vocab_corpus_path(self) -> Path:
        """The corpus text written for vocab training (only the run whose range starts at 0 trains)."""
        return self.output_dir / ".vocab-corpus.txt"


@dataclass
class PrepareSummary:
    output_dir: Path
    shard_dir: Path
    eval_path: Path | None
    vocab_file: Path
    shards_written: list[Path] = field(default_factory=list)
    shards_skipped: list[Path] = field(default_factory=list)
    parts_written: list[Path] = field(default_factory=list)  # the reference method's per-file outputs
    parts_skipped: list[Path] = field(default_factory=list)
    part_instances: int = 0  # in the parts written by this run
    instances: int = 0  # written by this run, training shards
    eval_instances: int = 0
    documents: int = 0  # in the input stream
    eval_documents: int = 0
    eval_source: Path | None = None  # the reference method's --eval_file
    tokens: int = 0  # tokenized by this run
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # counted skips, one line each
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"prepare: {len(self.shards_written)} shards written, {len(self.shards_skipped)} already complete, "
                 f"in {self.seconds:.1f} s"]
        if self.parts_written or self.parts_skipped:
            lines.append(f"  reference method: {len(self.parts_written)} parts written ({self.part_instances:,} "
                         f"instances, {self.tokens:,} tokens), {len(self.parts_skipped)} already complete, in "
                         f"{self.output_dir / PARTS_FOLDER}")
        if self.documents:
            rate = self.instances / self.seconds if self.seconds else 0.0
            lines.append(f"  {self.documents:,} documents read, {self.tokens:,} tokens tokenized (for this run's "
                         f"shards and the eval candidates), {self.instances:,} training instances ({rate:,.0f}/s) in "
                         f"{self.shard_dir}")
        if self.eval_path is not None and self.eval_instances:
            source = f"documents of {self.eval_source}" if self.eval_source else "held-out documents"
            lines.append(f"  eval set: {self.eval_instances:,} instances from {self.eval_documents:,} {source} in "
                         f"{self.eval_path}")
        elif self.eval_path is not None:
            lines.append(f"  eval set: already complete in {self.eval_path}")
        lines.append(f"  vocab: {self.vocab_file}")
        if self.skipped:
            lines.append("  skipped or dropped (counted):")
            lines += [f"    {line}" for line in self.skipped]
        lines += [f"  note: {note}" for note in self.notes]
        lines.append(f"{self.output_dir} becomes a DATA folder for training once bert_config.json (with "
                     f"vocab_size matching the vocab) and an init checkpoint, if any, sit beside the shards "
                     f"(--input_dir {self.shard_dir}"
                     + (f", --eval_dir {self.eval_path.parent}" if self.eval_path else "") + ").")
        return "\n".join(lines)
