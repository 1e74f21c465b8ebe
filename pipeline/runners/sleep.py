"""``uses: sleep`` — wait for a duration without starting a process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import trio

from pipeline.runners import StepContext
from pipeline.spec import parse_duration


async def run(args: Mapping[str, Any], ctx: StepContext) -> None:
    await trio.sleep(parse_duration(args["duration"]))
