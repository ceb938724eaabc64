"""OCR of images with tesseract (pytesseract), with limits against decompression bombs.

tesseract runs as a child process; ``OMP_THREAD_LIMIT=1`` stops it from starting one OpenMP
thread per core in each of our pool workers (on 2 cores that oversubscription makes OCR
slower, not faster). Every call carries a timeout, after which pytesseract kills tesseract.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator

import pytesseract
from PIL import Image, ImageOps, UnidentifiedImageError

os.environ.setdefault("OMP_THREAD_LIMIT", "1")


class OcrError(ValueError):
    """An image could not be read or recognised; the message is one line for the user."""


def ocr_image(image: Image.Image, timeout_s: float, language: str = "eng") -> str:
    """Recognise the text of one image (converted to 8-bit grey, which tesseract reads fastest)."""
    grey = ImageOps.exif_transpose(image).convert("L")
    try:
        return str(pytesseract.image_to_string(grey, lang=language, timeout=timeout_s))
    except RuntimeError as e:  # pytesseract raises RuntimeError on its own timeout
        raise OcrError(f"OCR timed out after {timeout_s:g}s") from e
    except pytesseract.TesseractNotFoundError as e:
        raise OcrError("tesseract is not installed (apt-get install tesseract-ocr)") from e
    except pytesseract.TesseractError as e:
        raise OcrError(f"tesseract failed: {str(e.message).strip().splitlines()[-1:]}") from e


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
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
