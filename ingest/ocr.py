"""OCR of images with tesseract, with limits against decompression bombs.

tesseract runs as a child process that reads the image (PNG) on its stdin and writes the text
on its stdout: no temporary file is left in /tmp when the process that started it is killed in
the middle. It dies with that process: it is started as ``setpriv --pdeathsig KILL --
tesseract ...`` (util-linux), which sets ``PR_SET_PDEATHSIG`` and execs tesseract, so a pool
worker killed for its time limit, a cut, a close or by the kernel's OOM killer leaves no
tesseract running on (it used to run until it finished: its timeout was the killed worker's to
enforce). setpriv, not a ``preexec_fn`` calling prctl: a pool worker has threads (OpenBLAS's,
from numpy), in which Python documents ``preexec_fn`` as unsafe, and it forces fork where
vfork is used otherwise (122 ms against 3 ms a spawn from a process of 1.5 GB, review R13b).
setpriv calls capset even for --pdeathsig alone: the unit allows it back (systemd/crystalline.service;
tests/systemd/test_syscall_audit.py traces this command against the unit's filter).
The one race, the worker dying before setpriv sets the signal, ends tesseract too: its stdin
closes on a part of the image and its stdout has no reader. ``OMP_THREAD_LIMIT=1`` stops it
from starting one OpenMP thread per core in each of our pool workers (on 2 cores that
oversubscription makes OCR slower, not faster). Every call carries a timeout, after which
tesseract is killed; what it writes is read up to OUTPUT_MAX_BYTES (stdout) and
ERRORS_MAX_BYTES (stderr), past which it is killed and the image gets a one-line error.
"""

from __future__ import annotations

import io
import logging
import os
import re
import selectors
import shutil
import subprocess
import time
import warnings
from collections.abc import Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from crystalline.exit_status import one_line

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

log = logging.getLogger(__name__)
_OBJECT_REPR = re.compile(r" ?<[^<>\n]* object at 0x[0-9a-fA-F]+>")
#: Seconds a killed tesseract gets to be reaped before the call gives up on it (and says so).
KILLED_WAIT_S = 5.0
#: Bytes of text tesseract may write for one image: a frame is at most 40 Mpx (max_pixels'
#: default), which holds under half a million characters of the smallest print it reads.
OUTPUT_MAX_BYTES = 16 * 1024 * 1024
#: Bytes of messages on its stderr: a line of its resolution estimate and a few warnings.
ERRORS_MAX_BYTES = 64 * 1024
_CHUNK = 64 * 1024


class OcrError(ValueError):
    """An image could not be read or recognised; the message is one line for the user."""


def _command(language: str) -> list[str]:
    """tesseract reading a PNG on stdin and writing its text on stdout, under setpriv so that
    it is killed when the thread that started it (a pool worker's main thread) ends."""
    if shutil.which("tesseract") is None:
        raise OcrError("tesseract is not installed (apt-get install tesseract-ocr)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise OcrError("setpriv is not installed (apt-get install util-linux): OCR needs it to end tesseract")
    return [setpriv, "--pdeathsig", "KILL", "--", "tesseract", "stdin", "stdout", "-l", language]


def ocr_image(image: Image.Image, timeout_s: float, language: str = "eng") -> str:
    """Recognise the text of one image (converted to 8-bit grey, which tesseract reads fastest)
    within ``timeout_s`` (more than 0: [ingest] ocr-timeout-s, checked by IngestSettings)."""
    grey = ImageOps.exif_transpose(image).convert("L")
    png = io.BytesIO()
    grey.save(png, format="PNG")
    command = _command(language)
    deadline = time.monotonic() + timeout_s
    pipe = subprocess.PIPE
    proc = subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe, bufsize=0)
    try:
        out, err = _exchange(proc, png.getvalue(), deadline, timeout_s)
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired as e:  # its pipes closed, it still runs
            raise OcrError(f"OCR timed out after {timeout_s:g}s") from e
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if proc.returncode is None:  # timed out, over a limit or interrupted: it ends with the call
            proc.kill()
            try:
                proc.wait(timeout=KILLED_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("tesseract (pid %d) was not reaped %gs after its kill", proc.pid, KILLED_WAIT_S)
    if proc.returncode:
        why = one_line(err.decode("utf-8", "replace")[-300:]) or "no message"
        raise OcrError(f"tesseract failed (exit code {proc.returncode}): {why}")
    return out.decode("utf-8")


def _exchange(
    proc: subprocess.Popen[bytes], data: bytes, deadline: float, timeout_s: float
) -> tuple[bytes, bytes]:
    """Write ``data`` to the child's stdin and read its stdout and stderr to their ends, each
    within its byte limit (one line past it), until ``deadline``."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
    limits = {stdout: (OUTPUT_MAX_BYTES, "text"), stderr: (ERRORS_MAX_BYTES, "messages")}
    read: dict[int, list[bytes]] = {stdout: [], stderr: []}
    sizes = dict.fromkeys(read, 0)
    view, sent = memoryview(data), 0
    os.set_blocking(stdin, False)
    with selectors.DefaultSelector() as selector:
        selector.register(stdin, selectors.EVENT_WRITE)
        selector.register(stdout, selectors.EVENT_READ)
        selector.register(stderr, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise OcrError(f"OCR timed out after {timeout_s:g}s")
            for key, _events in selector.select(left):
                if key.fd == stdin:
                    try:
                        sent += os.write(stdin, view[sent : sent + _CHUNK])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:  # it stopped reading: its exit code says why
                        sent = len(view)
                    if sent >= len(view):  # its stdin ends: it reads the image to its end
                        selector.unregister(stdin)
                        proc.stdin.close()
                    continue
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                sizes[key.fd] += len(chunk)
                limit, what = limits[key.fd]
                if sizes[key.fd] > limit:
                    raise OcrError(f"tesseract wrote over {limit} bytes of {what} for one image")
                read[key.fd].append(chunk)
    return b"".join(read[stdout]), b"".join(read[stderr])


def image_frames(data: bytes, max_pixels: int, max_frames: int) -> Iterator[Image.Image]:
    """The frames of an image file (one for PNG/JPEG, several for a multi-page TIFF), each
    checked against ``max_pixels`` from its header *before* its pixels are decoded."""
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse outright.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise OcrError(f"not a readable image ({_first_line(e)})") from e
        except (OSError, SyntaxError, ValueError) as e:
            raise OcrError(f"not a readable image ({_first_line(e)})") from e
        frames = min(getattr(image, "n_frames", 1), max_frames)
        for index in range(frames):
            try:
                image.seek(index)
                width, height = image.size
                if width * height > max_pixels:
                    raise OcrError(f"image too large ({width}x{height} pixels > {max_pixels} allowed)")
                image.load()
            except OcrError:
                raise
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning) as e:
                raise OcrError(f"broken image data ({_first_line(e)})") from e
            yield image


def ocr_image_bytes(data: bytes, max_pixels: int, max_frames: int, timeout_s: float) -> tuple[str, int]:
    """OCR every frame of an image file; returns (text, frames read)."""
    texts = []
    for frame in image_frames(data, max_pixels, max_frames):
        texts.append(ocr_image(frame, timeout_s))
    return "\n\n".join(texts), len(texts)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without the repr of an object in it (PIL names
    the buffer it read: "cannot identify image file <_io.BytesIO object at 0x7f...>"), so that
    the same bad file gets the same reason each time."""
    text = _OBJECT_REPR.sub("", str(exc)).strip()
    return one_line(text.splitlines()[0]) if text else type(exc).__name__
