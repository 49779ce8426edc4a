#!/usr/bin/env bash
# Test what we ship: build the sdist and a wheel from it, install the wheel into a
# fresh virtual environment, and prove from outside the source tree that the
# compiled modules are the active ones and the agent demo runs.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
work=$(mktemp -d /tmp/datasync-wheel.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$top/.venv/bin/python" -m build --version >/dev/null 2>&1 || "$top/.venv/bin/pip" install -q build
"$top/.venv/bin/python" -m build --sdist --outdir "$work/dist" "$top" >/dev/null
sdist=$(ls "$work"/dist/datasync-*.tar.gz)
tar -tzf "$sdist" > "$work/sdist.txt"
for must in pyx/_buffer.pyx pyx/_buffer.pxd pyx/_codec.pyx pyx/_codec.pxd pyx/ds_codec.h pyx/ds_pyver.h csrc/shmring.c csrc/build_shmring.py; do
  grep -q "/$must\$" "$work/sdist.txt" || { echo "wheel-check: sdist lacks $must" >&2; exit 1; }
done
if grep -qE '^[^/]+/pyx/.*\.c$' "$work/sdist.txt"; then
  echo "wheel-check: sdist carries generated C from pyx/" >&2; exit 1
fi
# The wheel is built from the sdist, as users' pip would.
"$top/.venv/bin/pip" wheel -q --no-deps -w "$work/wheel" "$sdist"
$py -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/wheel/datasync-*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import datasync, datasync.buffer, datasync.vpp.codec, datasync.vpp.shm  # noqa: E401
impl = datasync.implementation()
print("installed wheel:", datasync.__file__, impl)
assert set(impl.values()) == {"compiled"} and len(impl) >= 3, impl
PY
"$work/venv/bin/datasync" demo | tail -3
echo "wheel-check: ok"
