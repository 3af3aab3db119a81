"""`bert-pretrain prepare-mlperf`: MLCommons' BERT release -> the recipe's DATA folder, checked.

    bert-pretrain prepare-mlperf --text_dir results4 --tf_checkpoint tf1_ckpt/model.ckpt-28252 \\
        --vocab_file vocab.txt --bert_config bert_config.json --output_dir DATA --workers 64

writes DATA/bert_config.json (a copy), DATA/model.ckpt-28252.apex.pt (the TensorFlow checkpoint through
`convert`), then `prepare --method reference` on results4/part-* with --eval_file results4/eval.txt and
MLPerf's flags: DATA/2048_shards_uncompressed/ and DATA/eval_set_uncompressed/part_eval_10k.hdf5, the
per-part files in DATA/reference_parts/ deleted once the cut is whole (unless --keep_parts). Each
output is written atomically and skipped on a rerun when complete, so a killed run is finished by
running the same command again, and an output whose inputs changed in content is made again. It ends
by saying whether DATA holds the MLPerf reference data: the vocab, config, eval.txt and checkpoint have
the md5s MLCommons published (held here), the text parts those listed in
bert_reference_results_text_md5.txt (a list the user supplies: the report names its md5 and says which
md5s were compared with what), and the flags are the reference's.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bert_pretrain.atomic import atomic_path
from bert_pretrain.convert import convert
from bert_pretrain.data.vocab import read_vocab
from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import hold_folder
from bert_pretrain.options.commands import ConvertOptions
from bert_pretrain.options.prepare import TEXT_MD5_LIST, PrepareMlperfOptions, PrepareOptions
from bert_pretrain.prepare.input_digests import InputDigests, fingerprint, refuse_duplicates
from bert_pretrain.prepare.layout import MANIFEST, PARTS_FOLDER, OutputLayout
from bert_pretrain.prepare.manifest import FinishedFiles, file_digest
from bert_pretrain.prepare.pipeline import run as prepare
from bert_pretrain.prepare.text import is_input_file
from bert_pretrain.prepare.workers import Workers
from bert_pretrain.weights import read_bert_config

# MLCommons' published md5s of the release's files (its text parts' are in its text md5 list).
PUBLISHED_MD5 = {
    "vocab.txt": "64800d5d8528ce344256daf115d4965e",
    "bert_config.json": "7f59165e21b7d566db610ff6756c926b",
    "eval.txt": "2a220f790517261547b1b45ed3ada07a",
    "model.ckpt-28252.index": "f97de3ae180eb8d479555c939d50d048",
    "model.ckpt-28252.data-00000-of-00001": "50797acd537880bfb5a7ade80d976129",
}
RELEASE_PARTS = 500
CHECKPOINT_NAME = "model.ckpt-28252.apex.pt"  # the recipe's name for the converted checkpoint
REFERENCE_FLAGS = {name: PrepareMlperfOptions.__dataclass_fields__[name].default for name in (
    "num_shards", "num_eval_examples", "max_seq_length", "max_predictions_per_seq", "masked_lm_prob",
    "short_seq_prob", "dupe_factor", "random_seed")}


@dataclass
class _Inputs:
    parts: list[Path]
    eval_text: Path
    index: Path
    data_files: list[Path]
    md5_list: Path | None


def run(options: PrepareMlperfOptions) -> str:
    """Build (or finish) the DATA folder; returns the report, ending in the verdict."""
    inputs = _find_inputs(options)
    config = read_bert_config(options.bert_config)
    vocab_size = len(read_vocab(options.vocab_file))
    if vocab_size > config.vocab_size:
        raise InputError(f"--vocab_file {options.vocab_file}: {vocab_size:,} tokens, more than the vocab_size "
                         f"{config.vocab_size:,} of --bert_config {options.bert_config}; pass the release's pair")
    data = Path(options.output_dir)
    layout = OutputLayout(data, options.num_shards, varlength=False)
    with layout.as_found_if_refused(), hold_folder(data, "--output_dir", "the DATA folder"):  # prepare's nests inside
        return _build(options, inputs, data)


def _build(options: PrepareMlperfOptions, inputs: _Inputs, data: Path) -> str:
    # the md5s prepare reads again to know its inputs by content: one read of each input between them
    digests = InputDigests(data / MANIFEST)
    with Workers(options.workers) as workers:
        evidence = _checksum_evidence(options, inputs, digests, workers)
    digests.save()
    refuse_duplicates({p: evidence.md5s[p] for p in (*inputs.parts, inputs.eval_text)})  # before anything is written
    checkpoint_from = fingerprint([evidence.md5s[p] for p in (inputs.index, *inputs.data_files)])
    lines = digests.notes() + [_copy_config(options, data), _convert_checkpoint(options, inputs, checkpoint_from,
                                                                                    data)]
    summary = prepare(_prepare_options(options, inputs))
    lines.append(summary.report())
    parts = data / PARTS_FOLDER
    if not options.keep_parts and parts.is_dir() and _cut_is_whole(summary, options):
        shutil.rmtree(parts)
        lines.append(f"deleted {parts} (the cut is whole; --keep_parts keeps it)")
    differences = evidence.differences + [f"--{name} {getattr(options, name)}, the reference's {value}"
                                          for name, value in REFERENCE_FLAGS.items() if getattr(options, name) != value]
    return "\n".join(lines + evidence.lines(inputs.md5_list)
                     + [_verdict(data, differences, len(inputs.parts), evidence.list_md5)])


def _find_inputs(options: PrepareMlperfOptions) -> _Inputs:
    text_dir = Path(options.text_dir)
    if not text_dir.is_dir():
        raise InputError(f"--text_dir {text_dir}: no such folder; pass MLCommons' results4/")
    parts = sorted(p for p in text_dir.glob("part-*") if is_input_file(p, f"--text_dir {text_dir}"))
    eval_text = text_dir / "eval.txt"
    if not parts or not eval_text.is_file():
        raise InputError(f"--text_dir {text_dir}: holds no part-* files or no eval.txt; pass MLCommons' results4/")
    prefix = Path(options.tf_checkpoint)
    prefix = prefix.with_suffix("") if prefix.suffix == ".index" else prefix
    index = prefix.with_name(prefix.name + ".index")
    data_files = sorted(prefix.parent.glob(prefix.name + ".data-*-of-*"))
    if not index.is_file() or not data_files:
        raise InputError(f"--tf_checkpoint {options.tf_checkpoint}: no {index.name} with .data-* files beside it; "
                         "pass the checkpoint's prefix, e.g. tf1_ckpt/model.ckpt-28252")
    md5_list = text_dir / TEXT_MD5_LIST
    return _Inputs(parts, eval_text, index, data_files, md5_list if md5_list.is_file() else None)


@dataclass
class _Evidence:
    """What the md5 check compared, and with what: MLCommons' published md5s this project holds (the
    vocab, config, eval.txt, checkpoint) or only the list the user supplied (the text parts)."""

    held: list[Path] = field(default_factory=list)
    listed: list[Path] = field(default_factory=list)
    list_md5: str | None = None
    md5s: dict[Path, str] = field(default_factory=dict)  # of every file compared
    differences: list[str] = field(default_factory=list)

    def lines(self, md5_list: Path | None) -> list[str]:
        lines = ["md5s compared with MLCommons' published values, which this project holds: "
                 + ", ".join(p.name for p in self.held)]
        if md5_list is not None:
            lines.append(f"md5s compared only with the list supplied, {md5_list} (its own md5: {self.list_md5}; "
                         f"compare it with MLCommons' copy, which this project does not hold): {len(self.listed)} "
                         "text parts")
        return lines


def _checksum_evidence(options, inputs: _Inputs, digests: InputDigests, workers: Workers) -> _Evidence:
    """Each input's md5 against MLCommons' published one where this project holds it, the text parts'
    against the supplied list; what differs, one line each (an md5 that is not the expected one, a
    file with no expected md5, the list missing, naming files that are not there, or disagreeing with
    a published md5)."""
    held = {Path(options.vocab_file): PUBLISHED_MD5["vocab.txt"],
            Path(options.bert_config): PUBLISHED_MD5["bert_config.json"],
            inputs.eval_text: PUBLISHED_MD5["eval.txt"]}
    held |= {path: PUBLISHED_MD5.get(path.name) for path in (inputs.index, *inputs.data_files)}
    evidence = _Evidence(held=list(held))
    listed = {}
    if inputs.md5_list is None:
        evidence.differences.append(f"the text parts are unchecked: {Path(options.text_dir) / TEXT_MD5_LIST} is "
                                    "not there")
    else:
        names = _read_md5_list(inputs.md5_list)
        listed = {part: names.get(part.name) for part in inputs.parts}
        evidence.listed = list(listed)
        present = {p.name for p in inputs.parts} | {inputs.eval_text.name}
        evidence.differences += [f"{inputs.md5_list}: lists {name}, which {options.text_dir} does not hold"
                                 for name in sorted(set(names) - present)]
        if names.get("eval.txt", PUBLISHED_MD5["eval.txt"]) != PUBLISHED_MD5["eval.txt"]:
            evidence.differences.append(f"{inputs.md5_list}: gives eval.txt the md5 {names['eval.txt']}, MLCommons' "
                                        f"published one is {PUBLISHED_MD5['eval.txt']}: it is not MLCommons' list")
    found = evidence.md5s = digests.md5s([*held, *inputs.parts] + ([inputs.md5_list] if inputs.md5_list else []),
                                         workers)  # the parts also without a list: prepare knows them by content
    evidence.list_md5 = found.get(inputs.md5_list)
    for expected, source, none in ((held, "MLCommons' is", "has no published md5"),
                                   (listed, f"{TEXT_MD5_LIST} gives", f"is not in {TEXT_MD5_LIST}")):
        evidence.differences += [f"{path}: md5 {found[path]}, {source} {want}" if want else f"{path}: {none}"
                                 for path, want in expected.items() if want != found[path]]
    if len(inputs.parts) != RELEASE_PARTS:
        evidence.differences.append(f"{options.text_dir}: {len(inputs.parts)} part files, MLCommons' release has "
                                    f"{RELEASE_PARTS}")
    return evidence


def _read_md5_list(path: Path) -> dict[str, str]:
    """`<md5>  <file name>` lines (md5sum's output) as name -> md5."""
    listed = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            fields = line.split(maxsplit=1)
            if len(fields) != 2 or len(fields[0]) != 32:
                raise InputError(f"{path}: line {number} is not '<md5>  <file name>': {line[:80]!r}")
            listed[Path(fields[1].strip().lstrip("*")).name] = fields[0].lower()
    return listed


def _copy_config(options, data: Path) -> str:
    target = data / "bert_config.json"
    with atomic_path(target) as tmp:
        shutil.copyfile(options.bert_config, tmp)
    return f"wrote {target}"


def _convert_checkpoint(options, inputs: _Inputs, made_from: str, data: Path) -> str:
    """Convert, unless the converted file is as recorded and was made from these TensorFlow files'
    contents (`made_from`); one without a record is converted again (a minute, not hours)."""
    target = data / CHECKPOINT_NAME
    finished = FinishedFiles(data / MANIFEST, {target: made_from})
    with Workers(1) as here:
        finished.check([target], lambda _: False, here)
    if finished.is_complete(target):
        finished.save()
        return f"{target}: already converted"
    done = convert(ConvertOptions(input=str(inputs.index), output=str(target), bert_config_path=options.bert_config,
                                  overwrite=True))  # a file left here is not this checkpoint's conversion
    finished.record(target, file_digest(target))
    finished.save()
    return done + "".join(f"; {note}" for note in finished.notes())


def _prepare_options(options: PrepareMlperfOptions, inputs: _Inputs) -> PrepareOptions:
    shared = {k: v for k, v in asdict(options).items() if k in PrepareOptions.__dataclass_fields__}
    return PrepareOptions(**shared, input_files=[str(p) for p in inputs.parts], method="reference",
                          eval_file=str(inputs.eval_text))


def _cut_is_whole(summary, options) -> bool:
    return len(summary.shards_written) + len(summary.shards_skipped) == options.num_shards


def _verdict(data: Path, differences: list[str], parts: int, list_md5: str | None) -> str:
    if not differences:
        return (f"{data} holds the MLPerf reference data: the vocab, config, eval.txt and checkpoint have the md5s "
                f"MLCommons published (held by this project), the {parts} text parts those of {TEXT_MD5_LIST} "
                f"(md5 {list_md5}), and the flags are the reference's")
    return (f"{data} is NOT the MLPerf reference data (results on it cannot be compared with MLPerf's); it "
            "differs in:\n" + "\n".join(f"  {line}" for line in differences))
