"""The command line as a whole: every command's --help works, and building the parser loads no
data-preparation library (a GPU box running `train` or `bench` need not have them)."""

import subprocess
import sys

import pytest
from conftest import cli_here, run_cli

from bert_pretrain.cli import COMMANDS, build_parser


def test_building_the_parser_imports_no_data_preparation_library_and_no_torch():
    """`--help` stays fast, and `prepare` (which needs no torch) does not pay torch's import."""
    code = ("import sys; from bert_pretrain.cli import build_parser; build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('blingfire', 'defusedxml', 'mwparserfromhell', 'tokenizers', 'transformers', 'torch')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command):
    proc = run_cli(command, "--help")
    assert proc.returncode == 0 and "usage: bert-pretrain " + command in proc.stdout


def test_a_flag_mistake_gets_one_line_and_a_pointer_to_help():
    proc = run_cli("prepare", "--input_file", "x", "--vocab_file", "v.txt", "--vocab_size", "300", "--output_dir", "o")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "bert-pretrain prepare: error: argument --vocab_size: not allowed with argument --vocab_file",
        "(`bert-pretrain prepare --help` lists every option)"]
    assert "usage:" not in proc.stdout + proc.stderr


def test_an_unknown_flag_points_to_the_subcommand_help():
    proc = run_cli("prepare", "--input_file", "x", "--vocab_file", "v.txt", "--output_dir", "o", "--bogus", "1")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["bert-pretrain prepare: error: unrecognized arguments: --bogus",
                                        "(`bert-pretrain prepare --help` lists every option)"]


def test_a_mistyped_flag_is_named_with_the_nearest_one_before_the_required_flag_it_was_meant_to_be():
    proc = cli_here("evaluate", "--init_chekpoint", "w.pt", "--bert_config_path", "c.json", "--eval_dir", "e")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == ("bert-pretrain evaluate: error: unrecognized arguments: --init_chekpoint "
                                           "(did you mean --init_checkpoint?)")


@pytest.mark.parametrize("command, dashed, underscored", [
    ("train", ["--max-steps", "7", "--no-skip-checkpoint", "--input-dir=shards"],
     ["--max_steps", "7", "--no-skip_checkpoint", "--input_dir=shards"]),
    ("prepare", ["--input-file", "x", "--vocab-file", "v.txt", "--output-dir", "o", "--do-lower-case=False"],
     ["--input_file", "x", "--vocab_file", "v.txt", "--output_dir", "o", "--do_lower_case=False"]),
    ("convert", ["--input", "a.pt", "--output", "b", "--bert-config-path", "c.json"],
     ["--input", "a.pt", "--output", "b", "--bert_config_path", "c.json"]),
])
def test_flags_spelt_with_dashes_mean_the_same_as_with_underscores(command, dashed, underscored):
    from bert_pretrain.cli import _with_underscores

    parser = build_parser()
    assert _with_underscores(parser, [command, *dashed]) == [command, *underscored]
    assert vars(parser.parse_args(_with_underscores(parser, [command, *dashed]))) == vars(
        parser.parse_args([command, *underscored]))


def test_create_pretraining_data_spellings_are_understood():
    """--do_lower_case=False and --do_whole_word_mask=True as google-research/bert's script takes them;
    its --output_file (one TFRecord) gets an error that names --output_dir."""
    base = ["prepare", "--input_file", "x", "--vocab_file", "v.txt", "--output_dir", "o"]
    parse = build_parser().parse_args
    assert parse(base).lower_case and not parse(base).whole_word_mask
    args = parse(base + ["--do_lower_case=False", "--do_whole_word_mask=True"])
    assert not args.lower_case and args.whole_word_mask
    assert parse(base + ["--do_lower_case"]).lower_case and parse(base + ["--whole_word_mask"]).whole_word_mask
    proc = run_cli(*base, "--output_file=/tmp/tf_examples.tfrecord")
    assert proc.returncode == 2 and "--output_file: prepare writes a folder of HDF5 shards" in proc.stderr
    bad = run_cli(*base, "--do_lower_case=maybe")
    assert bad.returncode == 2 and "expected True or False, got 'maybe'" in bad.stderr


def test_a_dashed_flag_reaches_the_command(tmp_path):
    """`--bert-config-path` is read as --bert_config_path: the command runs and names the missing file."""
    missing = tmp_path / "missing.pt"
    proc = cli_here("convert", "--input", str(missing), "--output", str(tmp_path / "out.pt"),
                    "--bert-config-path", str(tmp_path / "bert_config.json"))
    assert proc.returncode == 2 and "unrecognized" not in proc.stderr
    assert proc.stderr.strip() == f"bert-pretrain convert: error: {tmp_path / 'bert_config.json'}: no such " \
                                  "bert_config.json; check --bert_config_path"
