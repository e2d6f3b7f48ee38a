# Sourced by scripts/run and scripts/test: create or reuse the project's virtual
# environment and (re)install the project into it when pyproject.toml changed.
# Usage: ensure_venv [EXTRAS]   -> sets $VENV
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QUANTSHIFT_VENV:-$ROOT/.venv}"

_pick_python() {
  local c
  for c in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$c" ] || continue
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  echo "quantshift: Python 3.11 or newer with the venv module is needed (set PYTHON=...)" >&2
  return 1
}

ensure_venv() {
  local extras="${1:-}" spec stamp py
  if [ ! -x "$VENV/bin/python" ]; then
    py="$(_pick_python)"
    echo "quantshift: creating the virtual environment in $VENV" >&2
    "$py" -m venv "$VENV"
  fi
  spec="$ROOT"
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  stamp="$VENV/.installed-${extras:-base}-$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "quantshift: installing the project into $VENV${extras:+ (with $extras extras)}" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
    rm -f "$VENV"/.installed-"${extras:-base}"-*
    touch "$stamp"
  fi
}
