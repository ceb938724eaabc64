"""One interface for all extraction: a :class:`Document` in, normalised text (or an error) out.

The kind is decided by the bytes first (magic numbers), then the media type, then the file
name, so a PNG named ``.html`` is OCRed and random bytes named ``.html`` are refused as binary
rather than trained on. This runs inside the pool's worker processes; everything here is
bounded by :class:`ExtractLimits` and, above it, by the pool's per-document time limit.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from crystalline.documents import Document

from .normalize import normalize_text

# The extractors (charset_normalizer, lxml and trafilatura, pypdfium2, tesseract through PIL)
# are imported when a document of their kind first comes: a process that only holds
# ExtractLimits, such as the parent of the extraction pool, does not pay for them.

KINDS = ("html", "pdf", "image", "text")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"GIF87a", b"GIF89a", b"BM")
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".webp", ".pnm", ".ppm", ".pgm"}
_HTML_EXT = {".html", ".htm", ".xhtml", ".shtml"}
_TEXT_EXT = {".txt", ".text", ".md", ".markdown", ".rst", ".csv", ".log", ""}


# the most [ingest] ocr-timeout-s may be: a deadline per image, not a way to turn it off
OCR_TIMEOUT_MAX_S = 3600.0


class ExtractionError(ValueError):
    """The document cannot be turned into text; the message is one line naming the reason."""


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on one extraction, so hostile input cannot exhaust memory or time."""

    max_bytes: int = 64 * 1024 * 1024  # larger files are refused unread
    max_chars: int = 32 * 1024 * 1024  # longer text is cut (and flagged) rather than refused
    max_pixels: int = 40_000_000  # per image or rendered page (~ A4 at 600 dpi)
    max_pages: int = 500  # PDF pages or image frames
    max_ocr_pages: int = 50  # of a PDF's pages without a text layer, at most this many are OCRed
    pdf_time_budget_s: float = 60.0  # a PDF's pages are read until then, the rest cut (0: none)
    min_page_chars: int = 20  # letters in a PDF page's text layer below which it is OCRed
    ocr: bool = True  # OCR images and PDF pages without a text layer
    ocr_dpi: int = 200  # resolution a PDF page is rendered at for OCR
    ocr_timeout_s: float = 60.0  # tesseract's seconds per image or page (more than 0, at most 3600)


@dataclass(frozen=True)
class Extraction:
    """Normalised text of one document and how it was obtained."""

    kind: str
    text: str
    title: str = ""
    language: str = ""
    pages: int = 0
    ocr_pages: int = 0
    truncated: bool = False
    encoding: str = ""
    truncated_reason: str = ""  # what was left out when ``truncated``


def sniff_kind(body: bytes, content_type: str = "", name: str = "") -> str:
    """One of :data:`KINDS`: by magic bytes, else media type, else file extension, else text."""
    head = body[:1024]
    if head.startswith(b"%PDF-") or b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    ct = content_type.split(";", 1)[0].strip().lower()
    ext = os.path.splitext(name.split("?", 1)[0])[1].lower()
    if ct == "application/pdf" or ext == ".pdf":
        return "pdf"
    if ct.startswith("image/") or ext in _IMAGE_EXT:
        return "image"
    if ct in ("text/html", "application/xhtml+xml") or ext in _HTML_EXT:
        return "html"
    lowered = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if ct in ("", "application/octet-stream") and lowered.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")


def _check_text(text: str) -> None:
    """Refuse decoded bytes that are really binary (NULs or many control characters)."""
    sample = text[:65536]
    if not sample:
        return
    if "\x00" in sample or len(_CONTROLS.findall(sample)) > 0.02 * len(sample):
        raise ExtractionError("binary data, not text")


def extract_document(doc: Document, limits: ExtractLimits, kind: str = "") -> Extraction:
    """Extract ``doc`` as ``kind``, what :func:`sniff_kind` said of it where the caller asked
    already (to route it: :func:`~crystalline.ingest.pool.extract_in_process`), or "" to sniff
    it here; raises :class:`ExtractionError` with a one-line reason if it cannot."""
    if kind not in ("", *KINDS):
        raise ValueError(f"unknown document kind {kind!r}")
    body = doc.body
    if not body:
        raise ExtractionError("empty file (0 bytes)")
    if len(body) > limits.max_bytes:
        raise ExtractionError(f"too large ({len(body)} bytes > {limits.max_bytes})")
    kind = kind or sniff_kind(body, doc.content_type, doc.source)
    title = language = encoding = cut = ""
    pages = ocr_pages = 0
    if kind == "pdf":
        from .pdf_text import PdfError, extract_pdf

        try:
            pdf = extract_pdf(
                body,
                max_pages=limits.max_pages,
                min_page_chars=limits.min_page_chars,
                ocr=limits.ocr,
                ocr_dpi=limits.ocr_dpi,
                max_pixels=limits.max_pixels,
                ocr_timeout_s=limits.ocr_timeout_s,
                max_ocr_pages=limits.max_ocr_pages,
                time_budget_s=limits.pdf_time_budget_s,
            )
        except PdfError as e:
            raise ExtractionError(str(e)) from e
        raw, pages, ocr_pages, cut = pdf.text, pdf.pages, pdf.ocr_pages, pdf.truncated
    elif kind == "image":
        if not limits.ocr:
            raise ExtractionError("image skipped: OCR is disabled")
        from .ocr import OcrError, ocr_image_bytes

        try:
            raw, pages = ocr_image_bytes(body, limits.max_pixels, limits.max_pages, limits.ocr_timeout_s)
        except OcrError as e:
            raise ExtractionError(str(e)) from e
        ocr_pages = pages
    else:
        from .charset import decode_bytes

        decoded, encoding = decode_bytes(body, doc.charset, html=kind == "html")
        _check_text(decoded)
        if kind == "html":
            from .html_text import extract_html

            page = extract_html(decoded)
            raw, title, language = page.text, page.title, page.language
        else:
            raw = decoded
    text = normalize_text(raw)
    if len(text) > limits.max_chars:
        text = text[: limits.max_chars]
        cut = cut or f"text cut at {limits.max_chars} characters"
    return Extraction(kind, text, title, language, pages, ocr_pages, bool(cut), encoding, cut)
