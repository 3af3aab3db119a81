"""The command line as a whole: every command's --help works, and building the parser loads no
data-preparation library (a GPU box running `train` or `bench` need not have them)."""

import subprocess
import sys

import pytest
from conftest import run_cli

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
    assert proc.stderr.splitlines() == ["bert-pretrain prepare: error: unrecognized arguments: --bogus 1",
                                        "(`bert-pretrain prepare --help` lists every option)"]


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
