"""Every input file known by its content: an md5 per file, kept in `prepare_manifest.json` with the
file status that vouches for it, so that a rerun reads again only the files that may have changed.

    digests = InputDigests(layout.manifest_path)
    md5s = digests.md5s(paths, workers)  # {path: md5}: from the record where the status still matches
    digests.save()

The rule: a record is trusted while the file's size, mtime and ctime are the ones recorded. Size and
mtime alone are not enough: `wget`, `cp -p`, `rsync -t` and `tar -x` set the mtime of a fetched copy to
the original's, so a part fetched again after a damaged download can match both; the ctime is set by
the system on any write or replacement and no tool sets it back. A file changed within
`_RACY_WINDOW_NS` of being read (a second edit inside the same clock tick would keep its status) is
recorded without a status and read again by the next run. md5, not CRC-32: MLCommons publishes md5s,
so prepare-mlperf's check and the rerun's share one read of each input.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from bert_pretrain.errors import InputError
from bert_pretrain.prepare.manifest import read_manifest, update_manifest
from bert_pretrain.prepare.workers import Workers

INPUTS_KEY = "input_files"  # absolute path -> {"bytes", "mtime_ns", "ctime_ns", "md5"}; not a setting
_CHUNK = 1 << 24
_RACY_WINDOW_NS = 2_000_000_000  # coarser than any file system's timestamps that prepare is likely to read
_EMPTY_MD5 = hashlib.md5(b"").hexdigest()


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _status(path: Path) -> dict:
    info = os.stat(path)
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}


def input_record(path: Path) -> dict:
    """The file's status, taken before it is read, and its md5 (status left out when it is racy)."""
    status, started = _status(path), time.time_ns()
    md5 = md5_of(path)
    racy = started - max(status["mtime_ns"], status["ctime_ns"]) < _RACY_WINDOW_NS
    return {"md5": md5} if racy else {**status, "md5": md5}


def fingerprint(md5s: list[str]) -> str:
    """One name for an ordered list of input contents (what an output was made from)."""
    return hashlib.sha256("\n".join(md5s).encode()).hexdigest()[:32]


def refuse_duplicates(md5s: dict[Path, str]) -> None:
    """Raise InputError when two input files hold the same bytes (a part given twice, by two names or
    paths): its documents would count twice, and an eval file among the parts would be trained on.
    Empty files are alike and harmless (counted as empty)."""
    first: dict[str, Path] = {}
    for path, md5 in md5s.items():
        if md5 != _EMPTY_MD5 and first.setdefault(md5, path) != path:
            raise InputError(f"{first[md5]} and {path}: the same bytes (md5 {md5}) given twice as input, so each of "
                             "its documents would count twice; pass each file once")


class InputDigests:
    """The input records of one output folder's manifest; `md5s` reads only the files whose status
    changed, and notes those whose content changed since they were recorded."""

    def __init__(self, manifest: Path):
        self.manifest = manifest
        self._records: dict[str, dict] = read_manifest(manifest).get(INPUTS_KEY, {})
        self._updated: dict[str, dict] = {}
        self.read: list[Path] = []  # read in full by this run
        self.changed: list[Path] = []  # whose md5 differs from its record

    @staticmethod
    def _key(path: Path) -> str:
        return str(path.resolve())

    def md5s(self, paths: list[Path], workers: Workers) -> dict[Path, str]:
        found, to_read = {}, []
        for path in dict.fromkeys(paths):
            record = self._records.get(self._key(path))
            if record is not None and "mtime_ns" in record and _status(path) == {
                    k: v for k, v in record.items() if k != "md5"}:
                found[path] = record["md5"]
            else:
                to_read.append(path)
        for path, record in zip(to_read, workers.ordered(input_record, ((p,) for p in to_read))):
            old = self._records.get(self._key(path))
            if old is not None and old["md5"] != record["md5"]:
                self.changed.append(path)
            self._records[self._key(path)] = self._updated[self._key(path)] = record
            found[path] = record["md5"]
            self.read.append(path)
        return {path: found[path] for path in paths}

    def save(self) -> None:
        if self._updated:
            update_manifest(self.manifest, INPUTS_KEY, self._updated)
            self._updated = {}

    def notes(self) -> list[str]:
        if not self.changed:
            return []
        names = ", ".join(str(p) for p in self.changed[:3]) + (f" and {len(self.changed) - 3} more"
                                                               if len(self.changed) > 3 else "")
        return [f"{len(self.changed)} input files changed since an earlier run read them (md5 differs): {names}; "
                "what was made from them is made again"]
