"""The `modelpress` command line: run the local mesh, submit and follow jobs, fetch results."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import grpc
import yaml
from rich.markup import escape
from rich.table import Table

from modelpress import Client, NotFound, __version__
from modelpress.headline import job_headline
from modelpress.pipelines import pipeline_text, read_pipeline_file, technique_name
from modelpress.results import job_document
from modelpress.structs import from_struct, from_value, to_struct, to_value
from modelpress.v1 import common_pb2
from services.cli import deployments as cli_deployments
from services.cli import search as cli_search
from services.cli import evaluation as cli_evaluation, launcher, messages, progress, uploads
from services.cli.output import closed_pipe, err, figure, json_text, out, stdout_is_terminal
from services.common.contract.chain import format_name
from services.common.models.builtin_models import BUILTINS
from services.common.runtime import auth
from services.common.runtime.settings import DEFAULT_PORTS, default_home

# `jobs list`: ids whole (a job id is 18 characters, an artifact id 22); on a terminal the model and
# recipe are cut in the middle so a row fits 100 columns, elsewhere nothing is cut.
JOB_LINE = "{:<18}  {:<18}  {:<18}  {:<9}  {:>4}  {}"
# The model of a job: where it is read decides whether the CLI uploads it (modelpress.client.local_model_folder).
MODEL_HELP = (f"builtin:NAME ({', '.join(BUILTINS)}), artifact:ID (or a bare a-… id), path:DIR (a folder the mesh reads itself, under the "
              "operator's allowed roots), or a folder on this machine (./my-model: uploaded first, then the job "
              "runs on the uploaded artifact)")
HEADLINE_STYLE = {"green": "bold green", "amber": "bold yellow", "red": "bold red"}


def _gateway_target(args) -> str:
    if args.gateway:
        return args.gateway
    if os.environ.get("MODELPRESS_GATEWAY"):
        return os.environ["MODELPRESS_GATEWAY"]
    state = launcher.read_state(default_home())
    return state.gateway if state else f"127.0.0.1:{DEFAULT_PORTS['gateway']}"


def _client(args) -> Client:
    """A client of the gateway with the caller's token: --token, $MODELPRESS_TOKEN, or the local
    mesh's operator token when that mesh was started with --auth."""
    token = args.token or os.environ.get("MODELPRESS_TOKEN") or None
    if token is None and not args.gateway and not os.environ.get("MODELPRESS_GATEWAY"):
        state = launcher.read_state(default_home())
        if state is not None and state.auth:
            token = launcher.operator_token_path(default_home()).read_text().strip()
    return Client(_gateway_target(args), token=token, tls_ca=args.tls_ca)


_state_name = progress.state_name


def _parse_overrides(pairs: list[str]):
    """`--set KEY=VALUE ...` as the override Struct the request carries: VALUE read as a JSON scalar
    (16, 0.5, true, "text"), else taken as text. Its values reach the service as written here; the
    service's config validates them."""
    overrides = to_struct({})
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.fields[key].CopyFrom(to_value(value))
    return overrides


# ---- mesh ------------------------------------------------------------------------


def cmd_up(args) -> int:
    home = default_home()
    try:
        replicas = launcher.parse_replicas(args.replicas)
    except launcher.LaunchError as exc:
        err.print(f"up: {escape(str(exc))}")
        return 2
    servers = "nats-server" if args.nats_cluster == 1 else f"a {args.nats_cluster}-server NATS cluster"
    err.print(f"starting {servers} and {len(launcher.SERVICES)} services (home {home}) ...")
    try:
        state = launcher.up(home, free_ports=args.free_ports, with_auth=args.auth, replicas=replicas,
                            nats_cluster=args.nats_cluster)
    except launcher.LaunchError as exc:
        err.print(f"up: {escape(str(exc))}")
        return 2
    err.print(f"mesh up: gateway {state.gateway}, NATS {state.nats_url}")
    for serving in state.serving:
        err.print(f"serving: OIP gRPC {serving['listen']}, HTTP http://{serving['http']} (OIP REST /v2, OpenAI "
                  "API /v1, Prometheus /metrics); deploy with `modelpress deploy JOB_OR_ARTIFACT`",
                  markup=False, highlight=False)
    if replicas:
        err.print("replicas: " + ", ".join(f"{name} x{count}" for name, count in replicas.items()))
    if state.auth:
        err.print(f"auth on: the gateway checks tokens ({launcher.tokens_path(home)}; this CLI uses the operator "
                  f"token in {launcher.operator_token_path(home)}; add one with `modelpress token create`), NATS "
                  "asks for a password only the services know, and the technique services answer the gateway "
                  f"alone (mutual TLS and signed calls; {launcher.auth_dir(home)})")
    else:
        err.print("auth off: anyone who can reach 127.0.0.1 can use every job and artifact, and read NATS "
                  "directly; start with --auth to require tokens")
    if args.detach:
        return 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    err.print("stopping ...")
    launcher.down(home)
    return 0


def cmd_token(args) -> int:
    path = args.tokens_file or (Path(os.environ["MODELPRESS_AUTH_TOKENS"]) if os.environ.get("MODELPRESS_AUTH_TOKENS")
                                else launcher.tokens_path(default_home()))
    taken = {entry.name for entry in auth.read_tokens(path).tokens} if path.exists() else set()
    name = args.name or next(f"{args.tenant}-{i}" for i in range(1, len(taken) + 2) if f"{args.tenant}-{i}" not in taken)
    try:
        token = auth.add_token(path, name=name, tenant=args.tenant, role=args.role)
    except auth.AuthConfigError as exc:
        err.print(f"token create: {escape(str(exc))}")
        return 2
    err.print(f"token {name} ({args.role} of tenant {args.tenant}) added to {path}; it is shown once:")
    print(token)
    return 0


def cmd_mesh_certs(args) -> int:
    folder = args.out.resolve()
    tls = launcher.ensure_mesh_credentials(folder, renew=True, hostnames=args.hostname or ())
    err.print(f"wrote a new CA, the gateway's client certificate and each technique service's server certificate "
              f"to {tls.folder} (the CA's key is not kept), and the mesh secret {folder / 'mesh.secret'} "
              "(kept if it was there). For Kubernetes:")
    print(f"kubectl create secret generic modelpress-mesh-tls --from-file={tls.folder}")
    print(f"kubectl create secret generic modelpress-mesh-secret --from-file=mesh.secret={folder / 'mesh.secret'}")
    return 0


def cmd_down(args) -> int:
    stopped = launcher.down(default_home())
    err.print(f"stopped: {', '.join(stopped)}" if stopped else "no mesh running")
    return 0


def cmd_status(args) -> int:
    report = launcher.status(default_home())
    if not report:
        err.print("no mesh running (modelpress up)")
        return 1
    table = Table("component", "status")
    for name, line in report.items():
        table.add_row(name, line)
    out.print(table)
    return 0 if all(line.startswith(("SERVING", "running")) for line in report.values()) else 1


# ---- jobs --------------------------------------------------------------------------


def follow(client: Client, job_id: str, quiet: bool) -> None:
    """Renders WatchJob on stdout until the job ends: a progress bar per stage with an ETA on a
    terminal, a bounded number of plain lines per stage otherwise (logs, CI, pipes)."""
    progress.follow(client.watch(job_id), job_id, out, quiet=quiet, terminal=stdout_is_terminal())


class _DetachOnInterrupt:
    """While following a job, Ctrl-C detaches at once: the job lives on the mesh, so nothing here
    needs undoing. The handler prints how to come back or cancel, then ends the process without
    unwinding through the open gRPC stream and the channel's shutdown (a KeyboardInterrupt raised
    inside them left the process hanging once in the suite)."""

    def __init__(self, job_id: str, gateway: str | None) -> None:
        self.message = messages.detached(job_id, gateway)

    def __enter__(self):
        # Only the main thread may set a handler (the CLI run inside a test's thread keeps the default),
        # and a process started with SIGINT ignored (a background job of a script) keeps ignoring it.
        self._previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._detach)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _detach(self, *_) -> None:
        try:
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass
        err.print(self.message, markup=False, highlight=False)
        sys.stderr.flush()
        os._exit(messages.EXIT_INTERRUPTED)


def _follow_or_detach(client: Client, job_id: str, args, quiet: bool) -> bool:
    """Follows the job until it ends; Ctrl-C detaches (the job keeps running), printing how to come
    back or cancel it (exit 130). False when detached by a KeyboardInterrupt raised otherwise."""
    try:
        with _DetachOnInterrupt(job_id, args.gateway):
            follow(client, job_id, quiet)
    except KeyboardInterrupt:
        err.print(messages.detached(job_id, args.gateway), markup=False, highlight=False)
        return False
    return True


def _latency_cell(stats: common_pb2.LatencyStats) -> str:
    if not stats.p50_ms:
        return figure(None)
    return f"{stats.p50_ms:.1f} ± {stats.stdev_ms:.1f}" + (" (unreliable)" if stats.unreliable else "")


def _speed_cell(ratio: common_pb2.SpeedRatio) -> str:
    """compressed ÷ original time with its interval (the inverse of the speedup)."""
    if not ratio.speedup:
        return figure(None)
    cell = f"{1 / ratio.speedup:.3f}"
    if ratio.ci95_low and ratio.ci95_high:
        cell += f" [{1 / ratio.ci95_high:.3f}–{1 / ratio.ci95_low:.3f}]"
    return cell + (" unreliable" if ratio.unreliable else "")


def print_result(job: common_pb2.Job) -> None:
    """The before/after table (every ratio compressed ÷ original, with which way is better) and
    the one-line outcome; a job measured without evaluation shows its size alone."""
    result = job.result
    o, c = result.original, result.compressed
    if not o.size_on_disk_bytes:
        size = figure(result.compressed_model_size_bytes, "{:.1f} MB", 1e6)
        out.print(f"job {job.job_id}: {size}, artifact {result.compressed_artifact_id or job.output.id} "
                  "(not evaluated)", markup=False)
        return
    table = Table("metric", "original", "compressed", "compressed ÷ original", "better",
                  title=f"job {job.job_id} ({job.recipe})")

    def row(name, before, after, fmt, better="lower", scale=1.0):
        ratio = figure(after / before if before and after else None)
        table.add_row(name, figure(before, fmt, scale), figure(after, fmt, scale), ratio, better)

    row("size on disk (MB)", o.size_on_disk_bytes, c.size_on_disk_bytes, "{:.1f}", scale=1e6)
    row("parameters (M)", o.parameters, c.parameters, "{:.2f}", scale=1e6)
    shape = f"b{o.latency.batch_size}×s{o.latency.sequence_length}"
    table.add_row(f"{o.latency.phase or 'forward'} p50 ± sd (ms, {shape})", _latency_cell(o.latency),
                  _latency_cell(c.latency), _speed_cell(result.prefill_speedup), "lower")
    if result.decode_speedup.phase:
        table.add_row("decode p50 ± sd (ms/token)", _latency_cell(o.decode), _latency_cell(c.decode),
                      _speed_cell(result.decode_speedup), "lower")
    row("peak RSS (MB)", o.peak_rss_mb, c.peak_rss_mb, "{:.0f}")
    if o.kind == "encoder":
        row("topic k-NN accuracy", o.encoder.knn_topic_accuracy, c.encoder.knn_topic_accuracy, "{:.4f}", "higher")
        if c.encoder.has_reference:
            table.add_row("mean cosine to the original", "reference",
                          figure(c.encoder.mean_reference_cosine, "{:.4f}"), "-", "higher")
    elif o.perplexity:
        row(f"perplexity (held-out, {o.quality_tokens} tokens)", o.perplexity, c.perplexity, "{:.3f}")
        row("next-token top-1 accuracy", o.top1_accuracy, c.top1_accuracy, "{:.4f}", "higher")
    out.print(table)
    load = result.timing_load
    if o.machine.cpu_model:
        out.print(f"measured on {o.machine.cpu_model} ({o.machine.logical_cores} threads, ISA class "
                  f"{o.machine.isa_class or 'not recorded'}), latency interleaved in "
                  f"one process; other processes used {load.others_cpu_share:.0%} of the CPU meanwhile "
                  f"(load average {load.load_average_1m:.2f})", markup=False)
    for stage in job.stages:
        for note in stage.notes:
            out.print(f"[yellow]stage {stage.index} ({stage.spec.name or stage.spec.method}): {escape(note)}[/]")
        if stage.spec.gate and stage.state == common_pb2.JOB_STATE_SUCCEEDED:
            out.print(f"[green]gate {escape(stage.spec.gate)!s} passed at stage {stage.index} "
                      f"({stage.spec.name or stage.spec.method})[/]")
    told = job_headline(job.recipe, result)
    out.print(f"[{HEADLINE_STYLE[told.colour]}]{escape(told.text)}[/]")
    out.print(f"artifact {result.compressed_artifact_id}", markup=False)


def cmd_compress(args) -> int:
    evaluation = cli_evaluation.spec_from(args, skip=args.no_eval)
    with _client(args) as client:
        try:
            recipe = read_pipeline_file(args.pipeline) if args.pipeline else args.recipe
        except (OSError, ValueError, yaml.YAMLError) as exc:
            err.print(f"--pipeline {args.pipeline}: {escape(str(exc))}")
            return 2
        model = uploads.model_argument(client, args.model, err)
        job = client.create_job(model, recipe, overrides=_parse_overrides(args.set), evaluation=evaluation,
                                name=args.name, recompute=args.recompute)
        return _finish_job(client, job, args)


def _finish_job(client: Client, job: common_pb2.Job, args) -> int:
    """Follows a submitted job when asked (--wait) and prints its outcome; the exit code says it."""
    if not args.wait:
        if args.json:
            print(json.dumps(job_document(job), indent=2))
        else:
            out.print(f"job {job.job_id} submitted ({job.recipe}); follow with "
                      f"`{messages.command_prefix(args.gateway)} watch {job.job_id}`",
                      markup=False, highlight=False)
        return 0
    if not _follow_or_detach(client, job.job_id, args, quiet=args.json):
        return messages.EXIT_INTERRUPTED
    job = client.get_job(job.job_id)
    if args.json:
        print(json.dumps(job_document(job), indent=2))
    elif job.state == common_pb2.JOB_STATE_SUCCEEDED:
        print_result(job)
    else:
        err.print(f"job {job.job_id} {_state_name(job.state)}: {job.error}", markup=False, highlight=False)
    return 0 if job.state == common_pb2.JOB_STATE_SUCCEEDED else 1


def cmd_optimize(args) -> int:
    with _client(args) as client:
        model = uploads.model_argument(client, args.model, err)
        job = client.optimize(model, args.engine, precision=args.precision, options=_parse_overrides(args.set),
                              evaluation=cli_evaluation.spec_from(args, skip=args.no_eval), name=args.name)
        return _finish_job(client, job, args)


def cmd_engines(args) -> int:
    with _client(args) as client:
        response = client.engines()
    if args.json:
        print(json_text(response))
        return 0
    table = Table("engine", "precisions (compute)", "available", "why not")
    for e in response.engines:
        precisions = [f"{p} ({e.compute[p]}{', emulated here' if p in e.emulated else ''})"
                      if e.compute.get(p, "fp32") != "fp32" else p for p in e.precisions]
        table.add_row(e.name, ", ".join(precisions), "yes" if e.available else "[red]no[/red]", e.reason)
    out.print(table)
    for worker in response.workers:
        out.print(f"{worker.worker}: {worker.machine.cpu_model}, ISA class {worker.isa_class}")
        for s in worker.compute:
            state = "native" if s.accelerated else ("[red]emulated[/red]" if s.emulated else "not accelerated")
            out.print(f"  {s.precision:<5} {state}: {s.note}")
    return 0


def cmd_watch(args) -> int:
    """The job's events on stdout (history first) until it ends; Ctrl-C stops watching, not the job."""
    with _client(args) as client:
        try:
            with _DetachOnInterrupt(args.job_id, args.gateway):
                if args.json:
                    for event in client.watch(args.job_id):
                        print(json_text(event, indent=None), flush=True)
                else:
                    follow(client, args.job_id, quiet=False)
        except KeyboardInterrupt:
            err.print(messages.detached(args.job_id, args.gateway), markup=False, highlight=False)
            return messages.EXIT_INTERRUPTED
    return 0


def _model_text(model: common_pb2.ModelRef) -> str:
    source = model.WhichOneof("source")
    return {"builtin": f"builtin:{model.builtin}", "artifact_id": f"artifact:{model.artifact_id}",
            "path": f"path:{model.path}"}.get(source, "")


def _job_row(job: common_pb2.Job) -> dict:
    return {"job_id": job.job_id, "name": job.name, "model": _model_text(job.model), "recipe": job.recipe,
            "status": _state_name(job.state), "progress": round(job.progress, 3), "artifact_id": job.output.id,
            "error": job.error}


def _middle(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width - width // 2):]


def job_lines(rows: list[dict], terminal: bool) -> list[str]:
    """`jobs list` as fixed-width lines. Ids are never cut; on a terminal a long model path or recipe
    is cut in the middle (a row fits 100 columns), elsewhere nothing is."""
    cut = (lambda text, width: _middle(text, width)) if terminal else (lambda text, width: text)
    lines = [JOB_LINE.format("job", "model", "recipe", "status", "done", "artifact").rstrip()]
    for r in rows:
        lines.append(JOB_LINE.format(r["job_id"], cut(r["model"], 18), cut(r["recipe"], 18), r["status"],
                                     f"{r['progress']:.0%}", r["artifact_id"] or "-"))
    return lines


def print_job(job: common_pb2.Job) -> None:
    """`jobs get` for people: what ran, how each stage ended, and the result table when it succeeded."""
    out.print(f"job {job.job_id}: {_state_name(job.state)}, {_model_text(job.model)} with {job.recipe}"
              + (f" ({job.name})" if job.name else ""), markup=False, highlight=False)
    for stage in job.stages:
        label = stage.spec.name or stage.spec.method
        output = f" -> {stage.output.id}" if stage.output.id else ""
        method = f"{technique_name(stage.spec.technique)}:{stage.spec.method}"
        out.print(f"  stage {stage.index} {label} ({method}): {_state_name(stage.state)}{output}",
                  markup=False, highlight=False)
    if job.error:
        out.print(f"error: {job.error}", markup=False, highlight=False)
    if job.state == common_pb2.JOB_STATE_SUCCEEDED:
        print_result(job)


def cmd_jobs(args) -> int:
    with _client(args) as client:
        if args.action == "list":
            jobs = client.list_jobs()
            if args.json:  # the same document per job as `jobs get --json`
                print(json.dumps([job_document(j) for j in jobs], indent=2))
            else:
                for line in job_lines([_job_row(j) for j in jobs], terminal=stdout_is_terminal()):
                    print(line)
            return 0
        if not args.job_id:
            raise SystemExit(f"jobs {args.action} needs a JOB id")
        if args.action == "get":
            job = client.get_job(args.job_id)
            if args.json:
                print(json.dumps(job_document(job), indent=2))
            else:
                print_job(job)
        elif args.action == "cancel":
            job = client.cancel_job(args.job_id)
            out.print(f"job {job.job_id}: {_state_name(job.state)}")
        elif args.action == "delete":
            removed = client.delete_job(args.job_id)
            out.print(f"deleted job {args.job_id} and {removed} artifact(s)")
    return 0


def download(client: Client, identifier: str, folder: Path) -> common_pb2.ArtifactRef:
    """A job id downloads the job's output; anything else is tried as an artifact id. Which one it is
    is looked up, not guessed from the id's shape; NOT_FOUND names both when neither exists."""
    try:
        client.get_job(identifier)
    except NotFound:
        pass
    else:
        return client.download(folder, job_id=identifier)
    try:
        return client.download(folder, artifact_id=identifier)
    except NotFound:
        raise LookupError(messages.neither_job_nor_artifact(identifier)) from None


def cmd_download(args) -> int:
    with _client(args) as client:
        try:
            ref = download(client, args.id, Path(args.out))
        except LookupError as exc:
            err.print(str(exc.args[0]), markup=False, highlight=False)
            return 2
    out.print(f"artifact {ref.id} ({ref.size_bytes} bytes, sha256 {ref.sha256[:12]}…) -> {args.out}",
              markup=False, highlight=False)
    return 0


UPLOAD_FORMATS = {"hf": common_pb2.ARTIFACT_FORMAT_HF_SAFETENSORS,
                  "compressed-tensors": common_pb2.ARTIFACT_FORMAT_COMPRESSED_TENSORS,
                  "dataset-jsonl": common_pb2.ARTIFACT_FORMAT_DATASET_JSONL}


def cmd_upload(args) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        out.print(f"[red]{folder}: not a folder[/red]")
        return 2
    with _client(args) as client:
        ref = uploads.upload_folder(client, folder, err, fmt=UPLOAD_FORMATS[args.format])
    if args.json:
        print(json_text(ref))
    else:
        out.print(f"artifact {ref.id} ({ref.size_bytes} bytes, sha256 {ref.sha256[:12]}…)")
    return 0


def cmd_recipes(args) -> int:
    if args.action in ("show", "delete", "create") and not args.name:
        err.print(f"recipes {args.action}: name {'a pipeline file' if args.action == 'create' else 'a recipe'}")
        return 2
    with _client(args) as client:
        if args.action == "list":
            for recipe in client.list_recipes():
                stages = " -> ".join(f"{technique_name(s.technique)}:{s.method}" for s in recipe.stages)
                name = recipe.name if recipe.builtin else f"{recipe.name}@{recipe.version}"
                out.print(f"[bold]{escape(name)}[/bold] ({escape(stages)}): {escape(recipe.summary)}")
                facts = [f"kinds: {', '.join(recipe.model_kinds) or 'any'}"]
                if recipe.runtimes:
                    facts += [f"runs in: {', '.join(recipe.runtimes)}", f"compute: {recipe.compute}",
                              f"data: {recipe.data}", f"cost: {recipe.cost}"]
                out.print(f"    [dim]{escape('; '.join(facts))}[/dim]")
            return 0
        if args.action == "create":
            try:
                pipeline = read_pipeline_file(args.name, default_name=Path(args.name).stem)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                err.print(f"recipes create {args.name}: {escape(str(exc))}")
                return 2
            recipe = client.create_recipe(pipeline)
            print(f"created {recipe.name}@{recipe.version}")
            return 0
        if args.action == "delete":
            print(f"deleted {client.delete_recipe(args.name)} version(s) of {args.name}")
            return 0
        recipe = client.get_recipe(args.name)
    # The same shape `compress --pipeline FILE` and `recipes create FILE` read back (YAML, or JSON with --json).
    version = None if recipe.builtin else recipe.version
    print(pipeline_text(recipe, "json" if args.json else "yaml", version), end="")
    return 0


def _value_text(value) -> str:
    """A default as a person writes it: 16, not 16.0; true; "text"."""
    return json.dumps(from_value(value))


def _field_text(field: common_pb2.ConfigField) -> str:
    text = f"{field.name}={_value_text(field.default_value)}"
    if field.choices:
        text += f" ({'|'.join(field.choices)})"
    elif field.HasField("minimum") or field.HasField("maximum"):
        bound = lambda v: str(int(v)) if float(v).is_integer() else f"{v:g}"  # noqa: E731
        text += (f" [{bound(field.minimum) if field.HasField('minimum') else ''}.."
                 f"{bound(field.maximum) if field.HasField('maximum') else ''}]")
    return text


def cmd_lineage(args) -> int:
    with _client(args) as client:
        response = client.lineage(args.artifact)
    if args.json:
        print(json_text(response))
        return 0
    a = response.artifact
    out.print(f"artifact {a.artifact.id} ({format_name(a.artifact.format)}, {a.artifact.size_bytes} bytes) from "
              f"{a.base_model or 'an upload'}" + (f"; tags {', '.join(a.tags)}" if a.tags else ""), markup=False)
    if not response.stages:
        out.print("no stages: uploaded as it is", markup=False)
    for i, stage in enumerate(response.stages):
        config = from_struct(stage.config)
        versions = ", ".join(f"{k} {v}" for k, v in sorted(stage.versions.items()) if k != "isa_class")
        out.print(f"[bold]{i}. {stage.technique}:{stage.method}[/bold] on {escape(stage.input)} "
                  f"({stage.input_digest[:19]}…) -> {stage.format.removeprefix('ARTIFACT_FORMAT_').lower()}")
        out.print(f"   config {json.dumps(config, sort_keys=True)}", markup=False)
        out.print(f"   by {stage.worker} (service v{stage.service_version}, ISA {stage.versions.get('isa_class', '?')}; "
                  f"{versions}); job {stage.job_id or '-'} stage {stage.stage_index}; key {stage.key[:16]}", markup=False)
    return 0


def cmd_tag(args) -> int:
    with _client(args) as client:
        response = client.tag(args.artifact, args.tag)
    print(f"{response.artifact.artifact.id} tagged {response.tag}")
    return 0


def cmd_artifacts(args) -> int:
    with _client(args) as client:
        found = client.list_artifacts(tag=args.tag, model=args.model, recipe=args.recipe)
    if args.json:
        print(json_text(found))
        return 0
    for a in found:
        out.print(f"{a.artifact.id}  {format_name(a.artifact.format):22} {a.artifact.size_bytes / 1e6:9.1f} MB  "
                  f"{a.base_model or '(upload)'}  {' -> '.join(a.methods) or '-'}  {','.join(a.recipes) or '-'}  "
                  f"{' '.join(a.tags)}", markup=False)
    return 0


def cmd_methods(args) -> int:
    with _client(args) as client:
        response = client.list_methods()
    if args.json:
        print(json_text(response))
        return 0
    for method in response.methods:
        technique = common_pb2.Technique.Name(method.technique).removeprefix("TECHNIQUE_").lower()
        fields = ", ".join(_field_text(f) for f in method.fields)
        takes = ", ".join(format_name(f) for f in method.accepts) or "any"
        writes = ", ".join(format_name(f) for f in method.produces) or "its input's format"
        out.print(f"{technique}/{method.name}: {method.summary} [{fields}] (takes {takes}; writes {writes})",
                  markup=False)
    for name, why in response.unavailable.items():
        err.print(f"{name} unavailable: {why}")
    return 0


def _with_client(command):
    def run(args) -> int:
        with _client(args) as client:
            return command(args, client)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelpress", description=__doc__)
    parser.add_argument("--version", action="version", version=f"modelpress {__version__}")
    parser.add_argument("--gateway", help="gateway host:port (default: the local mesh, or $MODELPRESS_GATEWAY)")
    parser.add_argument("--token", help="API token (default $MODELPRESS_TOKEN, or the local --auth mesh's operator)")
    parser.add_argument("--tls-ca", default=os.environ.get("MODELPRESS_TLS_CA") or None,
                        help="CA certificate (PEM) of a TLS gateway (default $MODELPRESS_TLS_CA)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start nats-server and every service locally")
    p.add_argument("--detach", action="store_true", help="return once healthy; stop later with `modelpress down`")
    p.add_argument("--free-ports", action="store_true", help="pick free ports instead of 4222/50051-50057/8000")
    p.add_argument("--auth", action="store_true",
                   help="require API tokens at the gateway and a password at NATS (secrets under $MODELPRESS_HOME/auth)")
    p.add_argument("--replicas", default="", metavar="SERVICE=N,...",
                   help="processes per service, e.g. quantizer=2,gateway=2: technique replicas sit behind one "
                        "target the gateway balances stages across (a stage whose replica dies is retried on "
                        "another); gateways share the jobs through leases (this CLI talks to the first); serving "
                        "replicas (gRPC and HTTP ports +100 each) take deployment replicas (`deploy --replicas`)")
    p.add_argument("--nats-cluster", type=int, default=1, metavar="N",
                   help="run N NATS servers as one JetStream cluster (3 to 5; streams, KV and objects kept on 3)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("token", help="create an API token for a tenant (prints it once; the gateway keeps its hash)")
    p.add_argument("action", choices=["create"])
    p.add_argument("--tenant", required=True, help="the tenant whose jobs and artifacts the token reaches")
    p.add_argument("--name", help="a name for the token (default: TENANT-N)")
    p.add_argument("--role", choices=["user", "operator"], default="user",
                   help="operator: every tenant's jobs and artifacts")
    p.add_argument("--tokens-file", type=Path,
                   help="the gateway's tokens file (default: $MODELPRESS_AUTH_TOKENS, else the local mesh's)")
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("mesh-certs", help="write the mesh's CA, certificates and ticket secret for Compose or "
                                          "Kubernetes Secrets (what `up --auth` makes under $MODELPRESS_HOME/auth)")
    p.add_argument("out", type=Path, help="folder to write tls/ and mesh.secret into (made 0700)")
    p.add_argument("--hostname", action="append", metavar="NAME",
                   help="one more name each worker certificate answers to, beside the service's name, localhost "
                        "and 127.0.0.1 (e.g. a cluster domain's quantizer.modelpress.svc.cluster.local); repeatable")
    p.set_defaults(func=cmd_mesh_certs)
    sub.add_parser("down", help="stop the local mesh").set_defaults(func=cmd_down)
    sub.add_parser("status", help="health of the local mesh").set_defaults(func=cmd_status)

    p = sub.add_parser("compress", help="submit a compression job")
    p.add_argument("model", help=MODEL_HELP)
    chosen = p.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--recipe", help="a recipe name (`modelpress recipes`)")
    chosen.add_argument("--pipeline", metavar="FILE", help="a pipeline file (.yaml or .json): its stages, "
                                                           "as `modelpress recipes show NAME` prints them")
    p.add_argument("--set", action="append", metavar="[STAGE.]FIELD=VALUE",
                   help="override a recipe config field; STAGE. picks one stage where several take the field")
    p.add_argument("--name", default="")
    p.add_argument("--wait", action="store_true", help="follow progress and print the result")
    p.add_argument("--json", action="store_true",
                   help="print the job as one JSON document (with --wait: once it ended, its result "
                        "included); the same document as `jobs get JOB --json`")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after measurement")
    p.add_argument("--recompute", action="store_true",
                   help="run every stage even where a stored artifact has the same key (default: reuse it)")
    cli_evaluation.add_spec_arguments(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("optimize", help="convert a model for an inference engine (a job)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--engine", required=True, help="onnxruntime, openvino, gguf or tensorrt (see `engines`)")
    p.add_argument("--precision", default="", help="one of the engine's precisions (default: its first)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="an option of the engine's method")
    p.add_argument("--name", default="")
    p.add_argument("--wait", action="store_true", help="follow progress and print the result")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-eval", action="store_true", help="skip the before/after measurement")
    cli_evaluation.add_spec_arguments(p)
    p.set_defaults(func=cmd_optimize)
    p = sub.add_parser("engines", help="inference engines, precisions and availability on the optimizer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_engines)

    p = sub.add_parser("jobs", help="list, get, cancel or delete jobs")
    p.add_argument("action", choices=["list", "get", "cancel", "delete"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("watch", help="stream a job's events (history first)")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("download", help="download a job's output, or an artifact by its id, into a folder")
    p.add_argument("id", metavar="JOB_OR_ARTIFACT", help="a job id (its output) or an artifact id")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("upload", help="upload a model folder or a JSON-lines dataset folder; prints its artifact id")
    p.add_argument("folder")
    p.add_argument("--format", choices=sorted(UPLOAD_FORMATS), default="hf")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_upload)
    p = sub.add_parser("recipes", help="list recipes; show NAME[@V] as a pipeline file; create FILE; delete NAME[@V]")
    p.add_argument("action", nargs="?", choices=("list", "show", "create", "delete"), default="list")
    p.add_argument("name", nargs="?", default="", help="show/delete: NAME or NAME@VERSION; create: a .yaml/.json file")
    p.add_argument("--json", action="store_true", help="show: JSON instead of YAML")
    p.set_defaults(func=cmd_recipes)
    p = sub.add_parser("lineage", help="every stage that made an artifact (method, config, input digest, versions)")
    p.add_argument("artifact")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)
    p = sub.add_parser("tag", help="tag an artifact NAME[:VERSION] (NAME alone: its next version)")
    p.add_argument("artifact")
    p.add_argument("tag")
    p.set_defaults(func=cmd_tag)
    p = sub.add_parser("artifacts", help="list stored artifacts, filtered by tag, base model or recipe")
    p.add_argument("--tag", default="", help="NAME (any version) or NAME:VERSION")
    p.add_argument("--model", default="", help="base model as given, e.g. builtin:smollm2-135m")
    p.add_argument("--recipe", default="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_artifacts)
    p = sub.add_parser("methods", help="list the services' methods and config fields")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)
    cli_evaluation.add_parsers(sub, _with_client)
    cli_deployments.add_parsers(sub, _with_client, _parse_overrides)
    cli_search.add_parsers(sub, _finish_job, _client)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:
        return closed_pipe()
    except KeyboardInterrupt:
        err.print("interrupted")
        return messages.EXIT_INTERRUPTED
    except grpc.RpcError as exc:
        if messages.gateway_unreachable(exc):
            err.print(messages.no_gateway(_gateway_target(args)), markup=False, highlight=False)
            return messages.EXIT_NO_GATEWAY
        err.print(f"error: {exc.code().name}: {exc.details()}", markup=False, highlight=False)
        if hint := messages.refused_path_hint(exc.details() or ""):
            err.print(hint, markup=False, highlight=False)
        return 2
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:  # OSError: a file that changed mid-upload
        err.print(f"error: {exc}", markup=False, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
