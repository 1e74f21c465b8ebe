"""An example step runner plug-in for pipeline: ``uses: echo``.

    steps:
      - id: hello
        uses: echo
        with: {message: "hello from ${{ job.name }}", times: 2}

The whole of a plug-in: an async function, the JSON Schema of its ``with`` (shipped as a file
beside this module) and a ``Runner`` named by the ``pipeline.runners`` entry point in
pyproject.toml.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from typing import Any

from pipeline.errors import RunnerError
from pipeline.runners import Runner, StepContext

SCHEMA = json.loads(resources.files(__name__).joinpath("echo.schema.json").read_text("utf-8"))


async def run(args: Mapping[str, Any], ctx: StepContext) -> dict[str, str]:
    message = str(args["message"])
    try:
        # An expression may have given a string: check again what the schema checked.
        times = int(args.get("times", 1))
    except (TypeError, ValueError):
        raise RunnerError(f"times must be a whole number, not {args.get('times')!r}") from None
    for _ in range(times):
        ctx.log(message)
    return {"message": message.upper() if args.get("upper") else message}


runner = Runner(name="echo", run=run, schema=SCHEMA,
                description="write a message to the step log")
