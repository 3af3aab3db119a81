"""`prepare_manifest.json`: the settings that determine an output folder's content, and a record of
each file `prepare` finished there (its size, CRC-32 and what it was made from), checked when a rerun
decides what is done.

What a file was made from is the fingerprint (input_digests.py) of the contents of the inputs it
depends on: a rerun whose inputs hold other content makes the file again, whatever their names and
sizes say.

A file under its final name was whole when it was renamed (atomic_path); the record catches what
happened to it since: a byte changed in place, a copy cut short. A rerun makes a file whose size or
CRC-32 differs from its record again, and says so. CRC-32 (zlib) finds accidental damage, not a
deliberate edit: whoever can edit a shard can edit the manifest as well. A file without a record (made
before records were kept, or finished just before a killed run could record it) is checked the earlier
way, by opening it, and recorded.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable

from bert_pretrain import strict_json
from bert_pretrain.atomic import atomic_path
from bert_pretrain.prepare.workers import Workers

RECORDS_KEY = "finished_files"  # relative path -> {"bytes": size, "crc32": hex, "inputs": fingerprint}; not a setting
_CHUNK = 1 << 20
_SAVE_EVERY_S = 2.0  # a killed run loses at most this much of the record: those files are checked by opening


def read_manifest(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_manifest(path: Path, values: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(strict_json.dumps(values, indent=1) + "\n")


def update_manifest(path: Path, key: str, records: dict) -> None:
    """Add `records` to the manifest's `key` section, keeping the rest (read, merged, written whole)."""
    values = read_manifest(path)
    values[key] = {**values.get(key, {}), **records}
    write_manifest(path, values)


def file_digest(path: Path) -> dict:
    """{"bytes": size, "crc32": hex} of the file's bytes, read in 1 MiB chunks."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return {"bytes": size, "crc32": f"{crc:08x}"}


class FinishedFiles:
    """The records of one output folder's manifest, and this run's verdict on each file it asked about.

    `made_from` names, for every path this run asks about, the fingerprint of the input contents it is
    made from now. `check` decides, for a batch of paths, which are complete (digesting them in the
    workers); `record` notes a file this run finished; `save` writes the records this run changed into
    the manifest, keeping those another run of another range wrote meanwhile.
    """

    def __init__(self, manifest: Path, made_from: dict[Path, str]):
        self.manifest = manifest
        self.made_from = made_from
        self._records: dict[str, dict] = read_manifest(manifest).get(RECORDS_KEY, {})
        self._updated: dict[str, dict] = {}
        self._complete: dict[Path, bool] = {}
        self._saved_at = time.monotonic()
        self.changed: list[Path] = []  # existed, but differ from their record: made again
        self.stale: list[Path] = []  # made from other input contents (or before they were recorded): made again
        self.unrecorded: list[Path] = []  # whole without a record: recorded now

    def _key(self, path: Path) -> str:
        return path.relative_to(self.manifest.parent).as_posix()

    def check(self, paths: Iterable[Path], opens: Callable[[Path], bool], workers: Workers) -> None:
        """Decide which of `paths` are complete: those made from the inputs' present contents whose size
        and CRC-32 match their record, or, without a record, that `opens` accepts (a file is recorded
        within seconds of its rename: one without a record was finished just before a run was killed, or
        by a run of another range that has not saved its records yet)."""
        to_digest = []
        for path in paths:
            if path in self._complete:
                continue
            record = self._records.get(self._key(path))
            if not path.is_file():
                self._complete[path] = False
            elif record is not None and record.get("inputs") != self.made_from[path]:  # no need to read it
                self._complete[path] = False
                self.stale.append(path)
            elif record is not None and record["bytes"] != path.stat().st_size:  # no need to read it
                self._complete[path] = False
                self.changed.append(path)
            else:
                to_digest.append(path)
        for path, digest in zip(to_digest, workers.ordered(file_digest, ((p,) for p in to_digest))):
            record = self._records.get(self._key(path))
            if record is None:
                self._complete[path] = opens(path)
                if self._complete[path]:
                    self.unrecorded.append(path)
                    self.record(path, digest)
            else:
                self._complete[path] = {k: record.get(k) for k in digest} == digest
                if not self._complete[path]:
                    self.changed.append(path)

    def recorded(self, path: Path) -> dict | None:
        """The record of `path` in the manifest, if any."""
        return self._records.get(self._key(path))

    def is_complete(self, path: Path) -> bool:
        """The verdict of `check` (or `record`) on `path`."""
        return self._complete[path]

    def record(self, path: Path, digest: dict) -> None:
        """`path` was finished by this run with these bytes (`file_digest`, computed where it was written),
        from the inputs `made_from` names."""
        self._records[self._key(path)] = self._updated[self._key(path)] = {**digest, "inputs": self.made_from[path]}
        self._complete[path] = True
        if time.monotonic() - self._saved_at > _SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        if self._updated:
            update_manifest(self.manifest, RECORDS_KEY, self._updated)
            self._updated = {}
        self._saved_at = time.monotonic()

    def notes(self) -> list[str]:
        """What the checks found, one line each, for the run's report."""
        lines = []
        if self.stale:
            lines.append(f"{len(self.stale)} finished files were made from other input contents than the present "
                         f"ones (or before {self.manifest.name} recorded them) and were made again; the first: "
                         f"{self.stale[0]}")
        if self.changed:
            lines.append(f"{len(self.changed)} finished files changed since they were written (size or CRC-32 differs "
                         f"from {self.manifest.name}) and were made again; the first: {self.changed[0]}")
        if self.unrecorded:
            lines.append(f"{len(self.unrecorded)} finished files had no record in {self.manifest.name} (finished "
                         f"by another run that has not recorded them yet, or just before a run was killed): checked "
                         f"by opening them, recorded now; the first: {self.unrecorded[0]}")
        return lines
