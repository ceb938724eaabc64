"""The daemon's health verdict, computed once, in the supervisor, from its status data.

Three uses, one answer: the watchdog (``WATCHDOG=1`` only while the verdict is not ``stuck``),
the status reply (its ``health`` object) and ``crystalline status`` (which prints the reasons
and exits 2 unless the verdict is ``ok``; it never judges by itself).

- ``ok``: nothing to report.
- ``degraded``: something is wrong and the daemon says so, but it is working on it (a worker
  restarting, a crawl or ingest error retried with backoff, a full disk, a state directory it
  cannot use yet, a database that does not answer at start): a restart by systemd would not
  help, so the watchdog is still fed.
- ``stuck``: training is not moving and nothing in the daemon will move it (a control process
  that stopped reporting, steps that stopped): the watchdog is no longer fed, so systemd
  restarts the service.

Standard library only: status data in, a plain dict out.
"""

from __future__ import annotations

from typing import Any

OK, DEGRADED, STUCK = "ok", "degraded", "stuck"
BAD_WORKER_STATES = ("dead", "restarting")
CONTROL_SILENT_S = 60.0  # default of [daemon] control-silent-s: a control process silent this long is stuck


def judge(data: dict[str, Any], control_silent_s: float = CONTROL_SILENT_S) -> dict[str, Any]:
    """``{"verdict": ok|degraded|stuck, "watchdog": bool, "reasons": [one line each]}``; a
    running control process that has reported nothing for over ``control_silent_s`` is stuck."""
    stuck = _stuck_reasons(data, control_silent_s)
    degraded = _degraded_reasons(data)
    verdict = STUCK if stuck else DEGRADED if degraded else OK
    return {"verdict": verdict, "watchdog": verdict != STUCK, "reasons": stuck + degraded}


def _stuck_reasons(data: dict[str, Any], control_silent_s: float) -> list[str]:
    training = data.get("training") or {}
    reasons = []
    age = training.get("status_age_s")
    if isinstance(age, int | float) and age > control_silent_s:
        reasons.append(f"control process silent for {age:.0f} s")
    if training.get("stalled"):
        reasons.append("training stalled: " + str(training["stalled"]))
    return reasons


def _degraded_reasons(data: dict[str, Any]) -> list[str]:
    reasons = []
    training = data.get("training") or {}
    for w in training.get("workers", []):
        if w.get("state") in BAD_WORKER_STATES:
            reasons.append(f"worker {w.get('id')} is {w.get('state')}")
    if data.get("state") == "failed":
        reasons.append(f"daemon state is failed: {data.get('last_error', '')}".rstrip(": "))
    database = data.get("database") or {}
    if database.get("error"):  # at start: the database (--database) does not answer yet
        reasons.append(f"database unreachable ({database['error']})")
    if training.get("error"):  # training cannot start: /dev/shm or open files run out
        reasons.append("training: " + str(training["error"]))
    if training.get("control_error"):  # the control process exited and is being restarted
        reasons.append("control: " + str(training["control_error"]))
    generation = data.get("generation") or {}
    if generation.get("slowing_training"):
        reasons.append("training slowed: " + str(generation["slowing_training"]))
    if training.get("checkpoint_error"):
        reasons.append(str(training["checkpoint_error"]))
    for part, label in (("ingest", "ingest"), ("crawler", "crawl"), ("vocabulary", "vocabulary")):
        section = data.get(part) or {}
        if section.get("error"):
            reasons.append(f"{label}: {section['error']}")
    return reasons
