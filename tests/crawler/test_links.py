"""Link extraction from HTML."""

from __future__ import annotations

from crystalline.crawler.links import extract_links


def test_relative_links_resolve_against_the_page() -> None:
    body = b'<a href="b.html">1</a><a href="/root">2</a><a href="../up">3</a><a href="b.html#x">dup</a>'
    assert extract_links(body, "http://h/dir/page") == ["http://h/dir/b.html", "http://h/root", "http://h/up"]


def test_base_href_wins_over_the_page_url() -> None:
    body = b'<html><head><base href="http://cdn.h/docs/"></head><body><a href="x">x</a></body></html>'
    assert extract_links(body, "http://h/a/b") == ["http://cdn.h/docs/x"]


def test_nofollow_is_honoured() -> None:
    body = (
        b'<a rel="nofollow" href="/no">n</a><a rel="external NoFollow" href="/no2">n</a><a href="/yes">y</a>'
    )
    assert extract_links(body, "http://h/") == ["http://h/yes"]
    meta = b'<html><head><meta name="robots" content="noindex, nofollow"></head><a href="/a">a</a></html>'
    assert extract_links(meta, "http://h/") == []


def test_non_http_links_and_fragments_are_skipped() -> None:
    body = (
        b'<a href="javascript:void(0)">j</a><a href="mailto:a@h">m</a><a href="#top">t</a><area href="/map">'
    )
    assert extract_links(body, "http://h/") == ["http://h/map"]


def test_page_encoding_is_used() -> None:
    body = '<a href="/café?q=é">c</a>'.encode("latin-1")
    # the path is UTF-8 percent-encoded, the query in the page's encoding (as browsers do)
    assert extract_links(body, "http://h/", "iso-8859-1") == ["http://h/caf%C3%A9?q=%E9"]
    meta = '<html><head><meta charset="iso-8859-1"></head><a href="/é">x</a></html>'.encode("latin-1")
    assert extract_links(meta, "http://h/") == ["http://h/%C3%A9"]


def test_garbage_yields_no_links() -> None:
    assert extract_links(b"", "http://h/") == []
    assert extract_links(bytes(range(256)), "http://h/") == []
