"""URL rules: canonical form, the fetch gate, scope and trap guards."""

from __future__ import annotations

from crystalline.crawler.settings import CrawlSettings
from crystalline.crawler.urls import UrlPolicy, canonical_url, url_pattern


def test_canonical_form_dedups_equivalent_urls() -> None:
    forms = ["HTTP://Example.COM:80/a/../b?y=2&x=1#frag", "http://example.com/b?x=1&y=2"]
    assert {canonical_url(u) for u in forms} == {"http://example.com/b?x=1&y=2"}
    assert canonical_url("https://example.com:443") == "https://example.com/"
    assert canonical_url("http://example.com:8080/%7euser") == "http://example.com:8080/~user"


def test_fetch_gate() -> None:
    policy = UrlPolicy(CrawlSettings(max_url_length=60))
    assert policy.check_fetch("https://example.com/a") is None
    assert "scheme" in (policy.check_fetch("file:///etc/passwd") or "")
    assert "credentials" in (policy.check_fetch("http://user:pw@example.com/") or "")
    assert "private" in (policy.check_fetch("http://192.168.1.1/") or "")
    assert "private" in (policy.check_fetch("http://[::1]:8080/") or "")
    assert "longer" in (policy.check_fetch("http://example.com/" + "a" * 60) or "")
    assert UrlPolicy(CrawlSettings(allow_private_addresses=True)).check_fetch("http://127.0.0.1:9/") is None


def test_scope_is_domains_and_their_subdomains() -> None:
    policy = UrlPolicy(CrawlSettings(allowed_domains=("example.com",)))
    assert policy.in_scope("http://example.com/") and policy.in_scope("http://docs.example.com/x")
    assert not policy.in_scope("http://notexample.com/") and not policy.in_scope("http://example.org/")
    seeded = UrlPolicy(CrawlSettings())
    seeded.add_seed("http://site.org/start")
    assert seeded.in_scope("http://site.org/other") and not seeded.in_scope("http://other.org/")


def test_trap_guards() -> None:
    policy = UrlPolicy(CrawlSettings(max_path_segments=6, max_query_params=3))
    assert policy.check_trap("http://h/a/b/c") is None
    assert policy.check_trap("http://h/a/b/a/b/a/b/a/b") is not None  # too deep and repeating
    assert policy.check_trap("http://h/x/x/x/x/y") is not None  # a segment repeated 4 times
    assert policy.check_trap("http://h/?a=1&b=2&c=3&d=4") is not None


def test_url_pattern_masks_digits() -> None:
    assert url_pattern("http://h/cal?month=2031-07&view=m") == url_pattern(
        "http://h/cal?view=x&month=1999-01"
    )
    assert url_pattern("http://h/item/12") == "/item/#"
    assert url_pattern("http://h/about") != url_pattern("http://h/contact")
