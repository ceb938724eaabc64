"""Personal data replaced before tokenizing: e-mail addresses and IP addresses.

As in FineWeb (datatrove's PII formatter), matches become fixed placeholders from the ranges
reserved for documentation (RFC 2606 ``example.com``, RFC 5737 ``192.0.2.0``, RFC 3849
``2001:db8::``), so the model still sees well-formed text but never a real address. The
patterns are conservative: a version number (``1.2.3``, ``v1.2.3.4``, ``version 10.0.0.1``), an
OID (``1.3.6.1.4.1``) or a clock time (``12:30:45``) is left alone.
"""

from __future__ import annotations

import re

EMAIL_PLACEHOLDER = "email@example.com"
IPV4_PLACEHOLDER = "192.0.2.0"
IPV6_PLACEHOLDER = "2001:db8::"

_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![\w-])"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Not inside a longer dotted number (an OID), not after "v" or "version" (a release number).
_IPV4 = re.compile(
    rf"(?<![\w.])(?<!version )(?<!Version )(?<!VERSION ){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"
)
_H = r"[0-9A-Fa-f]{1,4}"
# Full eight-group form, or a compressed form with "::" and at least three groups overall.
_IPV6 = re.compile(
    rf"(?<![\w:.])(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,6}}:(?:{_H}:){{0,5}}{_H}|(?:{_H}:){{2,6}}:)(?![\w:])"
)
# What every match of each pattern contains, found in one fast scan: the patterns, which start
# with look-behinds, are tried at every position of the text (0.25 ms each on a dev-set page)
# and most pages have neither hint. IPv4: a digit, a dot, a digit; IPv6: "::" or seven groups.
_IPV4_HINT = re.compile(r"\d\.\d")
_IPV6_HINT = re.compile(rf"{_H}:(?:{_H}:){{6}}")


def scrub_pii(text: str) -> tuple[str, dict[str, int]]:
    """``text`` with e-mail and IP addresses replaced, and how many of each were replaced."""
    counts: dict[str, int] = {}
    if "@" in text:  # most pages: one scan for "@" instead of the pattern tried at every position
        text, n = _EMAIL.subn(EMAIL_PLACEHOLDER, text)
        if n:
            counts["email"] = n
    if _IPV4_HINT.search(text):
        text, n = _IPV4.subn(IPV4_PLACEHOLDER, text)
        if n:
            counts["ipv4"] = n
    if not ("::" in text or _IPV6_HINT.search(text)):
        return text, counts
    replaced = 0

    def ipv6(m: re.Match[str]) -> str:
        nonlocal replaced
        groups = [g for g in m.group(0).split(":") if g]
        if all(g.isdigit() and len(g) <= 2 for g in groups):  # a clock time or a ratio
            return m.group(0)
        replaced += 1
        return IPV6_PLACEHOLDER

    text = _IPV6.sub(ipv6, text)
    if replaced:
        counts["ipv6"] = replaced
    return text, counts
