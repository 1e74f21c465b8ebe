# Sourced by bin/pipeline and bin/test: make sure .venv exists and holds this checkout's
# project with the wanted extras; reinstall only when pyproject.toml changed.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"

pick_python() {
  for py in "${PIPELINE_PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [ -n "$py" ] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "pipeline needs Python 3.11 or newer (set PIPELINE_PYTHON)" >&2
  return 1
}

pip_quiet() {  # pip's output only when it fails
  "$venv/bin/python" -m pip --quiet "$@" >"$venv/pip.log" 2>&1 || { cat "$venv/pip.log" >&2; return 1; }
}

ensure_env() {  # $1: "" for the runtime, "dev" for tests
  local extra="$1" want have stamp
  want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
  for stamp in "$venv/.installed-dev" "$venv/.installed-$extra"; do
    have="$(cat "$stamp" 2>/dev/null || true)"
    [ "$have" = "$want" ] && return 0
  done
  if [ ! -x "$venv/bin/python" ]; then
    echo "pipeline: creating $venv (first use)" >&2
    "$(pick_python)" -m venv "$venv" || return 1
    pip_quiet install --upgrade pip || return 1
  fi
  echo "pipeline: installing the project into $venv" >&2
  if [ "$extra" = dev ]; then
    pip_quiet install -e "$root[dev]" || return 1
    # The example third-party runner the tests use (no deps: "pipeline" on PyPI is another
    # project).
    pip_quiet install --no-deps -e "$root/tests/plugin" || return 1
  else
    pip_quiet install -e "$root" || return 1
  fi
  echo "$want" > "$venv/.installed-$extra"
}
