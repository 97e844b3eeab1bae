"""`modelpress search MODEL [constraints] [--budget 30m] [--deploy NAME]`: a search job for the best pipeline on the
evaluator's CPU, and the front it measured (each candidate's figures, or why it was dropped)."""

from __future__ import annotations

import re
from collections.abc import Callable

from rich.markup import escape
from rich.table import Table

from modelpress import Client
from modelpress.v1 import common_pb2
from services.cli import uploads
from services.cli.output import err, out

TECHNIQUES = {"quantizer": common_pb2.TECHNIQUE_QUANTIZER, "pruner": common_pb2.TECHNIQUE_PRUNER,
              "distiller": common_pb2.TECHNIQUE_DISTILLER, "optimizer": common_pb2.TECHNIQUE_OPTIMIZER}


def minutes(text: str) -> float:
    """"30m", "1h", "90s" or a bare number of minutes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (30m, 1h, 90s)")
    value, unit = float(match.group(1)), match.group(2) or "m"
    return value * {"s": 1 / 60, "m": 1.0, "h": 60.0}[unit]


def spec_of(args) -> dict:
    techniques = []
    for name in filter(None, (t.strip() for t in (args.techniques or "").split(","))):
        if name not in TECHNIQUES:
            raise ValueError(f"--techniques: {name!r} is not one of {', '.join(TECHNIQUES)}")
        techniques.append(TECHNIQUES[name])
    return {"min_quality_kept": args.min_quality, "min_speedup": args.min_speedup,
            "max_size_ratio": args.max_size_ratio, "max_memory_ratio": args.max_memory_ratio,
            "objective": args.objective, "phase": args.phase, "budget_minutes": minutes(args.budget),
            "techniques": techniques, "no_training": args.no_training, "no_calibration": args.no_calibration,
            "finishes": [f.strip() for f in (args.finishes or "").split(",") if f.strip()],
            "deploy_as": args.deploy or ""}


def front_table(job: common_pb2.Job) -> Table:
    found = job.search_result
    table = Table("candidate", "effort", "speed-up [95 %]", "quality kept", "size ×", "memory ×", "outcome",
                  title=f"search on an {found.isa_class} CPU: validation split for choices, held-out for the winner")
    dropped = {c.name: c.dropped for c in found.candidates}
    for trial in found.trials:
        if trial.pending:
            continue
        speed = (f"{trial.speedup.speedup:.2f}× [{trial.speedup.ci95_low:.2f}–{trial.speedup.ci95_high:.2f}]"
                 if not trial.error else "-")
        kept = f"{trial.quality_kept:.2%}" if trial.HasField("quality_kept") else "-"
        memory = f"{trial.memory_ratio:.2f}" if trial.HasField("memory_ratio") else "-"
        outcome = ("winner" if trial.candidate == found.winner else
                   trial.error or dropped.get(trial.candidate, ""))
        table.add_row(escape(trial.candidate), trial.fidelity + (" (stored)" if trial.reused else ""), speed, kept,
                      f"{trial.size_ratio:.2f}" if not trial.error else "-", memory, escape(outcome))
    return table


def print_search(job: common_pb2.Job) -> None:
    found = job.search_result
    out.print(front_table(job))
    unmeasured = [c for c in found.candidates if c.dropped and "budget" in c.dropped]
    if unmeasured:
        out.print(f"{len(unmeasured)} candidate(s) not measured: the budget ran out")
    if found.stopped_early:
        out.print(f"stopped early: {escape(found.stopped_early)}")
    if found.winner:
        builtin = (f"; the best single built-in among the finalists: {found.best_builtin}" if found.best_builtin
                   and found.best_builtin != found.winner else "")
        tagged = f", its artifact tagged {escape(found.tag)}" if found.tag else ""
        out.print(f"[bold]winner: {escape(found.winner)}[/bold], stored as recipe {escape(found.recipe)} "
                  f"(modelpress compress MODEL --recipe {escape(found.recipe)}){tagged}{escape(builtin)}")
    if found.deployment_id:
        out.print(f"deployed as {escape(job.search.deploy_as)} ({found.deployment_id}): modelpress deployments get "
                  f"{found.deployment_id}")
    elif found.deploy_error:
        out.print(f"not deployed: {escape(found.deploy_error)}")


def add_parsers(sub, finish_job: Callable, client_of: Callable) -> None:
    """`finish_job(client, job, args)` follows a submitted job (--wait) and prints its result."""
    p = sub.add_parser("search", help="find the best pipeline for a model on this mesh's CPU by measuring")
    p.add_argument("model", help="builtin:NAME, artifact:ID, path:DIR or a local folder")
    p.add_argument("--min-quality", type=float, default=0.0, help="quality kept at least (default 0.99)")
    p.add_argument("--min-speedup", type=float, default=0.0, help="speed-up of --phase at least")
    p.add_argument("--max-size-ratio", type=float, default=0.0, help="compressed / original size at most")
    p.add_argument("--max-memory-ratio", type=float, default=0.0, help="compressed / original peak memory at most")
    p.add_argument("--objective", choices=("fastest", "smallest"), default="")
    p.add_argument("--phase", choices=("prefill", "decode"), default="",
                   help="the speed-up that counts (default prefill; an encoder's forward)")
    p.add_argument("--budget", default="30m", help="wall-clock budget (30m, 1h, 90s)")
    p.add_argument("--techniques", default="", help=f"comma-separated, of {', '.join(TECHNIQUES)} (default all)")
    p.add_argument("--no-training", action="store_true", help="no distillation or pruning recovery")
    p.add_argument("--no-calibration", action="store_true", help="only data-free candidates")
    p.add_argument("--finishes", default="", help="comma-separated built-ins the candidates may end in "
                                                  "(default: every one this CPU serves faster)")
    p.add_argument("--deploy", metavar="NAME", default="",
                   help="deploy the winner on the mesh's serving replicas under NAME (only candidates they serve)")
    p.add_argument("--name", default="")
    p.add_argument("--wait", action="store_true", help="follow progress and print the front")
    p.add_argument("--json", action="store_true", help="print the job as one JSON document")

    def cmd_search(args) -> int:
        try:
            spec = spec_of(args)
        except ValueError as exc:
            err.print(escape(str(exc)))
            return 2
        with client_of(args) as client:
            client: Client
            model = uploads.model_argument(client, args.model, err)
            job = client.search(model, name=args.name, **spec)
            code = finish_job(client, job, args)
            if args.wait and not args.json:
                print_search(client.get_job(job.job_id))
            return code

    p.set_defaults(func=cmd_search)
