"""Run the benchmarks: ``python -m benchmarks [NAME ... | --all] [--quick | --smoke]``.

Each benchmark prints its table and, last, its headline figure; at the end a summary lists
every headline and whether its target was met. ``--quick`` runs reduced versions (fewer trials
and seeds) in under 10 minutes on 2 cores; ``--smoke`` the smallest ones (seconds each, on the
8x8 digits: they check that the code runs, their figures mean nothing). Without names the suite
runs; the benchmarks listed as run on their own run only when named (or with ``--all``).
``make bench``, ``make bench-quick`` and ``make bench-smoke`` call it. Timings on a small shared
machine are noisy: read ratios measured in one run, and repeat for medians.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

SUITE = {
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
# run only when named (also scripts with options of their own: python benchmarks/NAME.py --help)
ON_THEIR_OWN = {
    "any_model": "benchmarks.any_model",  # an 11M-parameter teacher: about an hour in full
    "front_vs_teacher": "benchmarks.front_vs_teacher",
    # LeNet-300 and LeNet-5 on the full Fashion-MNIST, 60 trials x 5 seeds: hours
    "deep_compression_fashion": "benchmarks.deep_compression_fashion",
    "ray_speedup": "benchmarks.ray_speedup",
    "llm": "benchmarks.llm",  # SmolLM2-135M: about an hour in full, half an hour quick
    "llm_targets": "benchmarks.llm_targets",  # SmolLM2 searched under its budgets
}
BENCHMARKS = {**SUITE, **ON_THEIR_OWN}  # every benchmark: each has main(size) -> Headline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: the suite: {', '.join(SUITE)}; "
                             f"run on their own: {', '.join(ON_THEIR_OWN)})")
    parser.add_argument("--all", action="store_true",
                        help="every benchmark, those run on their own included")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick",
                      default="full",
                      help="reduced versions: fewer trials and seeds (under 10 minutes)")
    size.add_argument("--smoke", action="store_const", dest="size", const="smoke",
                      help="the smallest versions (seconds each): that every benchmark still runs")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(f"python -m benchmarks: unknown benchmark(s) {unknown}; one of "
              f"{', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    headlines = []
    for name in args.names or list(BENCHMARKS if args.all else SUITE):
        print(f"\n== {name}{'' if args.size == 'full' else f' ({args.size})'} ==", flush=True)
        started = time.perf_counter()
        headline = importlib.import_module(BENCHMARKS[name]).main(args.size)
        headlines.append((headline, time.perf_counter() - started))
    print("\n== summary ==")
    for headline, seconds in headlines:
        verdict = {True: "met", False: "NOT met", None: "-"}[headline.met]
        print(f"[{verdict:>7}] {headline.name} ({seconds:.0f} s): {headline.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
