"""The deadline of a PostgreSQL statement (``crystalline.postgres``), as a setting: ``[crawl]``
and ``[ingest] database-timeout-s`` hold the server's ``statement_timeout``; the client gives up
on a reply that never comes (the network cut with the TCP connection still open) this much after
it. Apart from ``postgres.py`` so that the settings that name it import nothing else (`crystalline
extract` reads the [ingest] table and never opens a database)."""

from __future__ import annotations

# the server's statement_timeout by default, and its bounds: a deadline, not a way to turn
# deadlines off (a minute at most); the daemon's stop does not wait on it: a batch still storing
# at the stop's end is left to the next start (README, "Stopping" and "Faults")
STATEMENT_TIMEOUT_S = 15.0
STATEMENT_TIMEOUT_MIN_S = 1.0
STATEMENT_TIMEOUT_MAX_S = 60.0
# the client's own deadline on a statement, a commit or a connection check, this much after the
# server's (the socket is shut then)
CLIENT_GRACE_S = 2.0


def client_deadline_s(statement_timeout_s: float) -> float:
    """The client's deadline on a statement whose server cancels it after ``statement_timeout_s``."""
    return statement_timeout_s + CLIENT_GRACE_S


def check_statement_timeout(value: float) -> float:
    """``value`` if it is a statement deadline the settings allow, else a one-line ValueError
    (a setting's ``validate``: it names the key ``database-timeout-s``)."""
    if not STATEMENT_TIMEOUT_MIN_S <= value <= STATEMENT_TIMEOUT_MAX_S:  # nan fails both
        raise ValueError(
            f"database-timeout-s must be at least {STATEMENT_TIMEOUT_MIN_S:g} and at most "
            f"{STATEMENT_TIMEOUT_MAX_S:g} s, got {value:g}"
        )
    return value
