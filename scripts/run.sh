#!/usr/bin/env bash
# The run command: sets everything up, then runs the daemon on its built-in default: no
# config, no internet; it learns from the bundled sample documents (texts, an HTML page, a
# scanned page, a PDF) copied into its drop folder. State goes to ./state; running it again
# resumes. Ctrl-C checkpoints and stops. Extra arguments pass through (`--crawl-start-url URL` crawls).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
echo "crystalline: starting; ask it with: $VENV/bin/crystalline status --runtime-dir $ROOT/state/run" >&2
exec "$VENV/bin/crystalline" run --state-dir "$ROOT/state" "$@"
