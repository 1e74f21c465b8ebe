"""The status endpoint: JSON API, status page, Prometheus metrics and remote control.

    guard      who may talk to the daemon: listen address, token, Host, Origin, body size
    answers    JSON answers and errors in the contract's shape; list answers shared a moment
    reading    a request's body, path and query parameters, checked before use
    views      jobs and step logs as the API and the pages show them
    pages      what the pages draw of a job: its durations, fires, form, file; shared words
    timeline   a run's timeline: queue wait, attempts and retry waits, items, pending steps
    rungraph   a run's steps as a graph: layers, edges, statuses, the hook lists' columns
    runpage    a run's page and a log's next lines as HTML
    site       the page routes (index, job, run, a log's next lines) and their assets
    jobs       the jobs' routes: list, one job, trigger, circuit reset, the jobs' graph
    control    the operator's routes: pause, resume, backfill, rerun, the decision log
    runs       the runs' routes: list, one run, stop, delete, a step's log (followed)
    figures    metrics (Prometheus text and JSON), the nodes, the pools
    app        the route table and what its families share, over one daemon's parts
    openapi    the OpenAPI document of those routes
    server     hypercorn's trio worker serving it all, started with ``nursery.start``

``serve_http`` runs hypercorn's trio worker in the daemon's own trio process, serving a
starlette app built from the ``Daemon``'s parts (CONTRACT §5). The scheduler shares that trio
loop, so the app keeps out of its way: every store call, every large JSON encoding and every
page rendering runs in a worker thread (the trio thread only reads the scheduler's state); the
list answers (jobs, runs) are built once and shared by the requests of the next half second
(``RecentAnswers``); and only a few requests are handled at once, the others waiting parked,
so a crowd of clients never makes the loop's run queue long.

Security lives in one outer ASGI layer, ``Guard``, before any route runs:

* With a token, every route but ``/healthz`` needs ``Authorization: Bearer TOKEN`` (compared in
  constant time) or the session cookie that the status page's sign-in form sets.
* Without a token the daemon only listens on loopback (``check_listen``), and a request whose
  ``Host`` is not a loopback name is refused: a DNS-rebinding page cannot reach the API.
* State changes are only POST and DELETE, with a JSON body or none; a request whose ``Origin``
  (or ``Sec-Fetch-Site``) says it comes from another site is refused, and form content types are
  refused outright, so neither a cross-site form nor a ``no-cors`` fetch can trigger a run.
* Bodies over 1 MiB are refused (413), by ``Content-Length`` and by counting what streams in.
* Read-only (``serve --read-only``): every POST and DELETE but the sign-in is refused (403),
  and the pages show no control.
* The pages' stylesheet and script (``/assets/``) need no token: they hold nothing private.
* Names and ids taken from a URL are matched against their patterns before they reach the store
  or a path; anything else is a 404, whatever its encoding.

A client's bad input always gets a 4xx ``{"error": {"code", "message"}}``; a 5xx means a bug of
ours (500, logged with its traceback) or a state directory that cannot be used (503).
"""

from pipeline.http.answers import MAX_AGE, REBUILD, ApiError, RecentAnswers
from pipeline.http.app import StatusApp, create_app
from pipeline.http.guard import (
    MAX_BODY,
    SESSION_COOKIE,
    Guard,
    ListenRefused,
    check_listen,
    is_loopback,
    parse_listen,
)
from pipeline.http.openapi import openapi_document
from pipeline.http.server import listen_socket, serve_http

__all__ = [
    "MAX_AGE", "MAX_BODY", "REBUILD", "SESSION_COOKIE", "ApiError", "Guard", "ListenRefused",
    "RecentAnswers", "StatusApp", "check_listen", "create_app", "is_loopback",
    "listen_socket", "openapi_document", "parse_listen", "serve_http",
]
