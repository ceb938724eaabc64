"""Main-text extraction quality and speed on real pages: crystalline vs trafilatura, side by side.

The first table is the real development set (``../shared/data/extraction-dev``: 124 article
pages with the text a careful reader keeps, scored by its own ``score.py``: word 4-gram
precision and recall per page, averaged). Its truth.json was written as UTF-8 read as Latin-1
(mojibake on every non-ASCII page), which costs every extractor equally; the bench repairs it
(``--truth-as-given`` scores it raw). Columns: F1 on two fixed random halves (develop on one,
check on the other) and on all, then precision, recall and pages/s of CPU time on one core.
Rows: crystalline as shipped (trafilatura's fast mode, our extractor's text where it is over
1.5x as long or trafilatura finds nothing), our extractor alone, trafilatura alone (fast mode,
as score.py's comparison calls it on the decoded page) and trafilatura 2.x with its defaults
(its own fallbacks to readability-lxml and jusText).

The second table is end to end, as ``score.py --crystalline`` sees it: one ``crystalline
extract --json`` run over the pages (start-up, the extraction process, filters' verdicts, JSON),
wall and CPU time of the command and its children, beside trafilatura's defaults in this
process in the same run (run it under ``taskset -c 1`` for one core). The machine is shared, so
the ratios are the figures to read, not the pages/s.

The third table is generated layouts (seeded), each page with its known body text: eight
layouts the old extractor was tuned on and four written after it. They flatter any
extractor tuned on them; the real set is the one to develop against.

    taskset -c 1 .venv/bin/python bench/extract_quality.py [--dev-set DIR] [--pages 80] [--runs 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import trafilatura

from crystalline.ingest.charset import decode_bytes
from crystalline.ingest.html_text import extract_html

try:  # the get_text baseline only: beautifulsoup4 is the bench extra, not a dependency
    from bs4 import BeautifulSoup
except ImportError:
    BeautifulSoup = None

DEV_SET = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "extraction-dev"

WORDS = [
    "river",
    "delta",
    "flood",
    "farmer",
    "grain",
    "city",
    "channel",
    "survey",
    "map",
    "coast",
    "levee",
    "storm",
    "water",
    "wall",
    "engineer",
    "century",
    "soil",
    "plain",
    "mountain",
    "sea",
    "sediment",
    "harbour",
    "bridge",
    "market",
    "trade",
    "ship",
    "road",
    "village",
    "winter",
    "summer",
    "season",
    "harvest",
    "tower",
    "stone",
    "clay",
    "brick",
    "canal",
    "lock",
    "mill",
]


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
    cut = rng.randint(3, len(words) - 2)
    return (" ".join(words[:cut]) + ", " + " ".join(words[cut:])).capitalize() + "."


def paragraph(rng: random.Random) -> str:
    return " ".join(sentence(rng) for _ in range(rng.randint(2, 5)))


def links(rng: random.Random, n: int) -> str:
    return "".join(
        f'<li><a href="/{i}">{rng.choice(WORDS).title()} {rng.choice(WORDS)}</a></li>' for i in range(n)
    )


def page(layout: int, rng: random.Random) -> tuple[str, str]:
    """(html, expected body text) for one layout."""
    title = " ".join(rng.choice(WORDS) for _ in range(5)).title()
    paras = [paragraph(rng) for _ in range(rng.randint(3, 8))]
    sub = " ".join(rng.choice(WORDS) for _ in range(3)).title()
    body_html = (
        "".join(f"<p>{p}</p>" for p in paras[:2])
        + f"<h2>{sub}</h2>"
        + "".join(f"<p>{p}</p>" for p in paras[2:])
    )
    expected = "\n".join([title, *paras[:2], sub, *paras[2:]])
    nav = f"<ul>{links(rng, 8)}</ul>"
    foot = "<p>Copyright 2024 Example Media. All rights reserved. Privacy policy and terms of use.</p>"
    related = f"<h3>Related stories</h3><ul>{links(rng, 5)}</ul>"
    comments = "".join(f'<div class="comment"><p>{sentence(rng)}</p></div>' for _ in range(3))
    cookie = "<div id='cookie-notice'>We use cookies to improve your experience on our site. Accept?</div>"
    head = f"<head><title>{title} - Site</title><script>var a = 1;</script></head>"
    if layout == 0:  # news with semantic tags
        b = (
            f"<header><nav>{nav}</nav></header>{cookie}<main><article><h1>{title}</h1>{body_html}</article>"
            f"<section class='comments'>{comments}</section></main><aside>{related}</aside>"
            f"<footer>{foot}</footer>"
        )
    elif layout == 1:  # blog with class names only
        b = (
            f"<div class='top-menu'>{nav}</div><div class='wrapper'>"
            f"<div class='post-content'><h1>{title}</h1>"
            f"{body_html}<div class='share-buttons'>Share Tweet Pin Email</div></div>"
            f"<div class='widget-area'>{related}</div></div><div class='site-footer'>{foot}</div>"
        )
    elif layout == 2:  # documentation with a sidebar table of contents
        b = (
            f"<div class='sidebar'><h3>Contents</h3><ul>{links(rng, 15)}</ul></div><div class='document'>"
            f"<h1>{title}</h1>{body_html}</div><div class='footer'>{foot}</div>"
        )
    elif layout == 3:  # div soup without semantic tags or helpful classes
        b = (
            f"<div id='a1'>{nav}</div><div id='a2'><div id='a3'><h1>{title}</h1>{body_html}</div>"
            f"<div id='a4'>{related}</div></div><div id='a5'>{foot}</div>"
        )
    elif layout == 4:  # old table layout
        b = (
            f"<table><tr><td colspan=2>{nav}</td></tr><tr><td width=150>{related}</td><td>"
            f"<h1>{title}</h1>{body_html}</td></tr><tr><td colspan=2>{foot}</td></tr></table>"
        )
    elif layout == 5:  # the whole page in a form (ASP.NET)
        b = (
            f"<form id='aspnetForm'><div class='menu'>{nav}</div>"
            f"<div id='content'><h1>{title}</h1>{body_html}"
            f"</div><div id='footer'>{foot}</div></form>"
        )
    elif layout == 6:  # wiki with infobox, edit links and references
        refs = "".join(f"<li>{sentence(rng)}</li>" for _ in range(4))
        b = (
            f"<div id='mw-navigation'>{nav}</div><div id='bodyContent'><h1>{title}</h1>"
            f"<table class='infobox'><tr><td>Founded</td><td>1822</td></tr></table>{body_html}"
            f"<h2>References</h2><ol class='references'>{refs}</ol></div><div id='footer'>{foot}</div>"
        )
    else:  # product page
        b = (
            f"{cookie}<div class='navbar'>{nav}</div><div class='product'><h1>{title}</h1>"
            f"<div class='price'>$ 19.99</div><button>Add to cart</button>"
            f"<div class='description'>{body_html}"
            f"</div></div><div class='recommended'>{related}</div><footer>{foot}</footer>"
        )
    return f"<!DOCTYPE html><html lang='en'>{head}<body>{b}</body></html>", expected


def held_out_page(layout: int, rng: random.Random) -> tuple[str, str]:
    """Layouts written after the extractor was frozen and never tuned against: the fairer test.

    They add what the development set lacks: body text in spans and divs instead of <p>,
    lists inside the body, inline ads and "read more" links between paragraphs, figure
    captions, paragraph-length comments, mega-menus and multi-column footers.
    """
    title = " ".join(rng.choice(WORDS) for _ in range(6)).title()
    paras = [paragraph(rng) for _ in range(rng.randint(4, 9))]
    items = [sentence(rng) for _ in range(rng.randint(3, 5))]
    head = f"<head><meta charset='utf-8'><title>{title} | Portal</title><style>.x{{}}</style></head>"
    mega = "".join(
        f"<div class='col'><h4>{rng.choice(WORDS).title()}</h4><ul>{links(rng, 6)}</ul></div>"
        for _ in range(4)
    )
    footer = "".join(f"<div class='fcol'><ul>{links(rng, 5)}</ul></div>" for _ in range(4))
    ad = (
        "<div class='ad-slot'><span>Advertisement</span>"
        "<a href='/promo'>Buy now and save on grain storage</a></div>"
    )
    more = f"<p class='read-more'><strong>Read more:</strong> <a href='/r'>{sentence(rng)}</a></p>"
    comments = "".join(
        f"<li class='comment'><div class='author'>user{i}</div>"
        f"<div class='comment-body'><p>{paragraph(rng)}</p></div></li>"
        for i in range(3)
    )
    if layout == 0:  # news article with inline ads, read-more links and a figure
        body = "".join(
            f"<p>{p}</p>" + (ad if i == 1 else "") + (more if i == 3 else "") for i, p in enumerate(paras)
        )
        fig = f"<figure><img src='a.jpg'><figcaption>Photo: {rng.choice(WORDS)} archive</figcaption></figure>"
        b = (
            f"<div class='mega-menu'>{mega}</div><div class='breadcrumb'><a href='/'>Home</a> &gt; News</div>"
            f"<div class='story'><h1 class='headline'>{title}</h1><div class='dateline'>12 March</div>{fig}"
            f"<div class='story-body'>{body}</div></div><ul class='comments'>{comments}</ul>"
            f"<div class='footer-links'>{footer}</div>"
        )
        expected = [title, *paras]
    elif layout == 1:  # app-style grid: body text in divs and spans, widgets in a side column
        body = "".join(f"<div class='text-block'><span>{p}</span></div>" for p in paras)
        widgets = "".join(
            f"<div class='widget'><h5>{rng.choice(WORDS).title()}</h5><ul>{links(rng, 4)}</ul></div>"
            for _ in range(3)
        )
        b = (
            f"<div class='app'><div class='topbar'>{links(rng, 6)}</div>"
            f"<div class='container'><div class='row'>"
            f"<div class='col-md-8'><div class='card'><div class='card-title'>{title}</div>{body}</div></div>"
            f"<div class='col-md-4'>{widgets}</div></div></div><div class='bottom'>{footer}</div></div>"
        )
        expected = [title, *paras]
    elif layout == 2:  # how-to with a list of steps inside the body and a newsletter box
        steps = "".join(f"<li>{it}</li>" for it in items)
        body = f"<p>{paras[0]}</p><p>{paras[1]}</p><ol class='steps'>{steps}</ol>" + "".join(
            f"<p>{p}</p>" for p in paras[2:]
        )
        b = (
            f"<header class='site'>{mega}</header><section class='howto'><h1>{title}</h1>{body}</section>"
            f"<section class='newsletter'><h3>Subscribe</h3><p>Get our weekly digest in your inbox.</p>"
            f"<input type='email'></section><section class='more-guides'><ul>{links(rng, 8)}</ul></section>"
            f"<footer>{footer}</footer>"
        )
        expected = [title, paras[0], paras[1], *items, *paras[2:]]
    else:  # press release: breadcrumb, sections with their own headings, share bar, contact box
        heads = [" ".join(rng.choice(WORDS) for _ in range(3)).title() for _ in paras[::3]]
        body, expected = "", [title]
        for i, p in enumerate(paras):
            if i % 3 == 0:
                body += f"<section><h2>{heads[i // 3]}</h2>"
                expected.append(heads[i // 3])
            body += f"<p>{p}</p>"
            expected.append(p)
            if i % 3 == 2 or i == len(paras) - 1:
                body += "</section>"
        b = (
            f"<nav class='crumbs'><a href='/'>Home</a> / <a href='/press'>Press</a></nav>"
            f"<div id='content'><h1>{title}</h1><div class='share'>Share on Facebook Twitter LinkedIn</div>"
            f"{body}<div class='contact'><p>Media contact: press office, telephone 0100 000 000.</p></div>"
            f"</div>"
            f"<div id='site-footer'>{footer}</div>"
        )
    return f"<!DOCTYPE html><html lang='en'>{head}<body>{b}</body></html>", "\n".join(expected)


def prf(expected: str, got: str) -> tuple[float, float, float]:
    e, g = Counter(expected.lower().split()), Counter(got.lower().split())
    common = sum((e & g).values())
    p = common / max(sum(g.values()), 1)
    r = common / max(sum(e.values()), 1)
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def score(name: str, fn, pages: list[tuple[str, str]]) -> None:  # type: ignore[no-untyped-def]
    t = time.process_time()
    outs = [fn(html) or "" for html, _ in pages]
    dt = max(time.process_time() - t, 1e-9)
    scores = [prf(exp, out) for (_, exp), out in zip(pages, outs, strict=True)]
    p, r, f = (sum(s[i] for s in scores) / len(scores) for i in range(3))
    print(f"{name:12s} precision {p:.3f}  recall {r:.3f}  F1 {f:.3f}  {len(pages) / dt:7.1f} pages/s")


def _repaired(text: str) -> str:
    """UTF-8 that was read as Latin-1, read back as UTF-8 (text that is not such is kept)."""
    try:
        return text.encode("latin-1").decode("utf-8", errors="replace")
    except UnicodeEncodeError:
        return text


def dev_truth(folder: Path, truth_as_given: bool) -> dict[str, str]:
    """The dev set's truth.json by page name, repaired (see :func:`_repaired`) unless as given."""
    truth: dict[str, str] = json.loads((folder / "truth.json").read_text())
    return truth if truth_as_given else {k: _repaired(v) for k, v in truth.items()}


def real_set(folder: Path, truth_as_given: bool) -> None:
    """Score each extractor on the real pages of ``folder`` with its own score.py."""
    spec = importlib.util.spec_from_file_location("dev_score", folder / "score.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"{folder}/score.py: cannot load")
    scorer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(scorer)
    truth = dev_truth(folder, truth_as_given)
    names = sorted(truth)
    # Every extractor gets the same decoded text, as the ingest pool hands it over.
    pages = {
        k: decode_bytes((folder / "pages" / f"{k}.html").read_bytes(), None, html=True)[0] for k in names
    }
    shuffled = names[:]
    random.Random(11).shuffle(shuffled)
    halves = (set(shuffled[: len(names) // 2]), set(shuffled[len(names) // 2 :]))
    extractors: dict[str, Callable[[str], str | None]] = {
        "crystalline": lambda h: extract_html(h).text,
        "ours alone": lambda h: extract_html(h, "never").text,
        "traf. fast": lambda h: trafilatura.extract(h, fast=True, include_comments=False),
        "trafilatura": trafilatura.extract,
    }
    print(f"real pages: {len(names)} from {folder} (truth {'as given' if truth_as_given else 'repaired'})")
    print(f"{'':12s}  F1 half A  F1 half B  F1 all  precision  recall  pages/s (CPU, one core)")
    for label, fn in extractors.items():
        cpu = time.process_time()
        pred = {k: fn(pages[k]) or "" for k in names}
        speed = len(names) / max(time.process_time() - cpu, 1e-9)
        a, b = (scorer.score({k: truth[k] for k in half}, pred)["f1"] for half in halves)
        m = scorer.score(truth, pred)
        print(
            f"{label:12s}  {a:9.3f}  {b:9.3f}  {m['f1']:6.3f}  {m['precision']:9.3f}  {m['recall']:6.3f}"
            f"  {speed:7.1f}"
        )


def end_to_end(folder: Path, runs: int) -> None:
    """`crystalline extract --json` over the pages beside trafilatura in-process, ``runs`` times."""
    pages = sorted((folder / "pages").glob("*.html"))
    command = [str(Path(sys.executable).with_name("crystalline")), "extract", "--json", *map(str, pages)]
    print(f"\nend to end: {len(pages)} pages, crystalline extract --json beside trafilatura.extract")
    print(f"{'':5s}  {'crystalline pages/s':>22s}  {'trafilatura pages/s':>22s}  {'ours / theirs':>14s}")
    print(f"{'run':5s}  {'wall':>10s}  {'CPU':>10s}  {'wall':>10s}  {'CPU':>10s}  {'wall':>6s}  {'CPU':>6s}")
    for run in range(1, runs + 1):
        before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
        out = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        ours_wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        if len(out.stdout.splitlines()) != len(pages):
            raise SystemExit(f"crystalline extract: {out.stderr.strip()[-300:]}")
        ours_cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        start, cpu = time.monotonic(), time.process_time()
        for path in pages:
            trafilatura.extract(path.read_bytes())
        theirs_wall, theirs_cpu = time.monotonic() - start, time.process_time() - cpu
        n = len(pages)
        speeds = "  ".join(f"{n / secs:10.1f}" for secs in (ours_wall, ours_cpu, theirs_wall, theirs_cpu))
        print(f"{run:<5d}  {speeds}  {theirs_wall / ours_wall:6.2f}  {theirs_cpu / ours_cpu:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dev-set", type=Path, default=DEV_SET, help=f"real pages and truth (default {DEV_SET})")
    ap.add_argument("--truth-as-given", action="store_true", help="score against truth.json without repair")
    ap.add_argument("--pages", type=int, default=80, help="generated pages per set")
    ap.add_argument("--runs", type=int, default=2, help="end-to-end runs (0: none)")
    args = ap.parse_args()
    if args.pages < 1:  # the generated tables average over their pages
        ap.error(f"argument --pages: {args.pages} is not a positive number of pages")
    if args.runs < 0:
        ap.error(f"argument --runs: {args.runs} is negative (0: no end-to-end runs)")
    if (args.dev_set / "truth.json").is_file():
        real_set(args.dev_set, args.truth_as_given)
        if args.runs:
            end_to_end(args.dev_set, args.runs)
    else:
        print(f"{args.dev_set}: no truth.json, real-page table skipped")
    rng = random.Random(0)
    sets = {
        "generated, 8 layouts the old extractor was tuned on": [page(i % 8, rng) for i in range(args.pages)],
        "generated, 4 layouts never tuned against": [held_out_page(i % 4, rng) for i in range(args.pages)],
    }
    for label, generated in sets.items():
        print(f"\n{label}: {len(generated)} pages, one core")
        score("crystalline", lambda h: extract_html(h).text, generated)
        score("ours alone", lambda h: extract_html(h, "never").text, generated)
        score("trafilatura", lambda h: trafilatura.extract(h, include_comments=False), generated)
        if BeautifulSoup is None:
            print("  bs4 get_text: skipped (beautifulsoup4 is the bench extra: pip install -e .[bench])")
        else:
            score("bs4 get_text", lambda h: BeautifulSoup(h, "lxml").get_text(" "), generated)


if __name__ == "__main__":
    main()
