"""The ``datasync`` command: the agent, its demo, and the VPP simulator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datasync`` console script."""
    parser = argparse.ArgumentParser(prog="datasync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo", help="run the resync demo: embedded store -> built-in VPP simulator", add_help=False
    )
    sub.add_parser("vppsim", help="run the VPP API simulator", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(rest)
    if args.command == "vppsim":
        from ..vpp.sim.server import main as sim_main

        return sim_main(rest)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
