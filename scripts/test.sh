#!/usr/bin/env bash
# The test command: sets everything up, then lint, type check and the whole pytest suite.
set -euo pipefail
BOOTSTRAP_TEST_TOOLS=1 source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
echo "== ruff" >&2
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy" >&2
"$VENV/bin/mypy"
echo "== pytest" >&2
# the project's own modules compiled once, here: every process the tests start (daemons, their
# workers, CLI runs) reads them instead of compiling them again (with PYTHONDONTWRITEBYTECODE set,
# as in CI, nothing else writes them)
"$VENV/bin/python" -m compileall -q daemon workers crawler ingest shm pkg tokens tests  # errors only
# BLAS threads: the tests run several processes on 2 cores; one thread each keeps them honest.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
# what tests leave for people to look at (the dashboard's screenshots), kept after the run
export CRYSTALLINE_TEST_ARTIFACTS="${CRYSTALLINE_TEST_ARTIFACTS:-$ROOT/test-artifacts}"
exec "$VENV/bin/python" -m pytest "$@"
