"""What `prepare` is asked to do (PrepareOptions), where it writes (OutputLayout), what it did (PrepareSummary)."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bert_pretrain.data import shards
from bert_pretrain.data.instances import InstanceOptions
from bert_pretrain.data.manifest import RECORDS_KEY, read_manifest, write_manifest
from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import hold_folder
from bert_pretrain.options import Refuse, option, truth

FORMATS = ("auto", "wikidump", "wikiextractor", "text")  # of the input
OUTPUT_FORMATS = ("padded", "varlength")
METHODS = ("default", "reference")  # this project's streaming builder; NVIDIA's script, exactly, per file
PARTS_FOLDER = "reference_parts"  # the reference method's per-input-file outputs
MANIFEST = "prepare_manifest.json"
EVAL_FILE = "part_eval_10k.hdf5"  # the MLPerf name, whatever the number of examples
_SHARD_FOLDER = re.compile(r"\d+_shards_(uncompressed|varlength)")
EVAL_FOLDERS = {"padded": "eval_set_uncompressed", "varlength": "eval_varlength"}  # MLPerf's, DeepSparkHub's
# The folder lock's slots (folder_lock.py): the vocab and eval set, then one per shard, then one per reference part.
_SHARED_SLOT, _FIRST_SHARD_SLOT, _FIRST_PART_SLOT = 0, 1, 1 << 40


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_INSTANCES = "instances (create_pretraining_data.py flags, MLPerf values)"
_LOWER_CASE_ALIASES = (("--no_lower_case", {"action": "store_false"}),
                       ("--do_lower_case", {"type": truth, "nargs": "?", "const": True, "metavar": "BOOL"}))


@dataclass
class PrepareOptions:
    """What `bert-pretrain prepare` does; every field is one of its flags. The defaults are the MLPerf
    v1.0 reference's."""

    input_files: list[str] | str = option(
        help="text files, folders (searched recursively) or globs; several allowed; .bz2/.gz are read compressed",
        flag="--input_file", metavar="PATH", group="input and output")
    output_dir: str = option(help="writes <N>_shards_uncompressed/ and eval_set_uncompressed/ here (a DATA folder)",
                             group="input and output", aliases=(("--output_file", {
                                 "action": Refuse, "message": "prepare writes a folder of HDF5 shards (the MLPerf "
                                                              "layout), not one file: pass --output_dir DIR"}),))
    vocab_file: str | None = option(None, "a BERT WordPiece vocab.txt ([PAD] first; [UNK] [CLS] [SEP] [MASK])",
                                    group="vocab", exclusive="vocab", required=True)
    vocab_size: int | None = option(None, "train a WordPiece vocab of this size on the input, written to "
                                          "OUTPUT_DIR/vocab.txt", group="vocab", exclusive="vocab", required=True)
    lower_case: bool = option(True, "lower-case and strip accents as uncased BERT does; --no_lower_case keeps "
                                    "them (cased vocabs); create_pretraining_data.py's --do_lower_case=BOOL is "
                                    "understood", group="vocab", aliases=_LOWER_CASE_ALIASES)
    input_format: str = option("auto", "wikidump: pages-articles .xml(.bz2); wikiextractor: <doc> blocks; text: one "
                                       "sentence per line, blank line between documents; auto: decided per file "
                                       "from its first bytes", choices=FORMATS, group="input and output")
    num_shards: int = option(1, "training shards (MLPerf: 2048)", group="shards and eval set")
    max_seq_length: int = option(512, "tokens per instance, [CLS] and [SEP]s included", group=_INSTANCES)
    max_predictions_per_seq: int = option(76, "masked-LM slots per instance", group=_INSTANCES)
    masked_lm_prob: float = option(0.15, "share of an instance's tokens to mask (80%% [MASK], 10%% random, "
                                         "10%% kept)", group=_INSTANCES)
    short_seq_prob: float = option(0.1, "probability of a shorter target length, so the model also sees short "
                                        "sequences", group=_INSTANCES)
    dupe_factor: int = option(10, "passes over the documents, each masked anew", group=_INSTANCES)
    random_seed: int = option(12345, "seed of the document shuffle, pairing and masking: same seed, same shards",
                              group=_INSTANCES)
    whole_word_mask: bool = option(False, "mask whole words, not single WordPieces (also "
                                          "--do_whole_word_mask=BOOL)", group=_INSTANCES, aliases=(
        ("--do_whole_word_mask", {"type": truth, "nargs": "?", "const": True, "metavar": "BOOL"}),))
    num_eval_examples: int = option(0, "write an eval set of this many instances (MLPerf: 10000); 0 = none",
                                    group="shards and eval set")
    num_eval_documents: int = option(10000, "documents held out for the eval set, never in training shards "
                                            "(MLPerf: 10000)", group="shards and eval set")
    format: str = option("padded", "padded: the MLPerf v1.0 schema; varlength: only real tokens, for the packed "
                                   "path", choices=OUTPUT_FORMATS, group="input and output")
    workers: int = option(help="processes on this machine (default: one per CPU this process may use)",
                          default_factory=default_workers, group="scale")
    shard_range: str | tuple[int, int] | None = option(
        None, "write only shards FIRST..END-1 (one slice per machine; same files as one machine writes); the run "
              "whose range starts at 0 writes the eval set", metavar="FIRST:END", group="scale")
    progress: bool = option(True, "progress bars (--no_progress: none)", group="scale",
                            aliases=(("--no_progress", {"action": "store_false"}),))
    method: str = option("default", "default: this project's streaming builder (the reference's distribution, any "
                                    "input, any corpus size); reference: each input text file gives exactly the "
                                    "instances NVIDIA's create_pretraining_data.py writes for it "
                                    "(OUTPUT_DIR/reference_parts/<file>.hdf5), then all of them in sorted file order "
                                    "are cut into --num_shards shards (MLPerf's data: --input_file results4/part-* "
                                    "--eval_file results4/eval.txt); see docs/data.md", choices=METHODS,
                         group="input and output")
    eval_file: str | None = option(None, "--method reference: the text file whose first --num_eval_examples "
                                         "instances are the eval set (pick_eval_samples.py's rule)", metavar="PATH",
                                   group="shards and eval set")
    part_range: str | tuple[int, int] | None = option(
        None, "--method reference: make only the parts of input files FIRST..END-1 (sorted by name), one slice per "
              "machine; the run whose range starts at 0 makes the eval set, and the cut runs once every part is "
              "there", metavar="FIRST:END", group="scale")

    def input_list(self) -> list[str]:
        files = [self.input_files] if isinstance(self.input_files, (str, os.PathLike)) else self.input_files
        return [str(f) for f in files]

    def instance_options(self) -> InstanceOptions:
        return InstanceOptions(self.max_seq_length, self.max_predictions_per_seq, self.masked_lm_prob,
                               self.short_seq_prob, self.dupe_factor, self.whole_word_mask)

    def shard_bounds(self) -> tuple[int, int]:
        """The validated `shard_range` as (first, end)."""
        return _bounds(self.shard_range, self.num_shards, "--shard_range", "--num_shards")

    def part_bounds(self, parts: int) -> tuple[int, int]:
        """The validated `part_range` as (first, end), for `parts` input files."""
        return _bounds(self.part_range, parts, "--part_range", "the number of input files")

    def check(self) -> None:
        """Raise InputError naming the first option that makes no sense."""
        rules = [
            (bool(self.input_list()) and all(self.input_list()), "--input_file is required and may not be empty"),
            (bool(str(self.output_dir)), "--output_dir may not be empty"),
            (self.vocab_file != "", "--vocab_file may not be empty"),
            (self.vocab_file is not None or self.vocab_size is not None, "pass --vocab_file PATH or --vocab_size N"),
            (self.vocab_file is None or self.vocab_size is None, "pass --vocab_file or --vocab_size, not both"),
            (self.input_format in FORMATS, f"--input_format must be one of {', '.join(FORMATS)}"),
            (self.format in OUTPUT_FORMATS, f"--format must be one of {', '.join(OUTPUT_FORMATS)}"),
            (self.num_shards >= 1, f"--num_shards must be at least 1, got {self.num_shards}"),
            (self.max_seq_length >= 5, f"--max_seq_length must be at least 5 ([CLS] A [SEP] B [SEP]), "
                                       f"got {self.max_seq_length}"),
            (self.max_predictions_per_seq >= 1, "--max_predictions_per_seq must be at least 1"),
            (0 < self.masked_lm_prob < 1, f"--masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}"),
            (0 <= self.short_seq_prob <= 1, f"--short_seq_prob must be in [0, 1], got {self.short_seq_prob}"),
            (self.dupe_factor >= 1, f"--dupe_factor must be at least 1, got {self.dupe_factor}"),
            (self.random_seed >= 0, f"--random_seed must be 0 or more, got {self.random_seed}"),
            (self.num_eval_examples >= 0, "--num_eval_examples must be 0 (no eval set) or more"),
            (self.num_eval_examples == 0 or self.num_eval_documents >= 1,
             "--num_eval_documents must be at least 1 when --num_eval_examples > 0"),
            (self.workers >= 1, f"--workers must be at least 1, got {self.workers}"),
            (self.method in METHODS, f"--method must be one of {', '.join(METHODS)}"),
        ]
        rules += self._reference_rules() if self.method == "reference" else [
            (self.eval_file is None, "--eval_file is for --method reference (the default method holds out "
                                     "--num_eval_documents documents of the input)"),
            (self.part_range is None, "--part_range is for --method reference; the default method's unit is the "
                                      "shard: use --shard_range"),
        ]
        for ok, message in rules:
            if not ok:
                raise InputError(message)
        self.shard_bounds()

    def _reference_rules(self) -> list[tuple[bool, str]]:
        why = "--method reference makes what NVIDIA's create_pretraining_data.py makes"
        return [
            (self.vocab_file is not None, f"{why} with a given vocab: pass --vocab_file, not --vocab_size"),
            (not self.whole_word_mask, f"{why}, which has no whole-word masking: drop --whole_word_mask"),
            (self.format == "padded", f"{why}: the padded MLPerf layout; drop --format varlength"),
            (self.input_format in ("auto", "text"), f"{why} from text files (one sentence per line, a blank line "
                                                    "between documents); drop --input_format"),
            (self.num_eval_examples == 0 or self.eval_file is not None,
             "--method reference takes the eval set from --eval_file (MLPerf: results4/eval.txt)"),
            (self.eval_file is None or self.num_eval_examples > 0,
             "--eval_file needs --num_eval_examples, the instances to keep (MLPerf: 10000)"),
            (self.eval_file != "", "--eval_file may not be empty"),
        ]

    def command_line(self) -> list[str]:
        """`bert-pretrain prepare` flags that ask for these options (defaults left out), to print."""
        flags = ["--input_file", *self.input_list(), "--output_dir", str(self.output_dir)]
        defaults = PrepareOptions(input_files=[], output_dir="")
        for name, value in asdict(self).items():
            if name in ("input_files", "output_dir", "workers") or value == getattr(defaults, name) or value is None:
                continue
            if isinstance(value, bool):  # the switches: --no_lower_case, --whole_word_mask, --no_progress
                flags.append({"lower_case": "--no_lower_case", "progress": "--no_progress"}.get(name, f"--{name}"))
            else:
                flags += [f"--{name}", str(value)]
        return flags + ["--workers", str(self.workers)]

    def manifest(self, input_files: list[Path], vocab_sha256: str) -> dict:
        """What determines the output's content (not the workers or the shard and part ranges)."""
        values = asdict(self)
        for key in ("input_files", "output_dir", "vocab_file", "vocab_size", "workers", "shard_range", "progress",
                    "eval_file", "part_range") + (("method",) if self.method == "default" else ()):
            values.pop(key)
        if self.eval_file is not None:
            values["eval_input"] = [Path(self.eval_file).name, Path(self.eval_file).stat().st_size]
        values["inputs"] = [[p.name, p.stat().st_size] for p in input_files]
        values["vocab_sha256"] = vocab_sha256
        return values


def _bounds(value, count: int, flag: str, what: str) -> tuple[int, int]:
    if value is None:
        return 0, count
    if isinstance(value, str):
        try:
            first, end = (int(v) for v in value.split(":"))
        except ValueError:
            raise InputError(f"{flag} {value}: expected FIRST:END, e.g. 0:512") from None
    else:
        first, end = value
    if not 0 <= first <= end <= count:
        raise InputError(f"{flag} {first}:{end}: needs 0 <= FIRST <= END <= {what} ({count})")
    return first, end


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
        records of finished files (data/manifest.py) are kept either way.
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
