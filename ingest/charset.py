"""Decoding fetched bytes to text: BOM, then the HTTP header, then ``<meta charset>``, then
detection, the order browsers use, with one correction: a label that does not fit the bytes
(a server saying UTF-8 for a Latin-1 page, or Latin-1 for UTF-8) is ignored instead of
producing mojibake.
"""

from __future__ import annotations

import codecs
import re

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_META = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_SINGLE_BYTE = {"latin-1", "iso8859-1", "cp1252", "ascii"}
# Detection reads a prefix only: a 20 MB page is decided on its first 256 KB.
_DETECT_BYTES = 256 * 1024


def _codec(label: str | None) -> str | None:
    """Python's codec name for a charset label, or None if unknown. Latin-1 means windows-1252,
    as in every browser (WHATWG Encoding Standard)."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
    except LookupError:
        return None
    return "cp1252" if name in ("latin-1", "iso8859-1", "ascii") else name


def _fits(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except UnicodeDecodeError:
        return False
    if codec in _SINGLE_BYTE and not data.isascii():
        # A single-byte label on bytes that are valid UTF-8 with non-ASCII characters is almost
        # certainly wrong: Latin-1 text is practically never valid multi-byte UTF-8 by chance.
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False
    return True


def _latin_like(text: str) -> bool:
    """Whether ``text`` reads as Western European: its non-ASCII characters are few and (>= 95%)
    Latin letters or punctuation."""
    extra = [c for c in text if ord(c) > 127]
    latin = sum(1 for c in extra if "\u00a0" <= c <= "\u024f" or "\u2010" <= c <= "\u20ac")
    # Accents are sparse in Western languages; Cyrillic or Greek bytes read as cp1252 are not.
    sparse = len(extra) <= 0.3 * max(sum(1 for c in text if c.isalpha()), 1)
    return not extra or (latin >= 0.95 * len(extra) and sparse)


def meta_charset(data: bytes) -> str | None:
    """The charset declared in a ``<meta>`` tag within the first 4 KB, if any."""
    m = _META.search(data[:4096])
    return m.group(1).decode("ascii") if m else None


def decode_bytes(data: bytes, header_charset: str | None = None, html: bool = True) -> tuple[str, str]:
    """Decode ``data`` to (text, codec used); never raises: the last resort is UTF-8 with
    replacement characters, which the quality filter then counts."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(codec, errors="replace"), codec
    candidates: list[str | None] = [_codec(header_charset)]
    if html:
        candidates.append(_codec(meta_charset(data)))
    candidates.append("utf-8")
    for candidate in candidates:
        if candidate and _fits(data, candidate):
            return data.decode(candidate), candidate
    # Western text in windows-1252 is the commonest unlabelled non-UTF-8 on the web, and
    # detectors misjudge short samples of it (a few accents read as Arabic cp1256), so it is
    # tried first and kept when its non-ASCII characters are Latin letters and punctuation.
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = ""
    if western and _latin_like(western[:_DETECT_BYTES]):
        return western, "cp1252"
    # the last resort only (~8 ms to import): a labelled or UTF-8 page never needs it
    import charset_normalizer

    best = charset_normalizer.from_bytes(data[:_DETECT_BYTES]).best()
    detected = (_codec(best.encoding) if best is not None else None) or "cp1252"
    return data.decode(detected, errors="replace"), detected
