#!/usr/bin/env bash
# The run command: sets everything up, then learns from the bundled sample documents
# (no internet needed). State goes to ./state; running it again resumes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
ckpt="$ROOT/state/checkpoints"
resume=()
compgen -G "$ckpt/step-*" >/dev/null && resume=(--resume)
# Until the daemon lands (issue: supervisor, status socket, systemd), the default is the
# one-process trainer on the bundled samples; extra arguments pass through to it.
exec "$VENV/bin/crystalline" train "$ROOT"/daemon/samples/*.txt --checkpoint-dir "$ckpt" "${resume[@]}" "$@"
