"""The command line as a whole: every command's --help works, and building the parser loads no
data-preparation library (a GPU box running `train` or `bench` need not have them)."""

import subprocess
import sys

import pytest

from bert_pretrain.cli import COMMANDS
from conftest import run_cli


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
