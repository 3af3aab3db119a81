"""What `prepare` and `prepare-mlperf` are asked to do; every field of PrepareOptions and PrepareMlperfOptions is
one of their flags. Free of torch, h5py and numpy, so the command line is built without them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bert_pretrain.errors import InputError
from bert_pretrain.options.fields import Refuse, option, truth

FORMATS = ("auto", "wikidump", "wikiextractor", "text", "jsonl", "parquet", "arrow")  # of the input
OUTPUT_FORMATS = ("padded", "varlength")
METHODS = ("default", "reference")  # this project's streaming builder; NVIDIA's script, exactly, per file


_INSTANCES = "instances (create_pretraining_data.py flags, MLPerf values)"


@dataclass(frozen=True)
class InstanceOptions:
    """How documents become masked-LM/NSP instances: create_pretraining_data.py's flags with MLPerf's values,
    declared once for `prepare` and `prepare-mlperf` (both subclass it) and handed to the instance builders.
    The fields keep the reference's order, so `InstanceOptions(512, 76, 0.15, 0.1, 10)` reads as its flags."""

    max_seq_length: int = option(512, "tokens per instance, [CLS] and [SEP]s included", group=_INSTANCES)
    max_predictions_per_seq: int = option(76, "masked-LM slots per instance", group=_INSTANCES)
    masked_lm_prob: float = option(0.15, "share of an instance's tokens to mask (80%% [MASK], 10%% random, "
                                         "10%% kept)", group=_INSTANCES)
    short_seq_prob: float = option(0.1, "probability of a shorter target length, so the model also sees short "
                                        "sequences", group=_INSTANCES)
    dupe_factor: int = option(10, "passes over the documents, each masked anew", group=_INSTANCES)
    # Not a flag here: NVIDIA's script has no whole-word masking, so prepare-mlperf never asks for it;
    # PrepareOptions makes it one.
    whole_word_mask: bool = False
    random_seed: int = option(12345, "seed of the document shuffle, pairing and masking: same seed, same shards",
                              group=_INSTANCES)

    def instance_options(self) -> InstanceOptions:
        """These settings alone (what a worker process needs), whatever command's options they came from."""
        return InstanceOptions(**{f.name: getattr(self, f.name) for f in fields(InstanceOptions)})

    def instance_rules(self) -> list[tuple[bool, str]]:
        return [
            (self.max_seq_length >= 5, f"--max_seq_length must be at least 5 ([CLS] A [SEP] B [SEP]), "
                                       f"got {self.max_seq_length}"),
            (self.max_predictions_per_seq >= 1, "--max_predictions_per_seq must be at least 1"),
            (0 < self.masked_lm_prob < 1, f"--masked_lm_prob must be in (0, 1), got {self.masked_lm_prob}"),
            (0 <= self.short_seq_prob <= 1, f"--short_seq_prob must be in [0, 1], got {self.short_seq_prob}"),
            (self.dupe_factor >= 1, f"--dupe_factor must be at least 1, got {self.dupe_factor}"),
            (self.random_seed >= 0, f"--random_seed must be 0 or more, got {self.random_seed}"),
        ]


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def workers_option():
    return option(help="processes on this machine (default: one per CPU this process may use)",
                  default_factory=default_workers, group="scale")


def progress_option():
    return option(True, "progress bars (--no_progress: none)", group="scale",
                  aliases=(("--no_progress", {"action": "store_false"}),))

_LOWER_CASE_ALIASES = (("--no_lower_case", {"action": "store_false"}),
                       ("--do_lower_case", {"type": truth, "nargs": "?", "const": True, "metavar": "BOOL"}))


@dataclass(frozen=True, kw_only=True)
class PrepareOptions(InstanceOptions):
    """What `bert-pretrain prepare` does; every field is one of its flags. The defaults are the MLPerf
    v1.0 reference's."""

    input_files: list[str] | str = option(
        help="text, JSON Lines, Parquet or Arrow files, folders (searched recursively) or globs; several allowed; "
             ".bz2/.gz/.zst are read compressed",
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
                                       "sentence per line, blank line between documents; jsonl: a JSON object per "
                                       "line (C4, The Pile); parquet (HF hub datasets); arrow: Arrow IPC (HF datasets' "
                                       "cache); auto: decided per file from its first bytes", choices=FORMATS,
                               group="input and output")
    text_field: str = option("text", "jsonl, parquet, arrow: the field or column that holds a record's text (a "
                                     "record is a document, its lines are paragraphs)", metavar="NAME",
                             group="input and output")
    clean_wiki_markup: bool = option(False, "jsonl, parquet, arrow: remove leftover wiki markup (links, refs, tags) as "
                                            "for WikiExtractor output, e.g. for WikiExtractor's --json output",
                                     group="input and output")
    num_shards: int = option(1, "training shards (MLPerf: 2048)", group="shards and eval set")
    whole_word_mask: bool = option(False, "mask whole words, not single WordPieces (also "
                                          "--do_whole_word_mask=BOOL)", group=_INSTANCES, aliases=(
        ("--do_whole_word_mask", {"type": truth, "nargs": "?", "const": True, "metavar": "BOOL"}),))
    num_eval_examples: int = option(0, "write an eval set of this many instances (MLPerf: 10000); 0 = none",
                                    group="shards and eval set")
    num_eval_documents: int = option(10000, "documents held out for the eval set, never in training shards "
                                            "(MLPerf: 10000)", group="shards and eval set")
    format: str = option("padded", "padded: the MLPerf v1.0 schema; varlength: only real tokens, for the packed "
                                   "path", choices=OUTPUT_FORMATS, group="input and output")
    workers: int = workers_option()
    shard_range: str | tuple[int, int] | None = option(
        None, "write only shards FIRST..END-1 (one slice per machine; same files as one machine writes); the run "
              "whose range starts at 0 writes the eval set", metavar="FIRST:END", group="scale")
    progress: bool = progress_option()
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
            (bool(self.text_field), "--text_field may not be empty (the field of JSON Lines records, the column of "
                                    "Parquet and Arrow files, that holds the text; default text)"),
            (self.format in OUTPUT_FORMATS, f"--format must be one of {', '.join(OUTPUT_FORMATS)}"),
            (self.num_shards >= 1, f"--num_shards must be at least 1, got {self.num_shards}"),
            *self.instance_rules(),
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
        for key, default in (("text_field", "text"), ("clean_wiki_markup", False)):
            if values[key] == default:  # folders made before record inputs existed hold neither
                values.pop(key)
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


TEXT_MD5_LIST = "bert_reference_results_text_md5.txt"  # MLCommons' md5s of the text parts, in results4/


@dataclass(frozen=True, kw_only=True)
class PrepareMlperfOptions(InstanceOptions):
    """What `bert-pretrain prepare-mlperf` does (prepare/reference/mlperf.py); every field is one of its flags.
    The defaults are MLPerf's; other instance settings make data that is not the reference's."""

    text_dir: str = option(help="MLCommons' results4/: part-00000-of-00500 ... part-00499-of-00500 and eval.txt "
                                f"(and {TEXT_MD5_LIST}, which checks them)", group="inputs (MLCommons' release)")
    tf_checkpoint: str = option(help="the TensorFlow 1 checkpoint, by prefix (tf1_ckpt/model.ckpt-28252) or its "
                                     ".index", group="inputs (MLCommons' release)")
    vocab_file: str = option(help="the release's vocab.txt", group="inputs (MLCommons' release)")
    bert_config: str = option(help="the release's bert_config.json", group="inputs (MLCommons' release)")
    output_dir: str = option(help="the DATA folder for DATA=... bash train_bert_pretraining_amp_dist.sh",
                             group="output")
    keep_parts: bool = option(False, "keep the per-part HDF5 files (as large as the shards) after the cut",
                              group="output")
    num_shards: int = option(2048, "training shards", group="output")
    num_eval_examples: int = option(10000, "eval instances (the first ones of eval.txt's)", group="output")
    workers: int = workers_option()
    progress: bool = progress_option()
