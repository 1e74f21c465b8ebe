"""`pipeline run --dry-run`: the plan, with every command resolved as far as it can be."""

from __future__ import annotations

import io
from collections.abc import Callable

from pipeline.model import Job
from pipeline.params import parse_params
from pipeline.plan import print_plan, waves

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


DEPLOY = """
    name: deploy
    params:
      target: {type: string, default: staging}
      count: {type: integer, default: 2}
    secrets:
      TOKEN: {env: DEPLOY_TOKEN}
    env:
      REGION: eu-west-1
    steps:
      - id: build
        run: make build TARGET=${{ params.target }}
      - id: lint
        exec: [ruff, check, "${{ env.REGION }}", "a b"]
      - id: test
        needs: [build]
        timeout: 90s
        run: pytest -n ${{ params.count }}
      - id: push
        needs: [build, lint]
        if: ${{ success() and params.target == 'prod' }}
        uses: http
        with:
          url: "https://deploy.example/${{ params.target }}"
          headers: {Authorization: "Bearer ${{ secrets.TOKEN }}"}
      - id: report
        needs: [test, push]
        run: echo ${{ steps.test.outputs.summary }} for ${{ run.id }}
    on_failure:
      - {id: alert, run: 'echo ${{ job.name }} failed'}
    finally:
      - {id: clean, run: rm -rf build}
"""


def test_the_plan_shows_waves_annotations_and_every_command_resolved(job_from: JobFrom) -> None:
    job = job_from(DEPLOY)
    out = io.StringIO()
    print_plan(job, parse_params(job, {"target": "prod; rm -rf /"}), out=out)
    assert out.getvalue() == f"""job deploy ({job.file})
params: target='prod; rm -rf /', count=2

steps:
  [1] build
        make build TARGET='prod; rm -rf /'
  [1] lint
        ruff check eu-west-1 'a b'
  [2] test  (needs build; timeout 90s)
        pytest -n 2
  [2] push  (needs build, lint; if success() and params.target == 'prod')
        uses http with {{'url': 'https://deploy.example/prod; rm -rf /', \
'headers': {{'Authorization': 'Bearer ***'}}}}
  [3] report  (needs test, push)
        echo '<steps.test.outputs.summary>' for '(run id)'

on_failure:
  [1] alert
        echo deploy failed

finally:
  [1] clean
        rm -rf build
"""


def test_waves_group_steps_that_can_start_together_in_file_order(job_from: JobFrom) -> None:
    job = job_from("""
        steps:
          - {id: z, run: 'true'}
          - {id: c, needs: [a], run: 'true'}
          - {id: a, run: 'true'}
          - {id: b, needs: [z, a], run: 'true'}
          - {id: d, needs: [c, b], run: 'true'}
    """)
    assert [[s.id for s in wave] for wave in waves(job.steps)] == [["z", "a"], ["c", "b"], ["d"]]


def test_a_value_only_the_run_can_compute_is_shown_with_why(job_from: JobFrom) -> None:
    job = job_from("""
        params:
          data: {default: 'not json'}
        steps:
          - id: a
            run: echo ${{ (params.data | fromjson).x }}
    """)
    out = io.StringIO()
    print_plan(job, parse_params(job, {}), out=out)
    assert ("        echo ${{ (params.data | fromjson).x }}    # expression "
            "\"(params.data | fromjson).x\" failed: JSONDecodeError: Expecting value") \
        in out.getvalue()
