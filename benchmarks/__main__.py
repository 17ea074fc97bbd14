"""Run the benchmarks: ``python -m benchmarks [NAME ...] [--quick]`` (``make bench``).

Each benchmark prints its table and, last, its headline figure; at the end a summary lists
every headline and whether its target was met. ``--quick`` runs reduced versions (fewer trials
and seeds) in under 10 minutes on 2 cores. Timings on a small shared machine are noisy: read
ratios measured in one run, and repeat for medians.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

BENCHMARKS = {
    "controller": "benchmarks.controller_cost",
    "constraint_first": "benchmarks.constraint_first",
    "speedup": "benchmarks.speedup",
    "deep_compression": "benchmarks.deep_compression",
    "techniques": "benchmarks.techniques_alone",
    "search_efficiency": "benchmarks.search_efficiency",
    "predictor": "benchmarks.predictor_gain",
    "nni": "benchmarks.nni_compare",
    "vit": "benchmarks.vit_search",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true",
                        help="reduced versions: fewer trials and seeds (under 10 minutes)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"python -m benchmarks: unknown benchmark(s) {unknown}; one of "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    headlines = []
    for name in args.names or list(BENCHMARKS):
        print(f"\n== {name}{' (quick)' if args.quick else ''} ==", flush=True)
        started = time.perf_counter()
        headline = importlib.import_module(BENCHMARKS[name]).main(quick=args.quick)
        headlines.append((headline, time.perf_counter() - started))
    print("\n== summary ==")
    for headline, seconds in headlines:
        verdict = {True: "met", False: "NOT met", None: "-"}[headline.met]
        print(f"[{verdict:>7}] {headline.name} ({seconds:.0f} s): {headline.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
