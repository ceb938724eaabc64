#!/usr/bin/env bash
# Sourced by run.sh and test.sh: makes .venv with the project and its dev tools installed (with
# BOOTSTRAP_SERVICE=1, the README's service install: without them),
# and tesseract-ocr present (through apt when run as root). Idempotent and quiet when done.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "crystalline needs Python >= 3.11 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "bootstrap: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi

# Reinstall only when pyproject.toml changed since the last successful install.
# The tests also run the frontier and the registry on PostgreSQL (psycopg comes with them) and
# daemons training across machines (torch.distributed: the cluster extra).
extras="dev"
[[ -n "${BOOTSTRAP_TEST_TOOLS:-}" ]] && extras="dev,postgres,cluster"
# the service's install (README, "Running under systemd"): the project and what it runs on, no
# dev tools (pytest, ruff, mypy, playwright)
[[ -n "${BOOTSTRAP_SERVICE:-}" ]] && extras=""
stamp="$VENV/.crystalline-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $extras"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    echo "bootstrap: installing crystalline and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT${extras:+[$extras]}"
    echo "$want" > "$stamp"
fi

# The test suite's real-systemd test (tests/systemd) boots a Debian root file system with
# systemd-nspawn, made by debootstrap: test.sh asks for both, a plain install does not need them.
if [[ -n "${BOOTSTRAP_TEST_TOOLS:-}" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1 \
    && ! { command -v systemd-nspawn && command -v debootstrap; } >/dev/null 2>&1; then
    echo "bootstrap: installing systemd-container and debootstrap with apt-get (for tests/systemd)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        systemd-container debootstrap >/dev/null
fi

if ! command -v tesseract >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing tesseract-ocr with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng >/dev/null
    else
        echo "bootstrap: tesseract-ocr is missing and this is not root: OCR of images and scanned PDFs" \
             "will fail until you run: sudo apt-get install tesseract-ocr" >&2
    fi
fi

# OCR runs tesseract under setpriv --pdeathsig (ingest/ocr.py): util-linux >= 2.33, essential on
# Debian and Ubuntu, so it is named here rather than installed (apt-get cannot give a newer one)
if ! command -v setpriv >/dev/null 2>&1; then
    echo "bootstrap: setpriv is missing: OCR of images and scanned PDFs needs it (util-linux >= 2.33)" \
         "and will fail until you run: sudo apt-get install util-linux" >&2
elif [[ "$(setpriv --help 2>/dev/null)" != *--pdeathsig* ]]; then
    echo "bootstrap: setpriv has no --pdeathsig: OCR of images and scanned PDFs needs util-linux >= 2.33" \
         "($(command -v setpriv) is older) and will fail until it is upgraded" >&2
fi

# A Debian package a test needs (test.sh asks for them), installed as root, named when not root:
# test_package PACKAGE "what skips without it"
test_package() {
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing $1 with apt-get (for $2)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >/dev/null
    else
        echo "bootstrap: $1 is missing and this is not root: $2 skip until you run:" \
             "sudo apt-get install $1" >&2
    fi
}

# The PostgreSQL tests (frontier, registry, crawlers of several machines) start their own cluster
# from Debian's postgresql (initdb into a temporary directory, as nobody).
if [[ -n "${BOOTSTRAP_TEST_TOOLS:-}" ]] && ! command -v pg_ctl >/dev/null 2>&1 \
    && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    test_package postgresql "the PostgreSQL tests"
fi

# The cluster tests make network namespaces joined by veth pairs with iproute2's ip.
if [[ -n "${BOOTSTRAP_TEST_TOOLS:-}" ]] && ! command -v ip >/dev/null 2>&1; then
    test_package iproute2 "the cluster tests' network namespaces (they fall back to loopback addresses)"
fi
# The lossy-link tests (tests/daemon/test_cluster_links.py) drop packets with nftables' nft
# (iproute2's tc shapes the slow links).
if [[ -n "${BOOTSTRAP_TEST_TOOLS:-}" ]] && ! command -v nft >/dev/null 2>&1; then
    test_package nftables "the cluster tests on a lossy link"
fi

# The dashboard's browser tests (tests/daemon/test_dashboard_browser.py) drive Debian's chromium
# with Playwright (the pip package is in the dev extra; `playwright install` is never run, no
# browser is downloaded): test.sh asks for it, a plain install does not need it.
if [[ -n "${BOOTSTRAP_TEST_TOOLS:-}" ]] && ! command -v chromium >/dev/null 2>&1; then
    test_package chromium "the dashboard's browser tests"
fi
