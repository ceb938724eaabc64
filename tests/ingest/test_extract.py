"""Extraction of every kind, including hostile input, through extract_document (in-process)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import _ingest_samples as samples
import pytest

from crystalline.documents import Document
from crystalline.ingest.charset import decode_bytes
from crystalline.ingest.extract import ExtractionError, ExtractLimits, extract_document, sniff_kind
from crystalline.ingest.html_text import extract_html

LIMITS = ExtractLimits(ocr_timeout_s=60.0)
LINES = ["Rivers carry sediment to the sea.", "Deltas change shape with each flood."]


def doc(body: bytes, name: str = "x", content_type: str = "", charset: str | None = None) -> Document:
    return Document(source=f"/tmp/{name}", body=body, content_type=content_type, charset=charset)


# -- encodings ------------------------------------------------------------------------------


def test_latin1_page_by_meta_charset() -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body><p>Caf\xe9 cr\xe8me br\xfbl\xe9e</p>'
    text, codec = decode_bytes(page.encode("latin-1"))
    assert "Café crème brûlée" in text and codec == "cp1252"


def test_cp1252_quotes_by_header() -> None:
    text, _ = decode_bytes("\u201cquoted\u201d \u2014 dash".encode("cp1252"), header_charset="windows-1252")
    assert text == "\u201cquoted\u201d \u2014 dash"


def test_utf8_bom_wins_over_header() -> None:
    text, codec = decode_bytes("на русском".encode("utf-8-sig"), header_charset="iso-8859-1")
    assert text == "на русском" and codec == "utf-8"


def test_wrong_utf8_header_on_latin1_body() -> None:
    text, _ = decode_bytes("na\xefve fa\xe7ade".encode("latin-1"), header_charset="utf-8", html=False)
    assert text == "na\xefve fa\xe7ade"


def test_wrong_latin1_header_on_utf8_body() -> None:
    text, codec = decode_bytes("Grüße aus Köln".encode(), header_charset="iso-8859-1")
    assert text == "Grüße aus Köln" and codec == "utf-8"


def test_undeclared_encoding_is_detected() -> None:
    body = ("Le château était très célèbre à l'époque, où les élèves étudiaient. " * 20).encode("cp1252")
    text, _ = decode_bytes(body, html=False)
    assert "château" in text and "\ufffd" not in text


# -- HTML -----------------------------------------------------------------------------------


def test_boilerplate_is_dropped_and_article_kept_in_order() -> None:
    page = extract_html(samples.article_page())
    for para in samples.PARAGRAPHS:
        assert para in page.text
    positions = [page.text.index(p) for p in samples.PARAGRAPHS]
    assert positions == sorted(positions)
    for junk in (
        "cookie",
        "Share on",
        "Most read",
        "Copyright",
        "Great article",
        "window.dataLayer",
        "World",
    ):
        assert junk not in page.text, junk


def test_heading_title_and_language() -> None:
    page = extract_html(samples.article_page())
    assert page.text.startswith("How rivers shape the land")
    assert page.title == "How rivers shape the land | Daily Example"
    assert page.language == "en"


def test_100k_nested_tags_do_not_hang() -> None:
    html = "<html><body>" + "<div>" * 100_000 + "deep text" + "</div>" * 100_000 + "<p>" + LINES[0] + "</p>"
    result = extract_document(doc(html.encode(), "deep.html"), LIMITS)
    assert result.kind == "html" and isinstance(result.text, str)


def test_random_bytes_named_html_are_refused() -> None:
    with pytest.raises(ExtractionError, match="binary"):
        extract_document(doc(os.urandom(4096), "random.html"), LIMITS)


def test_20mb_single_line_passes_through() -> None:
    body = b"word " * (4 * 1024 * 1024)  # 20 MB, no newline
    result = extract_document(doc(body, "big.txt"), LIMITS)
    assert result.kind == "text" and len(result.text) == len(body) - 1  # the trailing space is stripped


# -- PDF ------------------------------------------------------------------------------------


def test_text_pdf_pages_in_order() -> None:
    pdf = samples.make_pdf([[LINES[0]], [LINES[1]]])
    result = extract_document(doc(pdf, "a.pdf"), LIMITS)
    assert result.kind == "pdf" and result.pages == 2 and result.ocr_pages == 0
    assert result.text.index("Rivers") < result.text.index("Deltas")


def test_scanned_pdf_is_ocred() -> None:
    pdf = samples.make_pdf([samples.render_text(samples.OCR_LINES)])
    result = extract_document(doc(pdf, "scan.pdf"), LIMITS)
    assert result.ocr_pages == 1
    assert samples.cer(" ".join(samples.OCR_LINES), result.text) < 0.1


def test_mixed_pdf_ocrs_only_the_image_page() -> None:
    pdf = samples.make_pdf([[LINES[0]], samples.render_text(samples.OCR_LINES)])
    result = extract_document(doc(pdf, "mixed.pdf"), LIMITS)
    assert result.pages == 2 and result.ocr_pages == 1
    assert LINES[0] in result.text and "lazy dog" in result.text


def test_encrypted_pdf_fails_with_reason() -> None:
    with pytest.raises(ExtractionError, match="encrypted"):
        extract_document(doc(samples.make_pdf([[LINES[0]]], encrypt=True), "locked.pdf"), LIMITS)


def test_truncated_pdf_fails_or_yields_text_without_crashing() -> None:
    pdf = samples.make_pdf([[LINES[0]]])
    with pytest.raises(ExtractionError, match="PDF"):
        extract_document(doc(pdf[: len(pdf) // 3], "cut.pdf"), LIMITS)


# -- images ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_ocr_character_error_rate(fmt: str) -> None:
    data = samples.image_bytes(samples.render_text(samples.OCR_LINES), fmt)
    result = extract_document(doc(data, f"scan.{fmt.lower()}"), LIMITS)
    assert result.kind == "image"
    assert samples.cer(" ".join(samples.OCR_LINES), result.text) < 0.05


def test_fake_png_fails() -> None:
    with pytest.raises(ExtractionError, match="not a readable image"):
        extract_document(doc(b"this is not a png at all", "fake.png"), LIMITS)


def test_image_bomb_is_refused_from_its_header() -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10 gigapixels, greyscale
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ExtractionError, match=r"too large|not a readable image"):
        extract_document(doc(bomb, "bomb.png"), LIMITS)


def test_zero_bytes_fails() -> None:
    with pytest.raises(ExtractionError, match="empty"):
        extract_document(doc(b"", "empty.pdf"), LIMITS)


def test_markdown_passes_through() -> None:
    result = extract_document(doc(b"# Title\n\nSome *text*.\r\n", "a.md"), LIMITS)
    assert result.kind == "text" and result.text == "# Title\n\nSome *text*."


def test_kind_by_magic_before_name() -> None:
    png = samples.image_bytes(samples.render_text(["x"]), "PNG")
    assert sniff_kind(png, "text/html", "page.html") == "image"
    assert sniff_kind(b"%PDF-1.4 ...", "", "a.txt") == "pdf"
    assert sniff_kind(b"<!DOCTYPE html><p>x", "", "noext") == "html"


def test_undeclared_cyrillic_is_not_read_as_latin() -> None:
    body = ("Привет, как дела? Это длинный русский текст для проверки кодировки. " * 20).encode("cp1251")
    text, _ = decode_bytes(body, html=False)
    assert "Привет" in text


@pytest.mark.timeout(60)
def test_charset_detector_is_imported_only_where_a_page_needs_it() -> None:
    # A labelled or UTF-8 page (every page of the dev set) is decoded without charset_normalizer
    # (~8 ms of each process's start-up); undeclared Cyrillic needs it. In a fresh process.
    script = (
        "import sys\n"
        "from crystalline.ingest.charset import decode_bytes\n"
        "decode_bytes('<p>Grüße</p>'.encode())\n"
        "decode_bytes('<meta charset=koi8-r><p>Привет</p>'.encode('koi8-r'))\n"
        "before = 'charset_normalizer' in sys.modules\n"
        "text, _ = decode_bytes(('Привет, как дела? Это длинный русский текст. ' * 20).encode('cp1251'))\n"
        "print(before, 'charset_normalizer' in sys.modules, 'Привет' in text)\n"
    )
    cmd = [sys.executable, "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=50, check=True)
    assert out.stdout.split() == ["False", "True", "True"]


def test_page_wrapped_in_a_form_keeps_its_text() -> None:
    html = samples.article_page().replace("<body>", "<body><form id='aspnetForm'>")
    assert samples.PARAGRAPHS[1] in extract_html(html.replace("</body>", "</form></body>")).text
