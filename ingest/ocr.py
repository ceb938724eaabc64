"""OCR of images with tesseract, with limits against decompression bombs.

tesseract runs as a child process that reads the image (PNG) on its stdin and writes the text
on its stdout: no temporary file is left in /tmp when the process that started it is killed in
the middle. It dies with that process (``PR_SET_PDEATHSIG``, set between fork and exec): a pool
worker killed for its time limit, a cut, a close or by the kernel's OOM killer leaves no
tesseract running on (it used to run until it finished: its timeout was the killed worker's to
enforce). ``OMP_THREAD_LIMIT=1`` stops it from starting one OpenMP thread per core in each of
our pool workers (on 2 cores that oversubscription makes OCR slower, not faster). Every call
carries a timeout, after which tesseract is killed.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import signal
import subprocess
import warnings
from collections.abc import Callable, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

os.environ.setdefault("OMP_THREAD_LIMIT", "1")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int
_OBJECT_REPR = re.compile(r" ?<[^<>\n]* object at 0x[0-9a-fA-F]+>")
#: Seconds a killed tesseract gets to be reaped (its pipes drained) before the call gives up.
KILLED_WAIT_S = 5.0


class OcrError(ValueError):
    """An image could not be read or recognised; the message is one line for the user."""


def _dies_with(parent: int) -> Callable[[], None]:
    """What the child runs between fork and exec: SIGKILL it when the thread that forked it ends
    (a pool worker's main thread, which waits for it, so: when the worker ends), and end it at
    once if ``parent`` is gone already."""

    def arm() -> None:
        if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def ocr_image(image: Image.Image, timeout_s: float, language: str = "eng") -> str:
    """Recognise the text of one image (converted to 8-bit grey, which tesseract reads fastest)
    within ``timeout_s`` (0: no limit)."""
    grey = ImageOps.exif_transpose(image).convert("L")
    png = io.BytesIO()
    grey.save(png, format="PNG")
    command = ["tesseract", "stdin", "stdout", "-l", language]
    pipe, arm = subprocess.PIPE, _dies_with(os.getpid())
    try:
        proc = subprocess.Popen(command, stdin=pipe, stdout=pipe, stderr=pipe, preexec_fn=arm)
    except FileNotFoundError as e:
        raise OcrError("tesseract is not installed (apt-get install tesseract-ocr)") from e
    try:
        out, err = proc.communicate(png.getvalue(), timeout=timeout_s if timeout_s > 0 else None)
    except subprocess.TimeoutExpired as e:
        raise OcrError(f"OCR timed out after {timeout_s:g}s") from e
    finally:
        if proc.returncode is None:  # timed out or interrupted: it does not outlive the call
            proc.kill()
            proc.communicate(timeout=KILLED_WAIT_S)
    if proc.returncode:
        why = " ".join(err.decode("utf-8", "replace").split())[-300:] or "no message"
        raise OcrError(f"tesseract failed (exit code {proc.returncode}): {why}")
    return out.decode("utf-8")


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
    return text.splitlines()[0] if text else type(exc).__name__
