"""Instructions per codec call, for callgrind: the four messages of bench_codec.py, encode
and decode, each as a loop of 2,000 calls between two ``time.sleep(0)`` markers.

Run one process per Python and build, and read the dump of every second marker::

    PYTHONHASHSEED=0 valgrind --tool=callgrind --dump-before=time_sleep \\
        --callgrind-out-file=/tmp/cg/x .venv313/bin/python benches/codec_callgrind.py
    for f in $(ls -v /tmp/cg/x.* | sed -n '2~2p'); do
        echo $(( $(grep -m1 '^summary:' "$f" | cut -d' ' -f2) / 2000 )); done

The numbers come out in the order printed on the first line. ``--build DIR`` loads another
build of the compiled codec, a ``_codec_c*.so`` built from an older ``pyx/``, from DIR.
``--papi`` runs vpp-papi's ``pack`` / ``unpack`` on the same input instead (as
bench_codec.py calls them), 200 calls a row (divide by 200): the ratio of the two runs'
counts is a steady measure of "x times vpp-papi", where wall-clock ratios on a shared
machine move by ±30 %.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benches.bench_codec import MESSAGES, MSG_ID, SHORT, _papi

from datasync.vpp import _codec_py
from datasync.vpp.codec import codec_for
from datasync.vpp.defs import builtin_definitions

CALLS = 2000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", help="a directory holding another _codec_c build")
    parser.add_argument("--papi", action="store_true", help="vpp-papi's serializer instead")
    args = parser.parse_args()
    calls = 200 if args.papi else CALLS
    if args.build:
        sys.path.insert(0, args.build)
        compiled = importlib.import_module("_codec_c")
        sys.path.pop(0)
    else:
        compiled = importlib.import_module("datasync._codec_c")
    defs = builtin_definitions()
    rows = []
    for name, fields in MESSAGES.items():
        c: Any = _papi(name) if args.papi else codec_for(defs, name, compiled)
        data = codec_for(defs, name, _codec_py).encode(MSG_ID, fields)
        assert c.encode(MSG_ID, fields) == data
        rows += [
            (f"{SHORT[name]}:encode", c, fields, None),
            (f"{SHORT[name]}:decode", c, None, data),
        ]
    print(" ".join(r[0] for r in rows))
    for _, c, fields, data in rows:
        enc, dec = c.encode, c.decode
        for _ in range(300):  # warm: the codec's caches, the interpreter's specialisation
            enc(MSG_ID, fields) if data is None else dec(data)
        time.sleep(0)
        if data is None:
            for _ in range(calls):
                enc(MSG_ID, fields)
        else:
            for _ in range(calls):
                dec(data)
        time.sleep(0)


if __name__ == "__main__":
    main()
