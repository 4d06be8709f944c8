"""The ``segshap`` command line: argparse, signals and the progress bar around :mod:`segshap.jobs`.

Commands: ``explain``, ``demo``, ``cohort`` (:mod:`segshap.cohort`) and ``worker`` (the protocol of the Slicer
module, :mod:`segshap.worker`). Every command computes in a background thread (``cohort``: in Ray's workers)
while the main thread waits for it, so SIGINT and SIGTERM are handled within a fraction of a second even while the
model runs; outputs are written through
:class:`segshap.staging.StagedOutput`, so an interrupted or failed run leaves the output folder as it was. Bad input
(a missing file, an unreadable image, an unknown target, a bad option) ends with one ``segshap: error: ...`` line
(the worker: one ``error`` event) and exit code 2. Importing it first chooses the process's CPU threading
(:mod:`segshap.threads`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from .threads import choose_cpu_threading

# Before any import that loads torch, whose OpenMP runtime reads its settings as it loads.
choose_cpu_threading()

from .cohort import COHORT_FEATURES, MissingDependency  # noqa: E402
from .inputs import ArgumentError  # noqa: E402
from .jobs import cohort_from_request, explain_and_save  # noqa: E402
from .options import add_option_flags, options_from_flags  # noqa: E402
from .reporting import engine_summary, logging_to, summary  # noqa: E402
from .request import OutOfMemory, UsageError, demo_request  # noqa: E402
from .terminal import BarLogHandler, ProgressBar  # noqa: E402
from .version import __version__  # noqa: E402
from .worker import EventWriter, argument_name, run_worker  # noqa: E402

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERNAL = 1

_FLAGS_OF_ARGUMENTS = {"config": "--model-config", "trust": "--trust-model", "out_dir": "--out"}


def flag(argument: str) -> str:
    """The command-line flag of a library argument or request key named in an error."""
    return _FLAGS_OF_ARGUMENTS.get(argument, "--" + argument.replace("_", "-"))


class _Cancelled(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _explain_request(args: argparse.Namespace) -> dict:
    return {
        "image": args.image,
        "model": args.model,
        "model_config": args.model_config,
        "trust_model": args.trust_model,
        "target": args.target,
        "reference": args.reference,
        "reference_segment": args.reference_segment,
        "roi": args.roi,
        "labelmap": args.labelmap,
        "out": args.out,
        "options": options_from_flags(args),
        "slices": args.slices,
        **_live_keys(args),
    }


def _demo_request(args: argparse.Namespace) -> dict:
    options = {"device": args.device}
    if args.n_features is not None:
        options["n_features"] = args.n_features
    return {**demo_request(args.out, options), **_live_keys(args)}


def _live_keys(args: argparse.Namespace) -> dict:
    return {"update_every": args.update_every, "stop_when_stable": args.stop_when_stable}


def _add_live_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--update-every",
        dest="update_every",
        type=float,
        default=5.0,
        help="seconds between the live estimates shown under the progress bar on a terminal (default 5)",
    )
    command.add_argument(
        "--stop-when-stable",
        dest="stop_when_stable",
        type=int,
        help="stop sampling once the top 10 features have not changed for N live estimates in a row, and keep that "
        "estimate (default: off)",
    )


def _stderr_log(quiet: bool, bar: ProgressBar | None = None) -> logging.Handler | None:
    """The stage messages as ``segshap: ...`` lines on stderr (above ``bar``), unless ``quiet``."""
    if quiet:
        return None
    if bar is not None:
        return BarLogHandler(bar)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("segshap: %(message)s"))
    return handler


def _explain(request: dict, quiet: bool) -> int:
    bar = None if quiet else ProgressBar(sys.stderr)
    # Live estimates whether or not a terminal shows them, so that the values do not depend on where output goes.
    on_update = (lambda update: None) if bar is None else bar.show_update
    with logging_to(_stderr_log(quiet, bar)) as log:
        explanation, outputs = explain_and_save(request, bar, log, on_update)
        log.info("%s", engine_summary(explanation))
    print(f"Explained {', '.join(explanation.target_names)}: {summary(explanation)}")
    print(f"Outputs in {Path(request['out']).absolute()}:")
    for name, path in outputs.items():
        print(f"  {name:9s} {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="segshap", description="Explain 3D segmentation models with exact, efficient KernelSHAP.")
    parser.add_argument("--version", action="version", version=f"segshap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    command = commands.add_parser("explain", help="explain a model's segmentation of a target")
    command.add_argument("--image", required=True, help="input image (NIfTI or NRRD)")
    _add_model_arguments(command, required=True)
    command.add_argument(
        "--reference",
        help="segmentation of the target (.seg.nrrd, NIfTI or NRRD label map); default: the model's prediction",
    )
    command.add_argument(
        "--reference-segment",
        dest="reference_segment",
        help="the segment of a .seg.nrrd to use (default: the one named like the target)",
    )
    command.add_argument("--roi", help="region values are read on: x0:x1,y0:y1,z0:z1 (voxels) or a mask file")
    command.add_argument(
        "--labelmap",
        help="organ label map of organs/organ_aware features (a .seg.nrrd names its organs); default the prediction",
    )
    command.add_argument("--out", required=True, help="output folder")
    add_option_flags(command)
    command.add_argument(
        "--slices",
        action="store_true",
        help="also write slices.png: the views as 3D Slicer draws them (needs slicer-core)",
    )
    _add_live_arguments(command)
    command.add_argument("--quiet", action="store_true", help="no progress bar or log lines")

    cohort = commands.add_parser("cohort", help="explain every case of a cohort on Ray and aggregate the values")
    cohort.add_argument("--manifest", help="CSV: case_id,image[,reference][,labelmap][,roi], paths relative to it")
    _add_model_arguments(cohort, required=False)
    cohort.add_argument(
        "--out", required=True, help="output folder (cases/, cohort.csv, cohort.json, cohort.png, failed.csv)"
    )
    cohort.add_argument("--address", help="Ray cluster to join (auto, ray://host:10001); default a local instance")
    cohort.add_argument(
        "--gpus-per-case", dest="gpus_per_case", type=float, help="default 1 where the cluster has GPUs, else 0"
    )
    cohort.add_argument(
        "--no-resume", dest="resume", action="store_false", help="redo the cases already complete in --out"
    )
    cohort.add_argument(
        "--aggregate-only",
        dest="aggregate_only",
        action="store_true",
        help="only rebuild cohort.csv, cohort.json and cohort.png from the case folders in --out",
    )
    add_option_flags(cohort, defaults={"features": COHORT_FEATURES})
    cohort.add_argument("--quiet", action="store_true", help="no progress bar or log lines")

    worker = commands.add_parser("worker", help="run a request file, reporting JSON events on stdout")
    worker.add_argument("--request", required=True, help="request JSON (the worker protocol: docs/cli.md)")
    worker.add_argument(
        "--parent-pid",
        dest="parent_pid",
        type=int,
        help="pid of the launching process: the worker ends as soon as it is gone",
    )

    demo = commands.add_parser("demo", help="explain the embedded demo model on the embedded MRI")
    demo.add_argument("--out", default="segshap-demo", help="output folder (default ./segshap-demo)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    demo.add_argument("--n-features", dest="n_features", type=int, help="about how many supervoxels (default 100)")
    _add_live_arguments(demo)
    demo.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    return parser


def _add_model_arguments(command: argparse.ArgumentParser, required: bool) -> None:
    command.add_argument(
        "--model",
        required=required,
        help="TorchScript file (.pt/.ts) with a JSON sidecar, MONAI bundle folder or nnU-Net v2 model folder",
    )
    command.add_argument(
        "--model-config", help="TorchScript: the JSON sidecar, if not beside the model; nnU-Net: a JSON of options"
    )
    command.add_argument(
        "--trust-model",
        dest="trust_model",
        action="store_true",
        help="allow a MONAI bundle, whose config can run code: only for bundles you trust",
    )
    command.add_argument("--target", required=required, help="class index or name (several: comma-separated)")


def _cohort(args: argparse.Namespace) -> int:
    from .cohort import aggregate

    if args.aggregate_only:
        result = aggregate(args.out)
    else:
        missing = [
            flag
            for flag, value in (("--manifest", args.manifest), ("--model", args.model), ("--target", args.target))
            if value is None
        ]
        if missing:
            raise UsageError(f"segshap cohort needs {', '.join(missing)} (or --aggregate-only).")
        request = {
            "manifest": args.manifest,
            "model": args.model,
            "model_config": args.model_config,
            "trust_model": args.trust_model,
            "target": args.target,
            "out": args.out,
            "address": args.address,
            "gpus_per_case": args.gpus_per_case,
            "resume": args.resume,
            "options": options_from_flags(args),
        }
        with logging_to(_stderr_log(args.quiet)):
            progress = None if args.quiet else ProgressBar(sys.stderr, unit="cases")
            result, _ = cohort_from_request(request, progress)
    print(result.summary)
    print(
        f"Outputs in {Path(args.out).absolute()}: cases/, cohort.csv, cohort.json, cohort.png"
        + (", failed.csv" if result.failed else "")
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segshap`` command; returns the exit code."""
    real_stdout = sys.stdout
    arguments = sys.argv[1:] if argv is None else argv
    is_worker = bool(arguments) and arguments[0] == "worker"
    events = EventWriter(real_stdout) if is_worker else None
    if is_worker:
        sys.stdout = sys.stderr  # the protocol owns stdout: anything else printed goes to stderr

    def interrupt(signum, frame):
        # A second Ctrl-C while the run winds down (a cohort's Ray shutdown takes seconds) must not interrupt the
        # cancellation itself: from the first signal on, the process only finishes stopping.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        raise _Cancelled(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    debug = "--debug" in arguments
    kept = "no outputs were written" + (" (a cohort keeps its complete cases)" if is_worker else "")
    try:
        args = _parser().parse_args(arguments)
        if args.command == "explain":
            return _explain(_explain_request(args), args.quiet)
        if args.command == "demo":
            return _explain(_demo_request(args), args.quiet)
        if args.command == "cohort":
            kept = f"the complete cases are kept in {Path(args.out, 'cases')}; run it again to go on"
            return _cohort(args)
        return run_worker(args.request, events, args.parent_pid)
    except _Cancelled as cancelled:
        sys.stderr.write(f"segshap: cancelled ({cancelled}); {kept}\n")
        sys.stderr.flush()
        # The compute thread may be inside the model; end the process without waiting for it.
        os._exit(128 + cancelled.signum)
    except OutOfMemory as error:
        return _fail(events, str(error), EXIT_INTERNAL, debug, reason="out_of_memory")
    except ArgumentError as error:
        return _fail(events, error.naming(argument_name if is_worker else flag), EXIT_USAGE, debug)
    except (UsageError, MissingDependency, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        return _fail(events, str(error), EXIT_USAGE, debug)
    except Exception as error:  # anything else is a bug: still one line, the traceback only with --debug
        message = f"internal error: {error.__class__.__name__}: {error} (run with --debug for the traceback)"
        return _fail(events, message, EXIT_INTERNAL, debug)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stdout = real_stdout


def _fail(events: EventWriter | None, message: str, code: int, debug: bool, reason: str | None = None) -> int:
    if debug:
        traceback.print_exc()
    if events is not None:
        events.emit("error", message=message, **({"reason": reason} if reason else {}))
    else:
        sys.stderr.write(f"segshap: error: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
