"""`pipeline run --dry-run`: the plan, with every command resolved as far as it can be."""

from __future__ import annotations

import io
from collections.abc import Callable

from pipeline.model import Job
from pipeline.plan import print_plan

JobFrom = Callable[[str], Job]


def test_a_for_each_step_shows_each_items_command(job_from: JobFrom) -> None:
    job = job_from("""
        params:
          hosts: '["db1", "db2"]'
        steps:
          - id: fe
            for_each: [a, {name: b c}]
            run: echo ${{ item }}
          - id: hosts
            for_each: ${{ params.hosts | fromjson }}
            exec: [ping, -c1, "${{ item }}"]
          - id: later
            needs: [fe]
            for_each: ${{ steps.fe.outputs.list | fromjson }}
            run: echo ${{ item }}
    """)
    out = io.StringIO()
    print_plan(job, {"hosts": '["db1", "db2"]'}, out=out)
    text = out.getvalue()
    assert "failed" not in text
    assert """  [1] fe  (for each of ["a", {"name": "b c"}])
        fe[0] (item: a)
          echo a
        fe[1] (item: {"name": "b c"})
          echo '{"name":"b c"}'
""" in text
    assert """        hosts[0] (item: db1)
          ping -c1 db1
        hosts[1] (item: db2)
          ping -c1 db2
""" in text
    assert """  [2] later  (needs fe; for each of steps.fe.outputs.list | fromjson)
        echo '<item>'
""" in text
