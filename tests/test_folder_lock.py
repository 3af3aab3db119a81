"""folder_lock: one writer per output folder, refused at once with the holder's pid, never left stale."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO

from bert_pretrain.errors import InputError
from bert_pretrain.folder_lock import LOCK_FILE, FolderBusy, hold_folder

HOLDER = """
import sys, time
from bert_pretrain.folder_lock import hold_folder
spans = [tuple(map(int, s.split(":"))) for s in sys.argv[2:]] or [(0, 0)]
with hold_folder(sys.argv[1], "--output_dir", "test", spans):
    print("held", flush=True)
    time.sleep(600)
"""


def start_holder(folder, *spans: str) -> subprocess.Popen:
    """Another process that holds `spans` ("first:end") of `folder`'s lock until it is killed."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), *spans], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_kill_9_leaves_no_stale_lock(tmp_path):
    holder = start_holder(tmp_path / "out")
    try:
        with pytest.raises(FolderBusy) as refused, hold_folder(tmp_path / "out", "--output_dir", "shards 0:4"):
            pass
        assert refused.value.pid == holder.pid
        message = str(refused.value)
        assert message.startswith(f"--output_dir {(tmp_path / 'out').resolve()}: another bert-pretrain process "
                                  f"(pid {holder.pid}) is writing") and "\n" not in message
        assert "shards 0:4" in message and "pass another --output_dir" in message
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK_FILE]  # the file stays; the kernel lock went
    with hold_folder(tmp_path / "out", "--output_dir", "shards 0:4"):
        pass


def test_disjoint_spans_share_a_folder_and_overlapping_ones_do_not(tmp_path):
    holder = start_holder(tmp_path, "1:5")
    try:
        with hold_folder(tmp_path, "--output_dir", "test", [(5, 9), (0, 1)]):
            pass
        for overlapping in ([(4, 6)], [(0, 0)]):
            with pytest.raises(FolderBusy, match=f"pid {holder.pid}"), hold_folder(tmp_path, "--output_dir", "test",
                                                                                   overlapping):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_holds_nest_in_one_process_and_the_inner_one_keeps_the_outer_lock(tmp_path):
    with hold_folder(tmp_path, "--output_dir", "the DATA folder"):
        with hold_folder(tmp_path, "--output_dir", "shards 0:4", [(1, 5)]):
            pass
        probe = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path), "2:3"], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=60)
        assert probe.returncode == 1 and f"pid {os.getpid()}" in probe.stderr


def test_a_file_or_an_unwritable_place_is_a_one_line_error(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(InputError, match="--output_dir .*a_file: is a file; pass a folder"), \
            hold_folder(tmp_path / "a_file", "--output_dir", "test"):
        pass
    assert (tmp_path / "a_file").read_text() == "mine"
    with pytest.raises(InputError, match="a_file/below: cannot write the output folder"), \
            hold_folder(tmp_path / "a_file" / "below", "--output_dir", "test"):
        pass
