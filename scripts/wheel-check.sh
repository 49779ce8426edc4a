#!/usr/bin/env bash
# Test what we ship, on every supported CPython: build the sdist once, then from it a
# wheel per Python (as users' pip would), install each into a fresh virtual environment,
# and prove from outside the source tree that the compiled modules are the active ones
# and the agent demo runs. The interpreters come from pyenv (scripts/pyvenv.sh --find);
# a missing one fails the check. WHEEL_PYTHONS overrides the list.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
pythons=${WHEEL_PYTHONS:-3.11 3.12 3.13}
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

for ver in $pythons; do
  start=$(date +%s)
  py=$(bash "$top/scripts/pyvenv.sh" --find "$ver")
  tag="cp${ver/./}"
  # The wheel is built from the sdist in an isolated build environment, as users' pip would.
  "$py" -m pip wheel -q --no-deps -w "$work/wheel-$tag" "$sdist"
  whl=$(ls "$work/wheel-$tag"/datasync-*-"$tag"-"$tag"-*.whl) \
    || { echo "wheel-check: no $tag wheel built" >&2; exit 1; }
  "$py" -m venv "$work/venv-$tag"
  "$work/venv-$tag/bin/pip" install -q "$whl"
  (
    cd "$work"
    "$work/venv-$tag/bin/python" - <<'PY'
import sys

import datasync, datasync.buffer, datasync.vpp.codec, datasync.vpp.shm  # noqa: E401
import datasync._codec_c as codec_c

impl = datasync.implementation()
print(f"installed wheel on {sys.version.split()[0]}:", datasync.__file__, impl)
assert set(impl.values()) == {"compiled"} and len(impl) >= 3, impl
# the fast paths compiled in for this version passed their import check
fast = codec_c._fast_paths()
assert {"ints", "dicts", "records"} <= set(fast) and set(fast.values()) == {1}, fast
PY
    "$work/venv-$tag/bin/datasync" demo | tail -3
  )
  echo "wheel-check: $ver ok ($(basename "$whl"), $(( $(date +%s) - start )) s)"
done
echo "wheel-check: ok ($pythons)"
