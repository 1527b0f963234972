"""Errors the decoder reports while it decodes a video that still opens (damaged data: "error while decoding MB
…", "concealing … errors"), counted per video so that damaged frames are recorded, not cached as a clean clip.

FFmpeg reports them through its log, not as exceptions, and goes on with concealed (wrong) pixels. Two routes:

- PyAV: its log is off by default; ``av.logging.set_level(ERROR)`` inside ``av.logging.Capture`` collects the
  messages of this thread (PyAV's documented way to read FFmpeg's log);
- decord (and anything else with its own FFmpeg): the library writes straight to file descriptor 2, so for the
  duration of the decode fd 2 goes to a temporary file whose lines are read back (main thread only: fd 2 belongs
  to the whole process). STEP_CACHE_DECODER_LOGS=1 writes them on to the real stderr as well.

A line counts when it is an FFmpeg message (``[h264 @ 0x…] …``) that says an error (``ERROR_WORDS``); PyAV's
messages count at level ERROR or worse.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

ERROR_WORDS = ("error", "concealing", "corrupt", "invalid", "unavailable", "non-existing", "missing", "no frame")
_FFMPEG_LINE = re.compile(r"^\[[^\]@]+ @ (0x)?[0-9a-fA-F]+\] (?P<message>.*)$")


@dataclass
class DecoderErrors:
    """What the decoder reported while decoding: ``count`` error messages, the first few kept as examples."""

    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(message.strip())

    def merge(self, other: DecoderErrors) -> None:
        """Add the errors of another decode (a later chunk of the same video)."""
        self.count += other.count
        self.examples += other.examples[: max(0, 3 - len(self.examples))]

    def describe(self) -> str:
        return f"{self.count} decoder error(s), e.g. {self.examples[0]!r}: damaged data, frames may be wrong"


def is_error_line(line: str) -> str | None:
    """The message of an FFmpeg log line that reports an error, else None."""
    match = _FFMPEG_LINE.match(line.strip())
    if match is None:
        return None
    message = match.group("message")
    return message if any(word in message.lower() for word in ERROR_WORDS) else None


@contextlib.contextmanager
def counting_decoder_errors() -> Iterator[DecoderErrors]:
    """``with counting_decoder_errors() as errors: decode...`` then ``errors.count``."""
    errors = DecoderErrors()
    with _pyav_log(errors), _stderr_lines(errors):
        yield errors


@contextlib.contextmanager
def _pyav_log(errors: DecoderErrors) -> Iterator[None]:
    av = sys.modules.get("av")  # only a decoder that uses PyAV has imported it
    if av is None:
        yield
        return
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture() as logs:
            yield
    finally:
        av.logging.set_level(previous)
    for level, _, message in logs:
        if level <= av.logging.ERROR:
            errors.add(message)


_capture_lock = threading.Lock()


@contextlib.contextmanager
def _stderr_lines(errors: DecoderErrors) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not _capture_lock.acquire(blocking=False):
        yield  # fd 2 is the process's: only one capture at a time, from the main thread
        return
    try:
        with tempfile.TemporaryFile() as capture:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
    finally:
        _capture_lock.release()
    if text and os.environ.get("STEP_CACHE_DECODER_LOGS") == "1":
        os.write(2, text.encode())
    for line in text.splitlines():
        if (message := is_error_line(line)) is not None:
            errors.add(message)
