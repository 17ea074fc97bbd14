"""The ``autocompress`` command: parses arguments and calls the public API, nothing more."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import autocompress

DESCRIPTION = """\
Find the best compressed versions of a PyTorch model: a joint search over pruning,
quantization and distillation, every trial fine-tuned and measured for real.

  autocompress search studies/quickstart.yaml           run (or resume) a study
  autocompress search studies/quickstart.yaml --trials 5 --seed 1
  autocompress validate studies/quickstart.yaml         check it, before a long run
  autocompress spaces                                   the shipped search spaces

Outputs land in studies/<name>/: study.journal (Optuna storage), teacher.pt/.json,
trials.csv, pareto.csv and study.json. `autocompress COMMAND --help` tells more.
"""

VALIDATE_HELP = """\
Check a study file without searching: print the resolved search space and its size,
the budget as parsed (units such as 2ms or 100kB resolved), and the teacher and the
most compressed model the space holds (untrained) measured against the budget, so an
unreachable budget, or one the teacher already meets, shows before a long run.
The teacher is trained (or loaded from its cache) as for a search.
"""

SEARCH_HELP = """\
Run the study a YAML file describes until it holds `trials` finished trials.
The study file names the task (dataset and teacher), the search space file, the
objectives, the measurement settings (batch size, threads), trials, sampler and seed.
At the end the Pareto front is printed beside the teacher's own figures.

Nothing is lost: every trial is stored as it finishes. Running the same command
again resumes the study; trials that were running when it was killed are marked
failed and their choices retried. Ctrl-C stops after saying what was saved.
--jobs N runs N worker processes on one study; --storage URL (any SQLAlchemy URL,
e.g. postgresql://user@host/db) lets workers on several machines share it.
"""


class UsageError(Exception):
    """A command line argparse refuses: one line, not the usage block."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors pointing to ``--help`` (its subcommands' parsers too)."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.splitlines())  # argparse quotes the bad value whole: cut it
        message = re.sub(r"'([^']{77})[^']{4,}'", r"'\1...'", message)[:300]
        raise UsageError(f"{self.prog}: error: {message}; see {self.prog} --help")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
                        help="finished trials the study should hold; a study that holds fewer "
                             "runs the rest (default: the study file's `trials`)")
    search.add_argument("--seed", type=int, metavar="S",
                        help="seed of the sampler and of every trial (default: the file's `seed`)")
    search.add_argument("--out", metavar="DIR",
                        help="output folder (default: studies/<name>/ under the current folder)")
    search.add_argument("--quiet", action="store_true", help="print only the final front")
    search.add_argument("--jobs", type=int, metavar="N",
                        help="worker processes on this machine sharing the study (default 1)")
    search.add_argument("--storage", metavar="URL",
                        help="Optuna storage as a SQLAlchemy URL (default: the journal file "
                             "<out>/study.journal); PostgreSQL lets several machines share a "
                             "study")
    search.add_argument("--backend", choices=("optuna", "ray"),
                        help="run trials in this process (optuna, the default) or on Ray Tune")
    search.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to join: auto, host:6379 or ray://host:10001 "
                             "(default: start a local Ray); implies --backend ray")
    search.add_argument("--max-concurrent", type=int, metavar="N",
                        help="Ray: trials running at once (default: the file's ray section, 2)")
    search.add_argument("--scheduler", choices=("asha", "fifo"),
                        help="Ray: asha stops weak trials between epochs (default), fifo never")
    validate = commands.add_parser(
        "validate", help="check a study file and its budget before running it",
        description=VALIDATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    validate.add_argument("study", metavar="STUDY.yaml", help="the study file to check")
    validate.add_argument("--out", metavar="DIR", help="folder of the teacher cache "
                          "(default: studies/<name>/)")
    report = commands.add_parser(
        "report", help="(re)write report.html, pareto.json/png and the CSVs of a study",
        description="Rebuild a study's readable outputs from its storage: report.html (one "
                    "self-contained page: budget, teacher, sortable front, plots, hypervolume "
                    "over trials, why trials failed or stopped), pareto.json, pareto.png, "
                    "trials.csv and pareto.csv. A search writes them at its end too.")
    report.add_argument("study", metavar="STUDY", help="a study YAML file, or its output folder")
    report.add_argument("--out", metavar="DIR", help="the output folder, when STUDY is a file "
                        "and the search used --out")
    export = commands.add_parser(
        "export", help="write a trial's compressed model to a file, re-verified",
        description="Rebuild trial N's compressed model from its recorded plan and the weights "
                    "the search kept (models/trial_N.acpk), measure it again, and write it. "
                    "Refuses (exit 2, nothing written) when validation or test accuracy "
                    "differs from the recorded value by more than half a point (perplexity: "
                    "0.1%).")
    export.add_argument("study", metavar="STUDY", help="a study YAML file, or its output folder")
    export.add_argument("--trial", type=int, required=True, metavar="N",
                        help="the trial number (see pareto.csv)")
    export.add_argument("--format", default="torchscript",
                        choices=("torchscript", "onnx", "state_dict", "hf"),
                        help="torchscript (torch alone loads it), onnx (onnxruntime; int8 where "
                             "the trial ran int8), state_dict (packed at the weights' bit "
                             "width, with its loader); a language model (task: causal_lm): "
                             "hf, a Hugging Face folder (from_pretrained loads it)")
    export.add_argument("--out", required=True, metavar="PATH", help="folder to write into")
    export.add_argument("--study-out", metavar="DIR",
                        help="the study's output folder when STUDY is a file and the search "
                             "used --out")
    commands.add_parser("spaces", help="list the shipped search spaces, one line each",
                        description="List search_spaces/*.yaml with the first line of each.")
    return parser


# study fields the `search` flags override, named by their flag in an error about them
FLAGS = {"trials": "--trials", "seed": "--seed", "backend": "--backend", "jobs": "--jobs",
         "storage": "--storage", "ray.address": "--address",
         "ray.max_concurrent": "--max-concurrent", "ray.scheduler": "--scheduler"}
RAY_ONLY = {"--max-concurrent": "max_concurrent", "--scheduler": "scheduler"}


def _refuse(flag: str, value: object, expected: str) -> autocompress.ConfigError:
    return autocompress.ConfigError("command line", flag, value, expected)


def _storage_file(out: Path) -> str:
    """The folder's own storage file, as the study used it (an older folder keeps study.db)."""
    from autocompress.backends.storage import OWN_DATABASE, OWN_JOURNAL

    return next((name for name in (OWN_JOURNAL, OWN_DATABASE) if (out / name).is_file()),
                "its storage")


def _search(args: argparse.Namespace) -> int:
    config = autocompress.load_study(args.study)
    if args.address is not None and args.backend == "optuna":
        raise _refuse("--address", args.address, "no --address with --backend optuna (--address "
                      "joins a Ray cluster: give --backend ray, or no --backend)")
    try:  # checked by the same code as the study file; errors name the command line
        config = config.with_overrides(
            trials=args.trials, seed=args.seed,
            backend="ray" if args.address is not None else args.backend,
            jobs=args.jobs, storage=args.storage, ray_address=args.address,
            ray_max_concurrent=args.max_concurrent, ray_scheduler=args.scheduler)
    except autocompress.ConfigError as exc:
        if exc.field not in FLAGS or exc.where != "command line":
            raise
        raise autocompress.ConfigError(exc.where, FLAGS[exc.field], exc.got,
                                       exc.expected) from None
    _check_backend_flags(args, config.backend)
    out = _output_folder(args.out, config.name)
    progress = None if args.quiet else (lambda line: print(line, flush=True))
    started = time.perf_counter()
    outcome = autocompress.run_study(config, out_dir=out, progress=progress)
    results = outcome.results
    print(f"\n{autocompress.TrialCounts.of(results).summary()}, "
          f"{time.perf_counter() - started:.0f} s this run.")
    _print_predictor(outcome.out_dir / "study.json")
    if outcome.front.members:
        measured = (f"Validation perplexity; prefill latency and decode tokens/s at "
                    f"{config.measure.threads} thread(s), {config.measure.runtime}"
                    if config.task.kind == "causal_lm" else
                    f"Validation accuracy; latency at batch {config.measure.batch_size}, "
                    f"{config.measure.threads} thread(s), {config.measure.runtime}")
        print(f"Pareto front of study {config.name!r}: {len(outcome.front)} feasible members, "
              f"hypervolume {outcome.front.hypervolume:.4f}. {measured}; memory = packed "
              f"stored form.")
        print(outcome.front_table())
    else:
        print(outcome.front_table())
    print(f"\nwritten to {outcome.out_dir}/: report.html, pareto.csv, pareto.json, pareto.png, "
          f"trials.csv, study.json, {_storage_file(outcome.out_dir)}, teacher.json")
    return 0


def _check_backend_flags(args: argparse.Namespace, backend: str) -> None:
    """A flag of the other backend would be ignored without a word: refuse it instead."""
    if backend != "ray":
        for flag, name in RAY_ONLY.items():
            if getattr(args, name) is not None:
                raise _refuse(flag, getattr(args, name), "--backend ray (a Ray-only flag; this "
                              "study runs on the optuna backend, where --jobs sets workers)")
    elif args.jobs is not None and args.jobs > 1:
        raise _refuse("--jobs", args.jobs, "1 on the ray backend (it runs --max-concurrent "
                      "trials at a time), or --backend optuna")


JOB_STUDIES = "AUTOCOMPRESS_STUDIES"  # where a search running as a Ray job writes


def _in_ray_job() -> bool:
    """Whether this process is the driver of a ``ray job submit`` job: Ray's job supervisor
    hands it its job config, with the submission id, in this variable."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    except ValueError:
        return False
    return bool((config.get("metadata") or {}).get("job_submission_id")) \
        if isinstance(config, dict) else False


def _output_folder(out: str | None, name: str) -> Path:
    """``--out`` (or studies/<name>/), refused before any work unless it can be written.

    A search submitted with ``ray job submit`` runs in Ray's temporary copy of the working
    directory, which Ray deletes later: there, relative folders are resolved against
    ``$AUTOCOMPRESS_STUDIES`` (default ``~/autocompress-studies``) on the node that runs the
    job, and the search says where its outputs are."""
    given = Path(out) if out is not None else Path("studies") / name
    field = "--out" if out is not None else "--out (not given: studies/<name>)"
    if _in_ray_job() and not given.is_absolute():
        base = Path(os.environ.get(JOB_STUDIES) or Path.home() / "autocompress-studies")
        given = base / (given if out is not None else name)
        print(f"running as a Ray job: outputs go to {given} (not the job's temporary working "
              f"directory; set {JOB_STUDIES} or an absolute --out to choose)", flush=True)
    return autocompress.check_output_folder(given, where="command line", field=field)


def _print_predictor(study_json) -> None:
    """One line on the learned predictor's cross-validated error, when the study has one."""
    summary = json.loads(study_json.read_text()).get("predictor") if study_json.is_file() else None
    errors = (summary or {}).get("cross_validated_mean_abs_error")
    if errors:
        parts = ", ".join(f"{name} {value:.4g}" for name, value in errors.items())
        print(f"Learned predictor: cross-validated mean absolute error over "
              f"{summary['trained_trials']} trained trials: {parts}; "
              f"{summary['skipped']} trial(s) not trained.")


def _validate(args: argparse.Namespace) -> int:
    config = autocompress.load_study(args.study)
    out = _output_folder(args.out, config.name)
    for line in autocompress.validate_study(config, out_dir=out,
                                            progress=lambda line: print(line, flush=True)):
        print(line)
    return 0


def _report(args: argparse.Namespace) -> int:
    path = autocompress.write_report(_study_folder(args.study, args.out, "--out"))
    print(f"written {path} (and pareto.json, pareto.png, trials.csv, pareto.csv beside it)")
    return 0


def _study_folder(study: str, out: str | None, flag: str) -> Path:
    target = Path(study)
    try:
        is_dir = target.is_dir()
    except (OSError, ValueError):  # a name too long, a NUL: load_study says so in one line
        is_dir = False
    if is_dir:
        if out is not None:
            raise _refuse(flag, out, f"no {flag} when STUDY is a folder: the folder is the "
                          "study's output folder")
        return target
    return Path(out) if out else Path("studies") / autocompress.load_study(target).name


def _export(args: argparse.Namespace) -> int:
    folder = _study_folder(args.study, args.study_out, "--study-out")
    autocompress.check_output_folder(args.out, where="command line", field="--out")
    card = autocompress.export_trial(folder, args.trial, fmt=args.format, out=args.out)
    again = card["remeasured"]
    if "perplexity" in again:
        print(f"trial {args.trial} written to {args.out} ({args.format}); re-measured: "
              f"validation perplexity {again['perplexity']:.2f} (recorded "
              f"{card['recorded']['perplexity']:.2f}), test perplexity "
              f"{again.get('test_perplexity', float('nan')):.2f}; load it with: {card['load']}")
        return 0
    print(f"trial {args.trial} written to {args.out} ({args.format}); re-measured: validation "
          f"accuracy {100 * again['accuracy']:.2f}% (recorded "
          f"{100 * card['recorded']['accuracy']:.2f}%), test accuracy "
          f"{100 * again.get('test_accuracy', float('nan')):.2f}%; load it with: {card['load']}")
    return 0


def _spaces() -> int:
    for name, summary in autocompress.shipped_spaces():
        print(f"{name:<20} {summary}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "spaces":
            return _spaces()
        if args.command == "report":
            return _report(args)
        if args.command == "export":
            return _export(args)
        return _search(args)
    except autocompress.SearchStopped as exc:
        print(f"\nautocompress: {exc}", file=sys.stderr)
        return exc.exit_code
    except autocompress.AutocompressError as exc:
        print(f"autocompress: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nautocompress: interrupted before the search started; no trial ran in this "
              "run, and any stored ones are unchanged", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
