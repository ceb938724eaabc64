"""`crystalline extract --json` run in a child process as a user runs it, reporting beside its
output what the tests check: its exit status, how many pool workers it started, its peak RSS."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

# run with `-c` (a spawned worker re-imports a script file as its main module): pinned to CPUS
# CPUs (one: its first; more: said to have them, so that --processes N > 1 is a pool even on a
# machine of one CPU), counting the pool's worker processes as they start
_SCRIPT = """
import json, os, resource, sys
from crystalline.daemon import cli
from crystalline.ingest import command, pool

cpus, args = int(sys.argv[1]), sys.argv[2:]
if cpus == 1:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
else:
    command.usable_cpus = lambda: cpus
workers = []
start = pool._Worker.__init__

def counted(self, *args):
    workers.append(1)
    start(self, *args)

pool._Worker.__init__ = counted
status = cli.main(["extract", "--json", *args])
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": status, "workers": len(workers), "peak_kb": peak_kb}))
"""


@dataclass
class ExtractRun:
    lines: list[str]  # the JSON lines printed, one per file
    status: int  # what the command returned
    workers: int  # pool worker processes started
    peak_kb: int  # the command process's own peak RSS (its workers' not included)
    stderr: str

    @property
    def files(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


def run_extract(args: list[str], env: dict[str, str], cpus: int = 2, timeout: float = 120) -> ExtractRun:
    """``crystalline extract --json ARGS`` in a child; raises if the child itself failed."""
    cmd = [sys.executable, "-c", _SCRIPT, str(cpus), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    *lines, summary = proc.stdout.splitlines()
    report = json.loads(summary)
    return ExtractRun(lines, report["status"], report["workers"], report["peak_kb"], proc.stderr)
