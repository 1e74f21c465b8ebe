"""The floor of validation: read every job file in a directory and parse it with libyaml.

    python tests/bench/parse_floor.py DIR

Whole process, as ``pipeline validate`` is: start Python, import yaml, then
``yaml.load(bytes, Loader=yaml.CSafeLoader)`` for every ``*.yaml`` in DIR. No schema, no
checks, no positions: what any validator of YAML files must at least spend.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

if __name__ == "__main__":
    count = 0
    for path in sorted(Path(sys.argv[1]).glob("*.yaml")):
        if yaml.load(path.read_bytes(), Loader=yaml.CSafeLoader) is not None:
            count += 1
    print(count)
