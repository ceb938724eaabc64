"""generate: sample a continuation from the published parameters, beside training.

Request:  {"cmd": "generate", "prompt": "...", "n": 200, "temperature": 0.8, "top_k": 0,
          "seed": 1}   (all optional: prompt at most 4000 characters; n an integer 1..2000;
          temperature a number 0..5, 0 the likeliest token; top_k an integer 0..65536, 0 = all;
          seed an integer 0..4294967295 or null. A JSON integer: no bool, no point or
          exponent (2.0, 1e3), no string; anything else is refused in one line naming the field)
Reply:    {"prompt": "...", "text": "...", "step": <parameters' step>, "tokens_per_s": ...}
Served by the generation process, so training never waits for it. Open to every user of the
socket, one request at a time per uid, within 10 % of wall time per uid and 25 % for all,
after a burst of ``[daemon] generate-burst-s`` (10 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import Daemon

if TYPE_CHECKING:
    from ..command_limit import CommandLimit

CONTROL = False  # read-only users may generate, within a share of the time


def limit(daemon: Daemon) -> CommandLimit:
    from ..command_limit import CommandLimit

    return CommandLimit("generate", burst_s=daemon.settings.daemon.generate_burst_s)


async def execute(daemon: Daemon, request: dict[str, Any]) -> Any:
    from ..generate_fields import generate_fields

    return await daemon.generation.generate(generate_fields(request))
