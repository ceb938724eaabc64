#!/usr/bin/env bash
# The test command: sets everything up, then lint, type check and the whole pytest suite.
set -euo pipefail
BOOTSTRAP_TEST_TOOLS=1 source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
echo "== ruff" >&2
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
# mypy (half a minute of one core on a fresh clone) runs beside pytest, whose tests mostly wait on
# processes and sockets: its report follows pytest's, and either one failing fails the run
echo "== mypy (beside pytest; its report follows pytest's)" >&2
mypy_out="$(mktemp)"
timeout 900 "$VENV/bin/mypy" >"$mypy_out" 2>&1 &
mypy_pid=$!
trap '[[ -z "$mypy_pid" ]] || kill "$mypy_pid" 2>/dev/null || true; rm -f "$mypy_out"' EXIT
echo "== pytest" >&2
# the project's own modules compiled once, here: every process the tests start (daemons, their
# workers, CLI runs) reads them instead of compiling them again (with PYTHONDONTWRITEBYTECODE set,
# as in CI, nothing else writes them)
"$VENV/bin/python" -m compileall -q daemon workers crawler ingest shm pkg tokens tests  # errors only
# BLAS threads: the tests run several processes on 2 cores; one thread each keeps them honest.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
# what tests leave for people to look at (the dashboard's screenshots), kept after the run
export CRYSTALLINE_TEST_ARTIFACTS="${CRYSTALLINE_TEST_ARTIFACTS:-$ROOT/test-artifacts}"
# pytest runs in the background so that this shell can pass a signal on as if it had exec'd pytest
# (a runner stopping the command it started signals this process alone), but for a Ctrl-C: the
# terminal sends that to the whole foreground process group, pytest included (a background job
# ignores INT unless told not to), and a second INT would cut pytest's teardown short. Either ends
# mypy, and the run ends with pytest's status.
pytest_pid=""
stopping=""
stop() {  # stop SIGNAL
    stopping=1
    [[ -z "$mypy_pid" ]] || kill "$mypy_pid" 2>/dev/null || true
    [[ -n "$pytest_pid" ]] || exit $((128 + $(kill -l "$1")))
    if [[ "$1" != INT ]] || ! terminal_foreground; then
        kill -"$1" "$pytest_pid" 2>/dev/null || true
    fi
}
terminal_foreground() {  # whether this shell's process group is its terminal's foreground one
    local stat pgrp tpgid
    stat="$(</proc/$$/stat)"
    read -r _ _ pgrp _ _ tpgid _ <<<"${stat##*) }"  # fields 5 and 8, after "pid (comm) "
    [[ "$pgrp" == "$tpgid" ]]
}
trap 'stop TERM' TERM
trap 'stop INT' INT
(trap - INT; exec "$VENV/bin/python" -m pytest "$@") &
pytest_pid=$!
pytest_status=0
wait "$pytest_pid" || pytest_status=$?
if [[ -n "$stopping" ]]; then  # the signal cut the wait short: pytest's own end is the status
    pytest_status=0
    wait "$pytest_pid" || pytest_status=$?
    exit "$pytest_status"
fi
echo "== mypy" >&2
mypy_status=0
wait "$mypy_pid" || mypy_status=$?
mypy_pid=""  # waited for: nothing for the exit's trap to end
cat "$mypy_out"
exit $((pytest_status != 0 ? pytest_status : mypy_status))
