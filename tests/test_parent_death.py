"""parent_death: a child that ends with its parent, even when the parent died before the child asked."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO
from support.processes import wait_until_gone

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")


def test_a_parent_gone_before_the_request_is_noticed_at_once():
    """The race: a parent pid that is not this process's parent (any more) means the parent died already."""
    child = subprocess.run([sys.executable, "-c", "from bert_pretrain.parent_death import die_with_parent; "
                            "die_with_parent(parent_pid=1 << 22); import time; time.sleep(30)"], env=ENV, timeout=60)
    assert child.returncode == -signal.SIGTERM


def test_a_child_stops_when_its_parent_is_killed_outright():
    parent_code = (
        "import subprocess, sys, time\n"
        "code = 'import os; from bert_pretrain.parent_death import die_with_parent; die_with_parent(%d); "
        "print(os.getpid(), flush=True); import time; time.sleep(600)' % __import__('os').getpid()\n"
        "child = subprocess.Popen([sys.executable, '-c', code])\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], env=ENV, stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    assert wait_until_gone(child_pid)


