"""Fault-injection harnesses (issue 6): real ``pipeline serve`` processes on temp directories,
crashed at named points or killed at random, then checked against the daemon's invariants.

    driver       a daemon process to start, crash, kill and restart; job files; cleanup
    invariants   ``check_invariants``: what must hold in a state directory after any crash
    harness      the scenarios, sized for CI or for ``bin/bench`` (``kill_loop``, ...)

``tests/test_faults.py`` runs them at CI size; ``bin/bench`` calls ``harness`` at full size
(``PIPELINE_FAULTS_FULL=1``).
"""
