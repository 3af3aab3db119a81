"""The rule that decides which inputs a rerun reads again (prepare/input_digests.py), on real files."""

import hashlib
import os

import pytest
from conftest import change_a_word

from bert_pretrain.errors import InputError
from bert_pretrain.prepare import input_digests
from bert_pretrain.prepare.input_digests import InputDigests, refuse_duplicates
from bert_pretrain.prepare.workers import Workers


def digest(manifest, paths) -> InputDigests:
    digests = InputDigests(manifest)
    with Workers(1) as workers:
        found = digests.md5s(paths, workers)
    assert found == {p: hashlib.md5(p.read_bytes()).hexdigest() for p in paths}
    digests.save()
    return digests


def test_a_file_is_read_again_only_when_its_status_changed(tmp_path, monkeypatch):
    monkeypatch.setattr(input_digests, "_RACY_WINDOW_NS", 0)
    manifest, part = tmp_path / "manifest.json", tmp_path / "part"
    part.write_text("an anarchist wrote this line\n")
    assert digest(manifest, [part]).read == [part]
    assert digest(manifest, [part]).read == []  # size, mtime and ctime as recorded
    os.utime(part)  # a new mtime, the same bytes: read, not changed
    again = digest(manifest, [part])
    assert again.read == [part] and again.changed == []
    change_a_word(part)  # same size, mtime set back: the ctime tells
    changed = digest(manifest, [part])
    assert changed.read == [part] and changed.changed == [part] and str(part) in changed.notes()[0]


def test_a_file_changed_just_before_it_was_read_is_read_again_next_time(tmp_path):
    """Within the racy window a second edit could keep size, mtime and ctime: no status is recorded."""
    manifest, part = tmp_path / "manifest.json", tmp_path / "part"
    part.write_text("written a moment ago\n")
    digest(manifest, [part])
    assert digest(manifest, [part]).read == [part]


def test_two_inputs_with_the_same_bytes_are_refused_empty_ones_are_not(tmp_path):
    one, two, empty, blank = (tmp_path / n for n in ("one", "two", "empty", "blank"))
    one.write_text("a part\n")
    two.write_text("a part\n")
    empty.write_bytes(b"")
    blank.write_bytes(b"")
    md5s = {p: hashlib.md5(p.read_bytes()).hexdigest() for p in (one, empty, blank)}
    refuse_duplicates(md5s)
    with pytest.raises(InputError, match=f"{one} and {two}: the same bytes"):
        refuse_duplicates({**md5s, two: md5s[one]})
