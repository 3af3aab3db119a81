"""`bert-pretrain <command>`: parse the flags, call one function, turn bad input into a short message.

Each command has a `_<name>_arguments(parser)` that documents its flags and a `_<name>(args)` that
calls into the package. Heavy modules are imported inside the handlers so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bert_pretrain.errors import InputError

DESCRIPTION = """\
BERT pretraining (masked-LM + next-sentence prediction) as MLPerf Training defines it.

  prepare   raw text or a Wikipedia dump -> HDF5 shards in the MLPerf layout (+ eval set)
  train     shards + bert_config.json (+ init checkpoint) -> checkpoints, MLPerf log, metrics
  evaluate  checkpoint + eval shards -> masked-LM accuracy / loss, NSP accuracy (JSON)
  convert   NVIDIA .pt / this project's checkpoints  <->  HF transformers folders
  bench     training-step throughput, this model vs HF transformers
  inspect   what is in a shard, decoded back to text
  demo      the whole pipeline end to end on a small built-in corpus

Run `bert-pretrain <command> --help` for each command's options.
"""


class _Parser(argparse.ArgumentParser):
    """A flag mistake gets one line and a pointer to --help, not argparse's whole usage block (which for
    `prepare` or `train` is longer than a screen and hides the message)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n(`{self.prog} --help` lists every option)\n")


class _Refuse(argparse.Action):
    """A flag of the reference's scripts that means something else here: an error that says what to use."""

    def __init__(self, option_strings, dest, message: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", **kwargs)
        self.message = message

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string}: {self.message}")


def _truth(text: str) -> bool:
    """An absl-style boolean flag value (the reference scripts' --do_lower_case=True)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return value in ("true", "1", "yes")


# The demo's defaults (measured on 2 CPU cores: see README "The demo").
DEMO_TARGET = 0.14
DEMO_MAX_STEPS = 3000


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the descriptions' line breaks.

    No "(default: ...)" where the help already says its default, where there is none (None), or on a
    plain switch (a store_false flag's default is the opposite of what it does)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or action.default is None
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        return super()._get_help_string(action)


def _common(parser: argparse.ArgumentParser, dest: str = "debug") -> None:
    parser.add_argument("--debug", dest=dest, action="store_true", help="show the full traceback on errors")


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"),
        help="where to run; 'auto' takes this process's GPU when there is one, else the CPU",
    )


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init_checkpoint", required=True,
                   help="weights to evaluate: an NVIDIA {'model': state_dict} .pt (e.g. model.ckpt-28252.apex.pt), "
                        "a checkpoint written by `train`, a .safetensors file, or an HF model folder")
    p.add_argument("--bert_config_path", required=True, help="the model's bert_config.json")
    p.add_argument("--eval_dir", required=True, help="folder of eval shards (e.g. eval_set_uncompressed/)")
    p.add_argument("--eval_batch_size", type=int, default=128, help="sequences per batch, per process")
    p.add_argument("--max_seq_length", type=int, default=512, help="sequence length the shards were made with")
    p.add_argument("--max_predictions_per_seq", type=int, default=76, help="masked slots per sequence in the shards")
    p.add_argument("--num_eval_examples", type=int, default=None,
                   help="evaluate the first N samples (MLPerf: 10000); default: every sample in the folder")
    _device_argument(p)


def _evaluate(args) -> int:
    from bert_pretrain.evaluate import evaluate_checkpoint

    if args.eval_batch_size < 1:
        raise InputError(f"--eval_batch_size must be at least 1, got {args.eval_batch_size}")
    result = evaluate_checkpoint(
        args.init_checkpoint, args.bert_config_path, args.eval_dir, args.eval_batch_size,
        args.max_seq_length, args.max_predictions_per_seq, args.num_eval_examples, args.device,
    )
    if result is not None:
        print(json.dumps(result.to_dict()))
    return 0


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True,
                   help="an NVIDIA/this project's .pt ({'model': state_dict}), a .safetensors file, or an HF folder")
    p.add_argument("--bert_config_path", default=None,
                   help="bert_config.json of the input; not needed when the input is an HF folder (it has config.json)")
    p.add_argument("--output", required=True,
                   help="a folder -> HF transformers BertForPreTraining (config.json + model.safetensors); "
                        "a path ending in .pt -> NVIDIA format {'model': state_dict}, vocab padded to a multiple of 8")


def _convert(args) -> int:
    from pathlib import Path

    from bert_pretrain.convert import convert

    print(convert(Path(args.input), Path(args.output), args.bert_config_path))
    return 0


def _bench_arguments(p: argparse.ArgumentParser) -> None:
    from bert_pretrain.options import ATTENTION_BACKENDS, COMPILE_MODES

    p.add_argument("--model", default="tiny", choices=("tiny", "base", "large"),
                   help="model shape (tiny: 2 layers, hidden 128); ignored with --bert_config_path")
    p.add_argument("--bert_config_path", default=None, help="a bert_config.json giving the model's shape")
    p.add_argument("--seq", type=int, default=128, help="max_seq_length of the rows")
    p.add_argument("--batch", type=int, default=32, help="sequences per micro-batch")
    p.add_argument("--accumulation", type=int, default=1,
                   help="micro-batches per optimizer step (gradient accumulation), for both contestants")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"), help="autocast precision")
    p.add_argument("--steps", type=int, default=20,
                   help="timed steps per contestant (rounded down to a multiple of --rounds)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per contestant first (compilation happens here)")
    p.add_argument("--rounds", type=int, default=2, help="timed blocks per contestant, alternating between them")
    p.add_argument("--shard", default=None,
                   help="an HDF5 shard (padded or variable-length) to take rows from; default: synthetic rows "
                        "with the MLPerf Wikipedia length histogram")
    p.add_argument("--max_predictions_per_seq", type=int, default=None,
                   help="masked slots per row; default 76 at --seq 512, else ceil(0.15 * seq)")
    p.add_argument("--compare", default=None, choices=("hf",), help="also run HF transformers on the same batches")
    p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS,
                   help="attention backend for packed batches")
    compile_group = p.add_mutually_exclusive_group()
    compile_group.add_argument("--compile", dest="compile", action="store_true", default=None,
                               help="torch.compile the model (default: on CUDA only)")
    compile_group.add_argument("--no_compile", dest="compile", action="store_false", help="run the model eagerly")
    optimizer_group = p.add_mutually_exclusive_group()
    optimizer_group.add_argument("--compile_optimizer", dest="compile_optimizer", action="store_true", default=None,
                                 help="torch.compile LAMB's update, one unit per encoder layer (default: as the model)")
    optimizer_group.add_argument("--no_compile_optimizer", dest="compile_optimizer", action="store_false",
                                 help="run LAMB's multi-tensor eager update")
    p.add_argument("--fused_norm", action="store_true",
                   help="this project's model with fused_norm.py's Triton kernels for each sublayer's dense bias "
                        "+ dropout + residual + LayerNorm (needs Triton and a GPU)")
    p.add_argument("--compile_mode", default="default", choices=COMPILE_MODES,
                   help="torch.compile mode for this project's model (reduce-overhead adds CUDA graphs; "
                        "max-autotune also tunes the GEMM kernels, slow to compile)")
    p.add_argument("--hf_compile", action="store_true", help="torch.compile the HF model too")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="after timing, profile 3 of this project's steps: time by kind of work (GEMM, attention, "
                        "compiled kernels, optimizer, ...) and the top kernels, printed and written to "
                        "DIR/profile.md, with a Perfetto/Chrome trace in DIR/trace.json.gz")
    p.add_argument("--pad_to_multiple", type=int, default=1,
                   help="round each packed batch's token count up to a multiple of this (fewer distinct shapes)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's dense peak for MFU; default: looked up for known GPUs (none for CPUs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic rows and the weights")
    _device_argument(p)


def _bench(args) -> int:
    from bert_pretrain.bench.run import BenchOptions, format_table, json_line, run_bench

    names = [f for f in BenchOptions.__dataclass_fields__ if hasattr(args, f)]
    options = BenchOptions(**{name: getattr(args, name) for name in names})
    result = run_bench(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(result))
    print(json_line(result))
    return 0


def _prepare_arguments(p: argparse.ArgumentParser) -> None:
    io = p.add_argument_group("input and output")
    io.add_argument("--input_file", nargs="+", required=True, metavar="PATH",
                    help="text files, folders (searched recursively) or globs; several allowed; .bz2/.gz are read "
                         "compressed")
    io.add_argument("--input_format", default="auto", choices=("auto", "wikidump", "wikiextractor", "text"),
                    help="wikidump: pages-articles .xml(.bz2); wikiextractor: <doc> blocks; text: one sentence per "
                         "line, blank line between documents; auto: decided per file from its first bytes")
    io.add_argument("--output_dir", required=True,
                    help="writes <N>_shards_uncompressed/ and eval_set_uncompressed/ here (a DATA folder)")
    io.add_argument("--format", default="padded", choices=("padded", "varlength"),
                    help="padded: the MLPerf v1.0 schema; varlength: only real tokens, for the packed path")
    vocab = p.add_argument_group("vocab").add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab_file", help="a BERT WordPiece vocab.txt ([PAD] first; [UNK] [CLS] [SEP] [MASK])")
    vocab.add_argument("--vocab_size", type=int,
                       help="train a WordPiece vocab of this size on the input, written to OUTPUT_DIR/vocab.txt")
    p.add_argument("--no_lower_case", dest="lower_case", action="store_false",
                   help="keep case and accents (for cased vocabs); the default lower-cases as uncased BERT does")
    p.add_argument("--do_lower_case", dest="lower_case", type=_truth, nargs="?", const=True, metavar="BOOL",
                   help="create_pretraining_data.py's spelling: --do_lower_case=False is --no_lower_case")
    p.add_argument("--output_file", action=_Refuse, help=argparse.SUPPRESS,
                   message="prepare writes a folder of HDF5 shards (the MLPerf layout), not one file: "
                           "pass --output_dir DIR")
    inst = p.add_argument_group("instances (create_pretraining_data.py flags, MLPerf values)")
    inst.add_argument("--max_seq_length", type=int, default=512, help="tokens per instance, [CLS] and [SEP]s included")
    inst.add_argument("--max_predictions_per_seq", type=int, default=76, help="masked-LM slots per instance")
    inst.add_argument("--masked_lm_prob", type=float, default=0.15,
                      help="share of an instance's tokens to mask (80%% [MASK], 10%% random, 10%% kept)")
    inst.add_argument("--short_seq_prob", type=float, default=0.1,
                      help="probability of a shorter target length, so the model also sees short sequences")
    inst.add_argument("--dupe_factor", type=int, default=10, help="passes over the documents, each masked anew")
    inst.add_argument("--random_seed", type=int, default=12345,
                      help="seed of the document shuffle, pairing and masking: same seed, same shards")
    inst.add_argument("--whole_word_mask", "--do_whole_word_mask", type=_truth, nargs="?", const=True, default=False,
                      metavar="BOOL", help="mask whole words, not single WordPieces")
    out = p.add_argument_group("shards and eval set")
    out.add_argument("--num_shards", type=int, default=1, help="training shards (MLPerf: 2048)")
    out.add_argument("--num_eval_examples", type=int, default=0,
                     help="write an eval set of this many instances (MLPerf: 10000); 0 = none")
    out.add_argument("--num_eval_documents", type=int, default=10000,
                     help="documents held out for the eval set, never in training shards (MLPerf: 10000)")
    run = p.add_argument_group("scale")
    run.add_argument("--workers", type=int, default=None,
                     help="processes on this machine (default: one per CPU this process may use)")
    run.add_argument("--shard_range", default=None, metavar="FIRST:END",
                     help="write only shards FIRST..END-1 (one slice per machine; same files as one machine "
                          "writes); the run whose range starts at 0 writes the eval set")
    run.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")


def _prepare(args) -> int:
    from bert_pretrain.data.prepare import PrepareOptions, run
    from bert_pretrain.data.prepare_options import default_workers

    options = PrepareOptions(
        input_files=args.input_file, output_dir=args.output_dir, vocab_file=args.vocab_file,
        vocab_size=args.vocab_size, lower_case=args.lower_case, input_format=args.input_format,
        num_shards=args.num_shards, max_seq_length=args.max_seq_length,
        max_predictions_per_seq=args.max_predictions_per_seq, masked_lm_prob=args.masked_lm_prob,
        short_seq_prob=args.short_seq_prob, dupe_factor=args.dupe_factor, random_seed=args.random_seed,
        whole_word_mask=args.whole_word_mask, num_eval_examples=args.num_eval_examples,
        num_eval_documents=args.num_eval_documents, format=args.format,
        workers=default_workers() if args.workers is None else args.workers,
        shard_range=args.shard_range, progress=args.progress,
    )
    print(run(options).report())
    return 0


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shard", metavar="PATH", help="an HDF5 shard (padded or variable-length), or a checkpoint: "
                                                 "a .pt (NVIDIA's or a training checkpoint), .safetensors or an HF "
                                                 "folder")
    p.add_argument("--vocab_file", default=None, help="the vocab the shard was made with; needed to decode text")
    p.add_argument("--num_examples", type=int, default=3, help="instances to decode (with --vocab_file)")
    p.add_argument("--json", action="store_true", help="print the statistics as one JSON object")


def _inspect(args) -> int:
    from pathlib import Path

    path = Path(args.shard)
    if (path / "config.json").is_file() or path.suffix in (".pt", ".safetensors", ".bin", ".pth"):
        from bert_pretrain.inspect_checkpoint import inspect_checkpoint

        print(inspect_checkpoint(path, as_json=args.json))
    else:
        from bert_pretrain.data.inspect_shard import inspect_shard

        print(inspect_shard(path, args.vocab_file, args.num_examples, as_json=args.json))
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from bert_pretrain.train.config import add_arguments

    p.description = TRAIN_DESCRIPTION
    p.usage = "%(prog)s [--config RUN.toml] [options]   (every option below; reference names and meanings)"
    add_arguments(p)


def _train(args) -> int:
    from bert_pretrain.train.config import is_main_process, load_config

    config = load_config(args)
    if is_main_process():
        for note in config.notes:
            print(note, file=sys.stderr)
    from bert_pretrain.train.loop import train

    return train(config)


TRAIN_DESCRIPTION = """\
Pretrain BERT (masked-LM + NSP) as MLPerf Training v1.0 does: LAMB, the poly-decay schedule, eval on
the MLPerf cadence, stop at --target_mlm_accuracy; one process per GPU under torchrun (DDP).

  bert-pretrain train --input_dir $DATA/2048_shards_uncompressed --eval_dir $DATA/eval_set_uncompressed \\
      --bert_config_path $DATA/bert_config.json --init_checkpoint $DATA/model.ckpt-28252.apex.pt \\
      --output_dir results --config configs/bert_large_mlperf.toml --fp16
  torchrun --nproc_per_node 8 -m bert_pretrain train ...     (8 GPUs; train_bert_pretraining_amp_dist.sh does this)

Options come from the defaults below, then a --config TOML file (keys = flag names), then the flags
given here (the last word wins). --train_batch_size is per process per optimizer step, split into
--gradient_accumulation_steps micro-batches; the global batch is train_batch_size x processes.
Writes to --output_dir: checkpoints (<phase>_ckpt_<step>.pt, loadable by `evaluate` and `convert`),
mlperf.log, metrics.jsonl, metrics.png, summary.json. Ctrl-C / SIGTERM writes a checkpoint and
stops cleanly; --resume_from_checkpoint continues exactly. See docs/training.md.
"""


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output_dir", default="demo_run",
                   help="where the corpus, the DATA folder (shards, eval set, vocab, bert_config.json), the run's "
                        "results (MLPerf log, metrics, plot, checkpoints) and the HF export go")
    p.add_argument("--target_mlm_accuracy", type=float, default=DEMO_TARGET,
                   help="stop when the held-out masked-LM accuracy reaches this (MLPerf's BERT-large target is 0.720; "
                        "a small model on this small corpus reaches less)")
    p.add_argument("--max_steps", type=int, default=DEMO_MAX_STEPS,
                   help="stop here if the target is not reached (each step is 32 sequences of 128 tokens)")
    p.add_argument("--workers", type=int, default=2, help="processes for data preparation")


def _demo(args) -> int:
    from bert_pretrain.demo import run_demo

    return run_demo(args.output_dir, args.target_mlm_accuracy, args.max_steps, args.workers)


# name -> (one-line help, add-arguments function, handler)
COMMANDS = {
    "prepare": ("text or a Wikipedia dump -> MLPerf HDF5 shards (+ eval set)", _prepare_arguments, _prepare),
    "train": ("pretrain BERT on MLPerf shards (LAMB, mixed precision, DDP, eval to a target, MLPerf log)",
              _train_arguments, _train),
    "evaluate": ("masked-LM / NSP accuracy of a checkpoint on eval shards; prints one JSON line",
                 _evaluate_arguments, _evaluate),
    "convert": ("convert weights between NVIDIA .pt, this project's checkpoints and HF transformers",
                _convert_arguments, _convert),
    "bench": ("training-step throughput of this project vs HF transformers; prints a table and one JSON line",
              _bench_arguments, _bench),
    "inspect": ("what is in a shard (counts, lengths, masking and NSP statistics, instances decoded) or a "
                "checkpoint (the model's shape; for a training checkpoint, where the run stood)",
                _inspect_arguments, _inspect),
    "demo": ("the whole pipeline on a corpus built from this Python's documentation: prepare, train to a "
             "target, export (a few minutes on 2 CPU cores)", _demo_arguments, _demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bert-pretrain", description=DESCRIPTION, formatter_class=_Formatter)
    _common(parser, dest="debug_anywhere")  # a subcommand's own default would overwrite a shared dest
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    parser.subcommands = {}
    for name, (summary, add_arguments, handler) in COMMANDS.items():
        p = parser.subcommands[name] = sub.add_parser(name, help=summary, description=summary,
                                                      formatter_class=_Formatter)
        add_arguments(p)
        _common(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's own error, so that the hint names its --help
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return args.handler(args) or 0
    except BrokenPipeError:  # stdout went to `head` or similar, which stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # as a process killed by SIGPIPE
    except (InputError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        if args.debug or args.debug_anywhere:
            raise
        if not getattr(err, "reported", False):  # train reports its own under several processes
            print(f"bert-pretrain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bert-pretrain {args.command}: interrupted", file=sys.stderr)
        return 130
