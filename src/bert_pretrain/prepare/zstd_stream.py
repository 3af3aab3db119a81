"""Zstandard files (`.zst`, as The Pile ships) as one stream of bytes, in bounded memory.

Python 3.14's `compression.zstd` is used where it exists; elsewhere the `zstandard` package (the
`corpora` extra). zstandard's own readers stop without a word where a file ends inside a frame (a
download cut short reads as a shorter corpus), so the stream here drives its decompressor itself and
raises EOFError there, as the standard library's gzip and bz2 readers do. Frames follow one another
(`cat a.zst b.zst` is one valid file); each is decompressed in turn.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

from bert_pretrain.errors import InputError

EXTRA = "pip install 'bert-pretrain[corpora]'"
# Compressed bytes given to the decompressor at a time. zstd has no output limit per call, and a 4-byte
# RLE block expands to 128 KiB, so this bounds one call's output to 2 KiB / 4 x 128 KiB = 64 MiB on a
# crafted file (ordinary text expands 3-10x: a few KiB).
_FEED = 2 << 10
_BUFFER = 1 << 16


def open_zstd(path: Path) -> BinaryIO:
    """The decompressed bytes of the Zstandard file at `path` (EOFError when it is cut short inside a frame,
    OSError when its data is damaged)."""
    try:
        from compression import zstd  # Python 3.14 and later
    except ImportError:
        pass
    else:
        return zstd.open(path, "rb")
    try:
        import zstandard
    except ImportError:
        raise InputError(f"{path}: reading .zst files needs the zstandard package: {EXTRA}") from None
    return io.BufferedReader(_Frames(open(path, "rb"), zstandard), _BUFFER)


class _Frames(io.RawIOBase):
    """Decompressed bytes of consecutive zstd frames read from `raw`."""

    def __init__(self, raw: BinaryIO, zstandard):
        self._raw = raw
        self._zstandard = zstandard
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._input = b""  # compressed bytes read but not yet fed
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._output:
            data = self._next_output()
            if not data:
                return 0
            self._output = memoryview(data)
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def _next_output(self) -> bytes:
        """The next decompressed bytes; b'' at the end of the file."""
        while True:
            if not self._input:
                self._input = self._raw.read(_BUFFER)
                if not self._input:
                    if self._frame is not None:
                        raise EOFError("the Zstandard file ends inside a frame")
                    return b""
            if self._frame is None:
                self._frame = self._decompressor.decompressobj()
            piece, self._input = self._input[:_FEED], self._input[_FEED:]
            try:
                data = self._frame.decompress(piece)
            except self._zstandard.ZstdError as err:
                raise OSError(f"Zstandard data is damaged: {err}") from None
            if self._frame.eof:  # the frame ended inside this piece: what follows starts the next one
                self._input = self._frame.unused_data + self._input
                self._frame = None
            if data:
                return data

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
