"""The two text-stage choices of docs/data.md, timed: the sentence splitter and the memoized tokenizer.

    .venv/bin/python benchmarks/text_bench.py [--corpus DIR] [--vocab FILE] [--repeats 3] [--report PATH]

On MLPerf's WikiExtractor sample of Wikipedia (4 MB; `--corpus`, by default the test data beside the
repository) and the BERT uncased vocab, in this one process (one core: RAYON_NUM_THREADS=1 is set
before tokenizers loads):
- sentence splitting of the first 400 paragraphs of wiki_00 (WikiExtractor's leftovers cleaned as
  `prepare` cleans them): blingfire, and pysbd when it is installed (`pip install pysbd`), with the
  sentence counts and the share of sentences the two agree on;
- tokenizing every sentence of the sample: `WordPieceTokenizer.encode_sentences` (the memo, fresh
  each repeat) against HF's own pipeline on the same sentences, lower-cased by `str.lower` first as the
  reference lower-cases (`Tokenizer.encode_batch`), after checking both give the same ids; and HF's cost
  per `encode` call on one short word.
Best of `--repeats` for each; a markdown report with the machine and versions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # HF tokenizers' thread pool: one core, like a worker

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def best_of(repeats: int, function) -> tuple[float, object]:
    """(the fastest of `repeats` wall-clock times in seconds, the last result)."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


def paragraphs_of(path: Path, count: int) -> list[str]:
    """The first `count` paragraphs of a WikiExtractor file, cleaned as `prepare` cleans them."""
    from bert_pretrain.prepare.text import clean_wiki_leftovers

    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    kept = [clean_wiki_leftovers(line) for line in lines if line and not line.startswith(("<doc", "</doc"))]
    return kept[:count]


def splitter_rows(paragraphs: list[str], repeats: int) -> list[str]:
    from bert_pretrain.prepare.text import split_sentences

    text = "\n".join(paragraphs)
    seconds, ours = best_of(repeats, lambda: split_sentences(text))
    rows = [f"| blingfire (`split_sentences`) | {seconds:.3f} | {len(ours):,} | |"]
    try:
        import pysbd
    except ImportError:
        return rows + ["| pysbd | not installed (`pip install pysbd` to compare) | | |"]
    segmenter = pysbd.Segmenter(language="en", clean=False)
    seconds_pysbd, theirs = best_of(repeats, lambda: [s.strip() for p in paragraphs for s in segmenter.segment(p)
                                                      if s.strip()])
    agree = len(set(ours) & set(theirs)) / max(len(set(ours) | set(theirs)), 1)
    return rows + [f"| pysbd | {seconds_pysbd:.3f} ({seconds_pysbd / seconds:.0f}x blingfire's) | {len(theirs):,} | "
                   f"{agree:.1%} of the distinct sentences |"]


def tokenizer_rows(corpus: Path, vocab: Path, repeats: int) -> tuple[list[str], int]:
    from bert_pretrain.prepare.text import split_sentences
    from bert_pretrain.prepare.tokenization import WordPieceTokenizer

    sentences = []
    for path in sorted(corpus.glob("wiki_*")):
        sentences += split_sentences("\n".join(paragraphs_of(path, 10**9)))
    hf = WordPieceTokenizer.from_vocab_file(vocab)._hf
    memo_seconds, (ids, _) = best_of(repeats, lambda: WordPieceTokenizer.from_vocab_file(vocab).encode_sentences(
        sentences))
    # str.lower first, as the reference lower-cases (HF's per-character lowering misses the final sigma)
    lowered = [s.lower() for s in sentences]
    hf_seconds, encodings = best_of(repeats, lambda: hf.encode_batch(lowered, add_special_tokens=False))
    same = ids.tolist() == [i for e in encodings for i in e.ids]
    calls = 20_000
    call_seconds, _ = best_of(repeats, lambda: [hf.encode("house", add_special_tokens=False) for _ in range(calls)])
    return [
        f"| `encode_sentences` (memo) | {memo_seconds:.2f} | {len(ids):,} | "
        f"{'same ids as HF' if same else 'IDS DIFFER'} |",
        f"| HF `encode_batch` | {hf_seconds:.2f} ({hf_seconds / memo_seconds:.1f}x the memo's) | "
        f"{sum(len(e.ids) for e in encodings):,} | |",
        f"| HF `encode`, one short word | {call_seconds / calls * 1e6:.1f} µs per call | | |",
    ], len(sentences)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=SHARED / "corpus" / "mlperf_wiki_sample")
    parser.add_argument("--vocab", type=Path, default=SHARED / "vocab" / "bert-uncased-vocab.txt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--report", type=Path, default=None, help="write the markdown report here as well")
    args = parser.parse_args()
    if not (args.corpus / "wiki_00").is_file() or not args.vocab.is_file():
        sys.exit(f"text_bench: needs {args.corpus}/wiki_00 and {args.vocab} (pass --corpus and --vocab)")
    import importlib.metadata

    import tokenizers

    try:
        peer = f", pysbd {importlib.metadata.version('pysbd')}"
    except importlib.metadata.PackageNotFoundError:
        peer = ""
    split = splitter_rows(paragraphs_of(args.corpus / "wiki_00", 400), args.repeats)
    tokens, sentence_count = tokenizer_rows(args.corpus, args.vocab, args.repeats)
    report = "\n".join([
        f"# Text stage of `prepare`: sentence splitter and tokenizer ({datetime.date.today()})",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, one core used; Python "
        f"{platform.python_version()}, tokenizers {tokenizers.__version__}{peer}. Command: "
        f"`.venv/bin/python benchmarks/text_bench.py --repeats {args.repeats}`; best of {args.repeats}.",
        "",
        "First 400 paragraphs of `wiki_00` of the MLPerf Wikipedia sample:",
        "",
        "| splitter | seconds | sentences | agreement |",
        "|---|---:|---:|---|",
        *split,
        "",
        f"Every sentence of the sample ({sentence_count:,} sentences), uncased BERT vocab:",
        "",
        "| tokenizer | seconds | tokens | |",
        "|---|---:|---:|---|",
        *tokens,
    ]) + "\n"
    print(report)
    if args.report:
        args.report.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
