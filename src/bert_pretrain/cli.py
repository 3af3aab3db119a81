"""`bert-pretrain <command>`: parse the flags, call one function, turn bad input into a short message.

Each command's flags come from its options dataclass (options/: `add_options`); this module only maps
command names to those classes and to the function that runs them. options/ imports no torch, h5py or
numpy; the modules that do the work are imported inside the handlers, so `--help` is fast and works
without them.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass
from typing import Callable

from bert_pretrain.errors import InputError, said_by_the_first_process
from bert_pretrain.failure_cause import record_failure_cause
from bert_pretrain.options.bench import BenchOptions
from bert_pretrain.options.commands import ConvertOptions, DemoOptions, EvaluateOptions, InspectOptions
from bert_pretrain.options.fields import add_options, from_args
from bert_pretrain.options.prepare import PrepareMlperfOptions, PrepareOptions
from bert_pretrain.options.train import (
    TRAIN_DESCRIPTION,
    TRAIN_USAGE,
    RunConfig,
    add_arguments,
    is_main_process,
    load_config,
)

DESCRIPTION = """\
BERT pretraining (masked-LM + next-sentence prediction) as MLPerf Training defines it.

  prepare   raw text or a Wikipedia dump -> HDF5 shards in the MLPerf layout (+ eval set)
  prepare-mlperf  MLCommons' release -> the recipe's DATA folder, exactly the reference's, md5-checked
  train     shards + bert_config.json (+ init checkpoint) -> checkpoints, MLPerf log, metrics
  evaluate  checkpoint + eval shards -> masked-LM accuracy / loss, NSP accuracy (JSON)
  convert   TensorFlow / NVIDIA .pt / this project's checkpoints, HF folders  ->  NVIDIA .pt or HF folder
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


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks (each option's help already says its default)."""


@dataclass(frozen=True)
class Command:
    summary: str  # one line, in `bert-pretrain --help`
    run: Callable[[object], int]  # runs the command on its options
    options: type | None = None  # the options dataclass: its fields are the flags
    # train's flags come in several groups with TOML recipes and the reference-only flags, so it brings its
    # own parser setup and reading of the parsed flags instead of `options`
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    read: Callable[[argparse.Namespace], object] | None = None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        if self.configure is not None:
            self.configure(parser)
        else:
            add_options(parser, self.options)
        parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")

    def options_from(self, args: argparse.Namespace):
        return self.read(args) if self.read is not None else from_args(self.options, args)


def _prepare(options) -> int:
    from bert_pretrain.prepare.pipeline import run

    print(run(options).report())
    return 0


def _prepare_mlperf(options) -> int:
    from bert_pretrain.prepare.reference.mlperf import run

    print(run(options))
    return 0


def _evaluate(options) -> int:
    from bert_pretrain import strict_json
    from bert_pretrain.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(options)
    if result is not None:
        print(strict_json.dumps(result.to_dict()))
    return 0


def _convert(options) -> int:
    from bert_pretrain.convert import convert

    print(convert(options))
    return 0


def _bench(options) -> int:
    from bert_pretrain.bench.report import format_table, json_line
    from bert_pretrain.bench.run import run_bench

    result = run_bench(options, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(format_table(result))
    print(json_line(result))
    return 0


def _inspect(options) -> int:
    from pathlib import Path

    from bert_pretrain.tf_table import tf_index_path

    path = Path(options.shard)
    if ((path / "config.json").is_file() or path.suffix in (".pt", ".safetensors", ".bin", ".pth")
            or tf_index_path(path) is not None):
        from bert_pretrain.inspect_checkpoint import inspect_checkpoint

        print(inspect_checkpoint(path, as_json=options.json))
    else:
        from bert_pretrain.data.inspect_shard import inspect_shard

        print(inspect_shard(path, options.vocab_file, options.num_examples, as_json=options.json))
    return 0


def _train(config) -> int:
    from bert_pretrain.train.loop import train

    return train(config)


def _demo(options) -> int:
    from bert_pretrain.demo import run_demo

    return run_demo(options.output_dir, options.target_mlm_accuracy, options.max_steps, options.workers)


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.description, parser.usage = TRAIN_DESCRIPTION, TRAIN_USAGE
    add_arguments(parser)


def _read_train(args: argparse.Namespace) -> RunConfig:
    from bert_pretrain.devices import accelerator_type  # torch, imported only when a run starts

    with said_by_the_first_process():  # every process of the run reads the same flags and files
        config = load_config(args, accelerator=accelerator_type())
    if is_main_process():
        for note in config.notes:
            print(note, file=sys.stderr)
    return config


COMMANDS = {
    "prepare": Command("text or a Wikipedia dump -> MLPerf HDF5 shards (+ eval set)", _prepare, PrepareOptions),
    "prepare-mlperf": Command("MLCommons' BERT release -> the recipe's DATA folder (the reference's exact shards, eval "
                              "set, config, converted init checkpoint), checked against the published md5s",
                              _prepare_mlperf, PrepareMlperfOptions),
    "train": Command("pretrain BERT on MLPerf shards (LAMB, mixed precision, DDP, eval to a target, MLPerf log)",
                     _train, configure=_configure_train, read=_read_train),
    "evaluate": Command("masked-LM / NSP accuracy of a checkpoint on eval shards; prints one JSON line", _evaluate,
                        EvaluateOptions),
    "convert": Command("convert weights: TensorFlow checkpoints, NVIDIA .pt, this project's checkpoints, HF "
                       "transformers folders -> NVIDIA .pt or HF folders", _convert, ConvertOptions),
    "bench": Command("training-step throughput of this project vs HF transformers; prints a table and one JSON line",
                     _bench, BenchOptions),
    "inspect": Command("what is in a shard (counts, lengths, masking and NSP statistics, instances decoded) or a "
                       "checkpoint (the model's shape; for a training checkpoint, where the run stood)", _inspect,
                       InspectOptions),
    "demo": Command("the whole pipeline on a corpus built from this Python's documentation: prepare, train to a "
                    "target, export (a few minutes on 2 CPU cores)", _demo, DemoOptions),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bert-pretrain", description=DESCRIPTION, formatter_class=_Formatter)
    # a subcommand's own default would overwrite a shared dest
    parser.add_argument("--debug", dest="debug_anywhere", action="store_true",
                        help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    parser.subcommands = {}
    for name, command in COMMANDS.items():
        p = parser.subcommands[name] = sub.add_parser(name, help=command.summary, description=command.summary,
                                                      formatter_class=_Formatter)
        command.add_arguments(p)
    return parser


def _flag_key(flag: str) -> str:
    return flag.replace("-", "_")


def _flags_after_command(parser: argparse.ArgumentParser, argv: list[str]):
    """(the subcommand's parser, [(index in argv, flag)] of every `--flag` given to it), or (None, [])."""
    at = next((i for i, arg in enumerate(argv) if arg in parser.subcommands), None)
    if at is None:
        return None, []
    flags = []
    for i in range(at + 1, len(argv)):
        if argv[i] == "--":
            break
        if argv[i].startswith("--"):
            flags.append((i, argv[i].partition("=")[0]))
    return parser.subcommands[argv[at]], flags


def _with_underscores(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`argv` with each flag of the subcommand spelt with dashes (`--max-steps`, `--no-skip-checkpoint`) as the
    command spells it: the flags are the reference's underscore names, and many other tools use dashes."""
    command, given = _flags_after_command(parser, argv)
    if command is None:
        return argv
    known = command._option_string_actions
    spelt: dict[str, list[str]] = {}
    for flag in known:
        spelt.setdefault(_flag_key(flag), []).append(flag)
    rewritten = list(argv)
    for i, flag in given:
        matches = spelt.get(_flag_key(flag), [])
        if flag not in known and len(matches) == 1:
            rewritten[i] = matches[0] + argv[i][len(flag):]
    return rewritten


def _refuse_unknown_flags(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """A flag the subcommand does not have (nor begins, as argparse takes abbreviations) is named with the
    nearest one, as a `--config` file's unknown key is; before argparse, whose first complaint would be
    the required flag the misspelt one was meant to be."""
    command, given = _flags_after_command(parser, argv)
    if command is None:
        return
    flags = [flag for flag in command._option_string_actions if flag.startswith("--")]
    unknown = [flag for _, flag in given if not any(known.startswith(flag) for known in flags)]
    if not unknown:
        return
    hints = []
    for flag in unknown:
        close = difflib.get_close_matches(_flag_key(flag), [_flag_key(f) for f in flags], n=1)
        hints.append(f"{flag} (did you mean {next(f for f in flags if _flag_key(f) == close[0])}?)" if close
                     else flag)
    command.error(f"unrecognized arguments: {', '.join(hints)}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _with_underscores(parser, sys.argv[1:] if argv is None else argv)
    _refuse_unknown_flags(parser, argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's own error, so that the hint names its --help
        parser.subcommands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        command = COMMANDS[args.command]
        return command.run(command.options_from(args)) or 0
    except BrokenPipeError:  # stdout went to `head` or similar, which stopped reading: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # as a process killed by SIGPIPE
    except (InputError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        if args.debug or args.debug_anywhere:
            raise
        if not getattr(err, "reported", False):  # said already (train, several processes) or by the first process
            print(f"bert-pretrain {args.command}: error: {err}", file=sys.stderr)
        record_failure_cause(str(err))  # for the launcher, once torchrun's restarts are spent
        return 2
    except KeyboardInterrupt:
        print(f"bert-pretrain {args.command}: interrupted", file=sys.stderr)
        return 130
