#!/usr/bin/env bash
# A venv per supported CPython for CI and `make test-py3XX`: .venv312, .venv313.
# The interpreter comes from pyenv (every machine of this project has 3.12 and 3.13
# there); a missing one is an error, never a skip. The venv gets the build tools at the
# pinned ranges, the test extra's packages and the package itself (editable, so
# `setup.py build_ext --inplace` with the venv's python rebuilds it next to 3.11's).
# Usage: scripts/pyvenv.sh 3.12          (prints the venv's python on its last line)
#        scripts/pyvenv.sh --find 3.12   (prints pyenv's interpreter only, no venv)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
find_only=0
if [ "${1:-}" = "--find" ]; then find_only=1; shift; fi
ver=${1:?usage: pyvenv.sh [--find] 3.12}
venv="$top/.venv${ver/./}"

find_python() {
  local root cand best=""
  root=$(pyenv root 2>/dev/null) || root="${PYENV_ROOT:-$HOME/.pyenv}"
  # the newest installed patch release of $ver (3.12.1, 3.12.10, ...)
  for cand in "$root"/versions/"$ver".*/bin/python; do
    [ -x "$cand" ] || continue
    best=$(printf '%s\n%s\n' "$best" "$cand" | sed '/^$/d' | sort -V | tail -1)
  done
  [ -n "$best" ] || { echo "pyvenv: no CPython $ver under $root/versions (pyenv install $ver)" >&2; exit 1; }
  echo "$best"
}

if [ "$find_only" = 1 ]; then find_python; exit 0; fi

stamp="$venv/.installed"
if [ ! -x "$venv/bin/python" ] || [ "$top/pyproject.toml" -nt "$stamp" ] || [ "$top/setup.py" -nt "$stamp" ]; then
  py=$(find_python)
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "setuptools>=77" wheel "Cython>=3.1,<3.4" "cffi>=1.17,<3"
  # the runtime and test dependencies as pyproject.toml lists them
  "$venv/bin/python" - "$top/pyproject.toml" > "$venv/requirements.txt" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))
PY
  "$venv/bin/pip" install -q -r "$venv/requirements.txt"
  "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$top"
  touch "$stamp"
fi
echo "$venv/bin/python"
