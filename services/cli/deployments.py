"""`modelpress deploy | deployments`: a job's result (or an artifact) served by the mesh's serving
replicas through the Open Inference Protocol and OpenAI's API, and what is served listed, shown,
scaled, reconfigured and deleted. Tables for people, `--json` (modelpress.results rules) for programs."""

from __future__ import annotations

import argparse
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

from google.protobuf import struct_pb2

from modelpress import Client, NotFound
from modelpress.structs import from_struct
from modelpress.v1 import common_pb2
from services.cli import messages
from services.cli.output import err, figure, json_text, out
from services.common import bundles
from services.common.contract.config import ConfigError, parse_config
from services.common.contract.deployment_config import DeploymentConfig

# The gateway's deployment ids (services/gateway/deployments.py); anything else is taken as a name.
DEPLOYMENT_ID = re.compile(r"dep-[0-9a-f]{16}")
# `deployments list`: ids and names whole, never cut.
DEPLOYMENT_LINE = "{:<20}  {:<24}  {:<8}  {:>5}  {:<9}  {:>8}  {}"
WAIT_S = 300.0

ParseOverrides = Callable[[list[str]], struct_pb2.Struct]


def state_name(state: int) -> str:
    return common_pb2.DeploymentState.Name(state).removeprefix("DEPLOYMENT_STATE_").lower()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def config_fields_text() -> str:
    """DeploymentConfig's fields with their defaults and descriptions, from its one declaration."""
    lines = ["config fields (--set FIELD=VALUE, or --config '{\"FIELD\": VALUE}'):"]
    for name, info in DeploymentConfig.model_fields.items():
        lines.append(f"  {name}={json.dumps(info.default)}: {info.description or ''}")
    return "\n".join(lines)


def config_values(args, parse_overrides: ParseOverrides) -> dict:
    """--config (a JSON object), then each --set over it, as the request's config. Values reach the
    gateway as written; it validates them against DeploymentConfig and names a bad field."""
    values: dict = {}
    if getattr(args, "config", None):
        try:
            given = json.loads(args.config)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"--config expects a JSON object of config fields: {exc}") from None
        if not isinstance(given, dict):
            raise SystemExit(f"--config expects a JSON object of config fields, got {args.config!r}")
        values.update(given)
    values.update(from_struct(parse_overrides(args.set)))
    return values


def not_found(identifier: str) -> str:
    return (f"NOT_FOUND: {identifier!r} is neither a job (whose output would be served) nor an artifact "
            "(`modelpress jobs list`, `modelpress artifacts`)")


def deploy_source(client: Client, identifier: str) -> dict[str, str]:
    """A job id serves the job's output; anything else is an artifact id (`artifact:ID` too). Which
    one it is is looked up, as `download` does, not guessed from the id's shape."""
    if identifier.startswith("artifact:"):
        return {"artifact_id": identifier.removeprefix("artifact:")}
    try:
        client.get_job(identifier)
    except NotFound:
        return {"artifact_id": identifier}
    return {"job_id": identifier}


def deployment_id(client: Client, identifier: str) -> str:
    """A deployment id as given, or the id of the deployment answering to that name."""
    if DEPLOYMENT_ID.fullmatch(identifier):
        return identifier
    for deployment in client.list_deployments():
        if deployment.name == identifier:
            return deployment.deployment_id
    raise LookupError(f"NOT_FOUND: no deployment has the id or name {identifier!r} (`modelpress deployments list`)")


# ---- printing ------------------------------------------------------------------------------------


def _source(d: common_pb2.Deployment) -> str:
    return f"job {d.job_id} (artifact {d.artifact_id})" if d.job_id else f"artifact {d.artifact_id}"


def _replicas(d: common_pb2.Deployment) -> list[str]:
    """The serving replicas in the order the status lists their figures (the order of their endpoints)."""
    return list(dict.fromkeys(e.replica for e in d.endpoints))


def _counts(mapping: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(mapping.items()))


def _latency(figures: dict) -> str:
    latency = figures.get("latency_ms") or {}
    if not latency:
        return f"{figure(None)} (no request answered yet)"
    return " / ".join(figure(latency.get(q), "{:.1f}") for q in ("p50", "p95", "p99")) + " ms"


def deployment_lines(d: common_pb2.Deployment) -> list[str]:
    """`deployments get` for people: state, replicas, endpoints, config and live figures."""
    kind = ", ".join(filter(None, [d.model_kind,
                                   common_pb2.ArtifactFormat.Name(d.format).removeprefix("ARTIFACT_FORMAT_").lower()
                                   if d.format else ""]))
    created = f"; created {d.created_at.ToJsonString()}" if d.created_at.seconds else ""
    head = f"deployment {d.deployment_id} ({d.name}): {state_name(d.state)}, {d.ready_replicas}/{d.replicas}"
    lines = [f"{head} replica(s) ready", f"  serves {_source(d)}" + (f", {kind}" if kind else "") + created]
    if d.message:
        lines.append(f"  {d.message}")
    if d.HasField("shadow"):
        lines.append(f"  shadow: the original {_model_text(d.shadow)} on {d.shadow_share:.0%} of requests")
    config = from_struct(d.config)
    lines.append("  config " + (", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(config.items()))
                                if config else "defaults"))
    if d.endpoints:
        lines.append("  endpoints:")
        width = max(len(e.protocol) for e in d.endpoints)
        lines += [f"    {e.protocol:<{width}}  {e.address}  (replica {e.replica})" for e in d.endpoints]
    else:
        lines.append("  endpoints: none yet")
    status = from_struct(d.status)
    requests = status.get("requests") or {}
    total = sum(requests.values())
    lines.append(f"  requests: {total}" + (f" ({_counts(requests)})" if requests else ""))
    names = _replicas(d)
    for index, figures in enumerate(status.get("replicas") or []):
        who = names[index] if index < len(names) else f"replica {index + 1}"
        extra = "".join(f", {label} {figures[key]}" for key, label in
                        (("kv_tokens_in_use", "KV-cache tokens in use"), ("queued", "queued")) if key in figures)
        lines.append(f"  latency p50 / p95 / p99 on {who}: {_latency(figures)}{extra}")
        if figures.get("shadow"):
            lines.append(f"  shadow agreement on {who}: {_shadow_text(figures['shadow'])}")
    if status.get("shadow"):  # summed over replicas, where the gateway sums it
        lines.append(f"  shadow agreement: {_shadow_text(status['shadow'])}")
    batches = status.get("batch_sizes") or {}
    lines.append("  batch sizes (size: engine calls or decode steps): " + (_batch_text(batches) or "none yet"))
    return lines


def _model_text(model: common_pb2.ModelRef) -> str:
    source = model.WhichOneof("source")
    return f"{'artifact' if source == 'artifact_id' else source}:{getattr(model, source)}" if source else "-"


# The shadow's figures (services/serving/shadow.py), in the order they are shown.
SHADOW_FIGURES = (("compared", "compared", "{}"), ("failed", "failed", "{}"), ("mean_cosine", "mean cosine", "{:.4f}"),
                  ("min_cosine", "min cosine", "{:.4f}"), ("next_token_agreement", "next-token agreement", "{:.2%}"),
                  ("mean_kl", "mean KL", "{:.4f}"))


def _shadow_text(figures: dict) -> str:
    return ", ".join(f"{label} {fmt.format(figures[key])}" for key, label, fmt in SHADOW_FIGURES if key in figures)


def _batch_text(batches: dict) -> str:
    return ", ".join(f"{size}: {count}" for size, count in sorted(batches.items(), key=lambda kv: int(kv[0])))


def print_deployment(d: common_pb2.Deployment) -> None:
    for line in deployment_lines(d):
        out.print(line, markup=False, highlight=False)


def list_lines(deployments: list[common_pb2.Deployment]) -> list[str]:
    lines = [DEPLOYMENT_LINE.format("deployment", "name", "state", "ready", "kind", "requests", "serves").rstrip()]
    for d in deployments:
        requests = sum((from_struct(d.status).get("requests") or {}).values())
        lines.append(DEPLOYMENT_LINE.format(d.deployment_id, d.name, state_name(d.state),
                                            f"{d.ready_replicas}/{d.replicas}", d.model_kind or "-", requests,
                                            d.job_id or d.artifact_id))
    return lines


def _show(d: common_pb2.Deployment, as_json: bool) -> None:
    if as_json:
        print(json_text(d))
    else:
        print_deployment(d)


# ---- commands ------------------------------------------------------------------------------------


def _wait(client: Client, d: common_pb2.Deployment, replicas: int, args) -> common_pb2.Deployment | int:
    """The deployment once `replicas` replicas serve it; an exit code when it failed, the time ran out
    or Ctrl-C stopped the wait (the deployment stays either way)."""
    prefix = messages.command_prefix(args.gateway)
    try:
        return client.wait_deployment(d.deployment_id, replicas=replicas, timeout_s=args.timeout)
    except RuntimeError as exc:
        err.print(f"{exc}\n  look:   {prefix} deployments get {d.deployment_id}\n"
                  f"  remove: {prefix} deployments delete {d.deployment_id}", markup=False, highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print(f"stopped waiting; deployment {d.deployment_id} stays.\n"
                  f"  look:   {prefix} deployments get {d.deployment_id}\n"
                  f"  remove: {prefix} deployments delete {d.deployment_id}", markup=False, highlight=False)
        return messages.EXIT_INTERRUPTED


def cmd_deploy(args, client: Client, parse_overrides: ParseOverrides) -> int:
    config = config_values(args, parse_overrides)
    source = deploy_source(client, args.source)
    try:
        deployment = client.deploy(name=args.name, replicas=args.replicas, config=config,
                                   shadow_share=args.shadow_share, **source)
    except NotFound:
        if "job_id" in source:
            raise
        err.print(not_found(args.source), markup=False, highlight=False)
        return 2
    if args.wait:
        waited = _wait(client, deployment, args.replicas, args)
        if isinstance(waited, int):
            return waited
        deployment = waited
    if args.json:
        print(json_text(deployment))
    elif args.wait:
        print_deployment(deployment)
    else:
        out.print(f"deployment {deployment.deployment_id} ({deployment.name}) {state_name(deployment.state)}: "
                  f"{_source(deployment)} on {deployment.replicas} replica(s); follow with "
                  f"`{messages.command_prefix(args.gateway)} deployments get {deployment.deployment_id}`",
                  markup=False, highlight=False)
    return 0


def cmd_bundle(args, parse_overrides: ParseOverrides) -> int:
    """Writes the bundle locally (no mesh needed): the artifact's files where the engine expects them,
    its config, the manifests and a README with the command to run it."""
    try:
        config = parse_config(DeploymentConfig, config_values(args, parse_overrides))
        written = bundles.write_bundle(args.target, args.folder, args.out, name=args.name, config=config,
                                       replicas=args.replicas)
    except (bundles.BundleError, ConfigError) as exc:
        err.print(f"bundle: {exc}", markup=False, highlight=False)
        return 2
    out.print(f"{args.target} bundle of {args.folder} in {args.out}: {written['run']}", markup=False, highlight=False)
    return 0


def cmd_list(args, client: Client) -> int:
    found = client.list_deployments()
    if args.json:
        print(json_text(found))
    else:
        for line in list_lines(found):
            print(line)
    return 0


def _resolved(command):
    """Runs `command(args, client, deployment_id)` with the id of the deployment the caller named."""

    @functools.wraps(command)
    def run(args, client: Client, **more) -> int:
        try:
            identifier = deployment_id(client, args.deployment)
        except LookupError as exc:
            err.print(str(exc), markup=False, highlight=False)
            return 2
        return command(args, client, identifier, **more)

    return run


@_resolved
def cmd_get(args, client: Client, identifier: str) -> int:
    _show(client.get_deployment(identifier), args.json)
    return 0


@_resolved
def cmd_scale(args, client: Client, identifier: str) -> int:
    deployment = client.update_deployment(identifier, replicas=args.replicas)
    if args.wait:
        waited = _wait(client, deployment, args.replicas, args)
        if isinstance(waited, int):
            return waited
        deployment = waited
    if args.json:
        print(json_text(deployment))
    else:
        out.print(f"deployment {deployment.deployment_id} ({deployment.name}): {deployment.replicas} replica(s) "
                  f"asked, {deployment.ready_replicas} ready", markup=False, highlight=False)
    return 0


@_resolved
def cmd_update(args, client: Client, identifier: str, parse_overrides: ParseOverrides) -> int:
    config = config_values(args, parse_overrides)
    if not config:
        err.print("deployments update: give the fields to change (--set FIELD=VALUE or --config JSON)")
        return 2
    deployment = client.update_deployment(identifier, config=config)
    if args.json:
        print(json_text(deployment))
    else:
        changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(config.items()))
        out.print(f"deployment {deployment.deployment_id} ({deployment.name}): {changed}; its replicas load it "
                  "again with the new config", markup=False, highlight=False)
    return 0


@_resolved
def cmd_delete(args, client: Client, identifier: str) -> int:
    client.delete_deployment(identifier)
    out.print(f"deleted deployment {identifier}", markup=False, highlight=False)
    return 0


# ---- parsers -------------------------------------------------------------------------------------


def _config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="a config field (VALUE read as JSON, else as text); repeatable")
    p.add_argument("--config", metavar="JSON", help="config fields as one JSON object (--set wins over it)")


def _wait_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="wait until every replica asked for serves it")
    p.add_argument("--timeout", type=float, default=WAIT_S, metavar="S",
                   help=f"with --wait: give up after S seconds (default {WAIT_S:g}; the deployment stays)")


def add_parsers(sub, with_client, parse_overrides: ParseOverrides) -> None:
    """Adds `deploy` and `deployments`; `with_client(fn)` wraps a command so it gets a connected
    client, `parse_overrides` reads --set as every other command does."""
    fields = config_fields_text().replace("%", "%%")
    p = sub.add_parser("deploy", help="serve a job's result or an artifact on the mesh's serving replicas "
                                      "(OIP gRPC/REST, OpenAI API)",
                       epilog=fields, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="JOB_OR_ARTIFACT", help="a job id (its output is served) or an artifact id")
    p.add_argument("--name", default="", help="the model name callers give (default: the job or artifact id)")
    p.add_argument("--replicas", type=_positive, default=1, metavar="N", help="serving replicas (default 1)")
    p.add_argument("--shadow-share", type=float, default=0.0, metavar="SHARE",
                   help="a job's result: the share (0-1) of live requests also run on the job's original model, "
                        "to report how often they agree (deployments get)")
    _config_arguments(p)
    _wait_arguments(p)
    p.add_argument("--json", action="store_true", help="print the deployment as one JSON document")
    p.set_defaults(func=with_client(functools.partial(cmd_deploy, parse_overrides=parse_overrides)))

    p = sub.add_parser("bundle", help="write a deployment bundle for another engine (Triton, KServe, OVMS, vLLM, "
                                      "llama.cpp) from an artifact folder on this machine",
                       epilog=fields, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, metavar="ARTIFACT_FOLDER",
                   help="a downloaded artifact (modelpress download JOB_OR_ARTIFACT DIR)")
    p.add_argument("--target", required=True, choices=sorted(bundles.TARGETS))
    p.add_argument("--out", type=Path, required=True, help="the bundle's folder (new or empty)")
    p.add_argument("--name", required=True, help="the model's name in the bundle (a Kubernetes name)")
    p.add_argument("--replicas", type=_positive, default=1, metavar="N")
    _config_arguments(p)
    p.set_defaults(func=functools.partial(cmd_bundle, parse_overrides=parse_overrides))

    p = sub.add_parser("deployments", help="list, get, scale, update or delete deployments")
    actions = p.add_subparsers(dest="action", required=True, metavar="{list,get,scale,update,delete}")
    a = actions.add_parser("list", help="every deployment with its state and ready replicas")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=with_client(cmd_list))
    a = actions.add_parser("get", help="state, replicas, endpoints, requests, latency percentiles, batch sizes")
    a.add_argument("deployment", metavar="ID", help="a deployment id or name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=with_client(cmd_get))
    a = actions.add_parser("scale", help="ask for N serving replicas")
    a.add_argument("deployment", metavar="ID", help="a deployment id or name")
    a.add_argument("replicas", metavar="N", type=_positive)
    _wait_arguments(a)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=with_client(cmd_scale))
    a = actions.add_parser("update", help="change config fields (the others keep their values)",
                           epilog=fields, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("deployment", metavar="ID", help="a deployment id or name")
    _config_arguments(a)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=with_client(functools.partial(cmd_update, parse_overrides=parse_overrides)))
    a = actions.add_parser("delete", help="stop serving it and free its name")
    a.add_argument("deployment", metavar="ID", help="a deployment id or name")
    a.set_defaults(func=with_client(cmd_delete))
