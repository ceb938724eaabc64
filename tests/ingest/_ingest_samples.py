"""Test inputs made on the fly: PDFs (text, scanned, mixed, encrypted), text rendered to images,
HTML pages, and the character error rate used to judge OCR."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")

OCR_LINES = ["The quick brown fox jumps", "over the lazy dog near", "the river bank at dawn."]


def render_text(lines: list[str], size: int = 28) -> Image.Image:
    """Black text on white, one line per entry, about 30 px per line (small keeps OCR fast)."""
    font = ImageFont.truetype(str(_FONT), size) if _FONT.exists() else ImageFont.load_default(size=size)
    width = max(int(font.getlength(line)) for line in lines) + 40
    image = Image.new("L", (width, 20 + len(lines) * (size + 12)), 255)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((20, 10 + i * (size + 12)), line, fill=0, font=font)
    return image


def image_bytes(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def slow_scan() -> bytes:
    """A PNG page of two columns of 600 lines: its OCR takes half a minute on a quiet core
    (minutes on a loaded one), so a test can end it in the middle, or see it overrun a time
    limit of seconds that a text document, imports included, keeps far within."""
    column = render_text(OCR_LINES * 200)
    page = Image.new("L", (2 * column.width, column.height), 255)
    page.paste(column, (0, 0))
    page.paste(column, (column.width, 0))
    return image_bytes(page, "PNG")


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def make_pdf(pages: list[list[str] | Image.Image], encrypt: bool = False) -> bytes:
    """A minimal PDF: a page per entry, text lines in Helvetica or a greyscale image (200 dpi).
    ``encrypt`` adds a Standard security handler whose user password is not empty."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b"", b"<< /Type /Font /Subtype /Type1 "
                            b"/BaseFont /Helvetica >>"]  # fmt: skip
    kids = []
    for page in pages:
        if isinstance(page, Image.Image):
            jpeg = image_bytes(page.convert("L"), "JPEG")
            w, h = page.size
            pw, ph = w * 72 / 200, h * 72 / 200
            objects.append(
                b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
                b"/BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n"
                % (w, h, len(jpeg))
                + jpeg
                + b"\nendstream"
            )
            image_ref = len(objects)
            content = b"q %.2f 0 0 %.2f 0 0 cm /Im1 Do Q" % (pw, ph)
            resources = b"<< /XObject << /Im1 %d 0 R >> >>" % image_ref
            box = b"[0 0 %.2f %.2f]" % (pw, ph)
        else:
            body = "BT /F1 12 Tf 72 720 Td 16 TL " + " ".join(f"({_escape(t)}) Tj T*" for t in page) + " ET"
            content = body.encode("latin-1")
            resources = b"<< /Font << /F1 3 0 R >> >>"
            box = b"[0 0 612 792]"
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox %s /Resources %s /Contents %d 0 R >>"
            % (box, resources, len(objects))
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    trailer_extra = b""
    if encrypt:
        objects.append(
            b"<< /Filter /Standard /V 1 /R 2 /O <" + b"ab" * 32 + b"> /U <" + b"cd" * 32 + b"> /P -4 >>"
        )
        trailer_extra = b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (len(objects), b"01" * 16, b"01" * 16)
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        trailer_extra,
        xref,
    )
    return bytes(out)


def cer(expected: str, actual: str) -> float:
    """Character error rate: Levenshtein distance over the expected length (whitespace collapsed)."""
    a, b = " ".join(expected.split()), " ".join(actual.split())
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1] / max(len(a), 1)


PARAGRAPHS = [
    "Rivers carry sediment from the mountains to the sea, and over thousands of years they build "
    "wide plains of fertile soil where farmers have grown grain since the first cities were founded.",
    "The delta changes shape with every flood, which is why old maps of the coast disagree with new "
    "ones, and why surveyors return every decade to measure the channels again.",
    "Engineers now try to hold the river in place with levees, but the water keeps looking for the "
    "shortest way down, and each big storm tests the walls that were built to contain it.",
]


def article_page(paragraphs: list[str] = PARAGRAPHS, title: str = "How rivers shape the land") -> str:
    """A news-style page: nav, cookie banner, share bar, sidebar, comments and footer around an article."""
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>{title} | Daily Example</title>
<script>window.dataLayer = [];</script><style>body {{ font: 14px sans-serif }}</style></head><body>
<header class="site-header"><a href="/">Daily Example</a><nav><ul><li><a href="/world">World</a></li>
<li><a href="/science">Science</a></li><li><a href="/sport">Sport</a></li></ul></nav></header>
<div id="cookie-consent" class="banner">We use cookies to personalise content and ads. By continuing you
accept our cookie policy. <button>Accept all</button></div>
<div class="layout"><main><article><h1>{title}</h1><div class="byline">By A. Writer, 3 May 2024</div>
<div class="share-bar"><a href="#">Share on Facebook</a> <a href="#">Share on X</a></div>
{body}</article>
<section class="comments"><h3>Comments</h3><div class="comment"><p>Great article, thanks for writing it!
I learned a lot about rivers.</p></div></section></main>
<aside class="sidebar"><h3>Most read</h3><ul><li><a href="/1">Ten things about cats you never knew</a></li>
<li><a href="/2">Markets fall again as rates rise</a></li></ul></aside></div>
<footer><p>Copyright 2024 Daily Example Ltd. All rights reserved. Terms of use. Privacy policy.</p>
</footer></body></html>"""


_VOCAB_TEXT = (
    "the of and to in that with have be river delta flood farmer grain city channel survey map coast "
    "levee storm water wall valley harbour bridge market village mill road winter summer season "
    "people families travellers merchants engineers children builders sailors priests soldiers "
    "carried built measured remembered crossed opened followed watched gathered repaired planted "
    "slowly quietly often always later early again together before after during under across "
    "old new wide narrow green dark bright heavy quiet busy distant northern southern ancient"
)
_VOCAB = _VOCAB_TEXT.split()


def prose(seed: int, words: int = 200) -> str:
    """English-like sentences of words drawn at random (seeded): passes the C4 and Gopher rules,
    and another seed shares almost no word 5-grams, so it is neither a copy nor a near one."""
    import random

    rng = random.Random(seed)
    sentences: list[str] = []
    count = 0
    while count < words:
        n = rng.randint(8, 14)
        sentences.append(" ".join(rng.choice(_VOCAB) for _ in range(n)).capitalize() + ".")
        count += n
    return " ".join(sentences)


def sharing_pages(seed: int, shared: int, paragraphs: int = 30, words: int = 20) -> tuple[str, str]:
    """Two distinct pages of ``paragraphs`` paragraphs of ``prose`` with ``shared`` of them in
    common (a site's boilerplate, a quoted passage), in shuffled order, the others their own.
    Their word 3-gram Jaccard similarity is about 0.2, 0.3, 0.4 and 0.5 at ``shared`` 11, 15,
    19 and 22 of 30 (the 3-grams across paragraph boundaries differ)."""
    import random

    common = [prose(seed * 1000 + i, words) for i in range(shared)]
    pages = []
    for side in (1, 2):
        mixed = common + [prose(seed * 1000 + side * 100 + i, words) for i in range(paragraphs - shared)]
        random.Random(seed * 10 + side).shuffle(mixed)
        pages.append("\n\n".join(mixed))
    return pages[0], pages[1]
