"""Text of a PDF: the text layer of each page (pdfium), and OCR for pages that have none.

A page is "without usable text" when its text layer holds fewer than ``min_page_chars``
letters: scanned pages have none, and some generators leave a few stray characters (page
numbers) on an image page, which must not stop OCR.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pypdfium2 as pdfium

from crystalline.exit_status import one_line

from .ocr import OcrError, ocr_image


class PdfError(ValueError):
    """A PDF could not be opened or read; the message is one line for the user."""


@dataclass(frozen=True)
class PdfText:
    """The text of a PDF and how it was obtained."""

    text: str
    pages: int  # pages read (at most max_pages)
    ocr_pages: int  # of which OCRed
    total_pages: int
    truncated: str = ""  # why not every page was read (page cap, OCR cap, time budget), or ""


def _letters(text: str) -> int:
    return sum(1 for c in text if c.isalpha())


def extract_pdf(
    data: bytes,
    *,
    max_pages: int,
    min_page_chars: int,
    ocr: bool,
    ocr_dpi: int,
    max_pixels: int,
    ocr_timeout_s: float,
    max_ocr_pages: int = 50,
    time_budget_s: float = 0.0,
) -> PdfText:
    """Read up to ``max_pages`` pages; pages without usable text are rendered at ``ocr_dpi``
    (less if the page would exceed ``max_pixels``) and OCRed when ``ocr`` is set, at most
    ``max_ocr_pages`` of them. Reading stops after ``time_budget_s`` (0: no budget), so a
    10k-page document yields its first pages, marked truncated, instead of running into the
    pool's hard time limit and yielding nothing."""
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        message = one_line(e)
        if "password" in message.lower():
            raise PdfError("encrypted PDF: a password is required") from e
        raise PdfError(f"not a readable PDF ({message.rstrip('.')})") from e
    deadline = time.monotonic() + time_budget_s if time_budget_s > 0 else math.inf
    try:
        total = len(pdf)
        texts: list[str] = []
        ocr_pages = 0
        truncated = f"read {max_pages} of {total} pages" if total > max_pages else ""
        for index in range(min(total, max_pages)):
            if time.monotonic() > deadline:
                truncated = f"time budget of {time_budget_s:g}s spent after {index} of {total} pages"
                break
            try:
                page = pdf[index]
            except pdfium.PdfiumError as e:
                raise PdfError(f"page {index + 1} is unreadable ({one_line(e)})") from e
            try:
                textpage = page.get_textpage()
                text = textpage.get_text_bounded()
                textpage.close()
                if _letters(text) < min_page_chars and ocr and ocr_pages < max_ocr_pages:
                    width, height = page.get_size()  # points, 1/72 inch
                    scale = ocr_dpi / 72.0
                    if width * height * scale * scale > max_pixels:
                        scale = math.sqrt(max_pixels / max(width * height, 1.0))
                    bitmap = page.render(scale=scale, grayscale=True)
                    image = bitmap.to_pil()
                    bitmap.close()
                    try:
                        text = ocr_image(image, ocr_timeout_s)
                    except OcrError as e:
                        raise PdfError(f"page {index + 1}: {e}") from e
                    ocr_pages += 1
                    if ocr_pages == max_ocr_pages and not truncated:
                        truncated = f"OCR stopped after {max_ocr_pages} pages"
            except pdfium.PdfiumError as e:
                raise PdfError(f"page {index + 1} is unreadable ({one_line(e)})") from e
            finally:
                page.close()
            texts.append(text)
        return PdfText("\n\n".join(t.strip() for t in texts), len(texts), ocr_pages, total, truncated)
    finally:
        pdf.close()
