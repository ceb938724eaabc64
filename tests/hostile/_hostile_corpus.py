"""Hostile files for ingest, generated on demand (nothing big is committed).

``drop_corpus()`` returns ``{file name: bytes}``: each is something a drop folder or a crawl may
be handed by accident or by an attacker. Every one must end in ``done/`` or ``failed/`` (with a
reason), bounded in time and memory, and the process that ingests them must stay up.
"""

from __future__ import annotations

import gzip
import io
import random
import zipfile
import zlib

_TEXT = (
    "The river rose in the spring and the farmers moved their sheep to the high meadows, "
    "where the grass was thin but the ground was dry. "
)

_FONT_RESOURCES = b"/Resources << /Font << /F1 3 0 R >> >> >>"


def pdf_bytes(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF whose object ``i + 1`` is ``objects[i]``, with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    trailer = b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
    out.write(trailer % (len(objects) + 1, root, xref))
    return out.getvalue()


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def _text_content(text: str) -> bytes:
    return b"BT /F1 9 Tf 10 20 Td (" + text.encode("latin-1") + b") Tj ET"


def many_page_pdf(pages: int, text: str = "Plain words written on one of many tiny pages") -> bytes:
    """``pages`` tiny pages sharing one content stream: a few hundred KB for 10k pages."""
    # 1 catalog, 2 pages, 3 font, 4 content, 5.. pages
    kids = b" ".join(b"%d 0 R" % (5 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        _stream(_text_content(text)),
    ]
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 40] /Contents 4 0 R " + _FONT_RESOURCES
    objects += [page] * pages
    return pdf_bytes(objects)


def blank_page_pdf(pages: int) -> bytes:
    """``pages`` pages without a text layer: each would be rendered and OCRed."""
    kids = b" ".join(b"%d 0 R" % (4 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages,
        _stream(b"0 0 0 rg 10 10 50 20 re f"),
    ]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 60] /Contents 3 0 R >>"] * pages
    return pdf_bytes(objects)


def zip_in_pdf() -> bytes:
    """Text page whose content is ASCIIHex over Flate, plus an embedded zip (itself holding a
    highly compressible member) as an attached file: only the page text may come out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.txt", b"0" * 20_000_000)
        z.writestr("inner.pdf", many_page_pdf(3))
    payload = buf.getvalue()
    content = zlib.compress(_text_content("Visible words on the first page of a PDF with a zip inside"))
    hexed = content.hex().encode() + b">"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names [(a.zip) 6 0 R] >> >> >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 60] /Contents 5 0 R " + _FONT_RESOURCES,
        _stream(hexed, b"/Filter [/ASCIIHexDecode /FlateDecode]"),
        b"<< /Type /Filespec /F (a.zip) /EF << /F 7 0 R >> >>",
        _stream(payload, b"/Type /EmbeddedFile /Subtype /application#2Fzip"),
    ]
    return pdf_bytes(objects)


def odd_filter_pdf() -> bytes:
    """Content streams with filters pdfium may not decode (LZW with garbage, JBIG2 without
    globals, an unknown filter name): the page reads as empty or fails, never hangs."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 4 0 R 5 0 R] /Count 3 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 60] /Contents 6 0 R >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 60] /Contents 7 0 R >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 60] /Contents 8 0 R >>",
        _stream(bytes(random.Random(1).randbytes(4000)), b"/Filter /LZWDecode"),
        _stream(bytes(random.Random(2).randbytes(4000)), b"/Filter /JBIG2Decode"),
        _stream(b"garbage", b"/Filter /NoSuchDecode"),
    ]
    return pdf_bytes(objects)


def flate_bomb_pdf() -> bytes:
    """A content stream that inflates 1000-fold (about 50 MB of spaces)."""
    data = zlib.compress(b" " * 50_000_000, 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 60] /Contents 4 0 R >>",
        _stream(data, b"/Filter /FlateDecode"),
    ]
    return pdf_bytes(objects)


def cyclic_pages_pdf() -> bytes:
    """A page tree whose Kids point back at itself."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [2 0 R 3 0 R] /Count 1000000 >>",
        b"<< /Type /Pages /Parent 2 0 R /Kids [2 0 R 3 0 R] /Count 1000000 >>",
    ]
    return pdf_bytes(objects)


def png_bomb() -> bytes:
    """A valid PNG header claiming 100000 x 100000 pixels (10 G pixels) over a tiny body."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def nested_html(depth: int) -> bytes:
    return ("<html><body>" + "<div>" * depth + _TEXT * 5 + "</div>" * depth + "</body></html>").encode()


def drop_corpus(big: bool = True) -> dict[str, bytes]:
    """File name -> contents. ``big`` adds the multi-megabyte cases."""
    rng = random.Random(7)
    corpus: dict[str, bytes] = {
        "empty.txt": b"",
        "random-bytes.html": rng.randbytes(200_000),
        "fake.png": b"\x89PNG\r\n\x1a\n" + rng.randbytes(5000),
        "png-bomb.png": png_bomb(),
        "truncated.pdf": many_page_pdf(3)[:300],
        "not-a-pdf.pdf": b"%PDF-1.4\n" + rng.randbytes(3000),
        "zip-in.pdf": zip_in_pdf(),
        "odd-filters.pdf": odd_filter_pdf(),
        "cyclic-pages.pdf": cyclic_pages_pdf(),
        "ten-thousand-pages.pdf": many_page_pdf(10_000),
        "blank-pages.pdf": blank_page_pdf(400),
        "nested-100k.html": nested_html(100_000),
        "invalid-utf8.txt": (_TEXT * 20).encode() + b"\xff\xfe\xc3(\xa0\xa1" * 50,
        "utf16-no-bom.txt": (_TEXT * 20).encode("utf-16-le"),
        "nul-text.txt": (_TEXT * 10).encode() + b"\x00" * 5000,
        "gzip.txt": gzip.compress((_TEXT * 200).encode()),
        "zip-archive.txt": _zip_archive(),
        "control-chars.html": ("<p>" + "\x1b[31m\x07\x08" * 3000 + "</p>").encode(),
        "entity-flood.html": ("<p>" + "&amp;&#0;&#xD800;&#99999999;" * 20_000 + "</p>").encode(),
        "name with spaces\nand newline.txt": (_TEXT * 8).encode(),
        "x" * 240 + ".txt": (_TEXT * 9).encode(),
        "ok-control.txt": (_TEXT * 12 + "A well-formed control document.").encode(),
    }
    if big:
        corpus["pdf-flate-bomb.pdf"] = flate_bomb_pdf()
        corpus["single-line-20mb.txt"] = ("word " * 4_000_000).encode()
    return corpus


def _zip_archive() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.txt", _TEXT * 50)
    return buf.getvalue()
