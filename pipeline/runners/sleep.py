"""``uses: sleep`` — wait for a duration without starting a process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from pipeline.notation import parse_duration
from pipeline.runners import StepContext


async def run(args: Mapping[str, Any], ctx: StepContext) -> None:
    await trio.sleep(parse_duration(args["duration"]))
