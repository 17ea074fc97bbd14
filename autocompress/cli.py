"""The ``autocompress`` command: parses arguments and calls the public API, nothing more."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import autocompress
from autocompress.report.tables import format_front

DESCRIPTION = """\
Find the best compressed versions of a PyTorch model: a joint search over pruning,
quantization and distillation, every trial fine-tuned and measured for real.

  autocompress search studies/quickstart.yaml           run (or resume) a study
  autocompress search studies/quickstart.yaml --trials 5 --seed 1

Outputs land in studies/<name>/: study.db (Optuna storage), teacher.pt/.json,
trials.csv and pareto.csv. Run `autocompress search --help` for every option.
"""

SEARCH_HELP = """\
Run the study a YAML file describes; running it again resumes it and adds trials.
The study file names the task (dataset and teacher), the search space file, the
objectives, the measurement settings (batch size, threads), trials, sampler and seed.
At the end the Pareto front is printed beside the teacher's own figures.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autocompress", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=autocompress.__version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    search = commands.add_parser(
        "search", help="run or resume a compression search", description=SEARCH_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    search.add_argument("study", metavar="STUDY.yaml", help="the study file to run")
    search.add_argument("--trials", type=int, metavar="N",
                        help="trials to add in this run (default: the study file's `trials`)")
    search.add_argument("--seed", type=int, metavar="S",
                        help="seed of the sampler and of every trial (default: the file's `seed`)")
    search.add_argument("--out", metavar="DIR",
                        help="output folder (default: studies/<name>/ under the current folder)")
    search.add_argument("--quiet", action="store_true", help="print only the final front")
    return parser


def _search(args: argparse.Namespace) -> int:
    for flag in ("trials", "seed"):
        value = getattr(args, flag)
        if value is not None and value < (1 if flag == "trials" else 0):
            raise autocompress.ConfigError("command line", f"--{flag}", value,
                                           "an integer >= 1" if flag == "trials" else ">= 0")
    config = autocompress.load_study(args.study).with_overrides(trials=args.trials, seed=args.seed)
    progress = (lambda _: None) if args.quiet else (lambda line: print(line, flush=True))
    started = time.perf_counter()
    outcome = autocompress.run_study(config, out_dir=args.out, progress=progress)
    failed = sum(not r.ok for r in outcome.results)
    print(f"\nPareto front of study {config.name!r}: {len(outcome.front)} of "
          f"{len(outcome.results)} trials ({failed} failed), "
          f"{time.perf_counter() - started:.0f} s this run. Validation accuracy; latency at "
          f"batch {config.measure.batch_size}, {config.measure.threads} thread(s); "
          "memory = packed stored form.")
    print(format_front(outcome.front, list(outcome.space.searched)))
    print(f"\nwritten to {outcome.out_dir}/: study.db, teacher.json, trials.csv, pareto.csv")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _search(args)
    except autocompress.AutocompressError as exc:
        print(f"autocompress: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nautocompress: interrupted; finished trials are kept in the study's study.db "
              "and the same command resumes it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
