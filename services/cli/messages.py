"""What the CLI tells a person on stderr when something stops it: Ctrl-C while following a job, no
gateway answering. Pure functions of what happened, so they are tested word for word."""

from __future__ import annotations

import grpc

# Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
# Exit status when no gateway answers: the same as `modelpress status` with no mesh running.
EXIT_NO_GATEWAY = 1
# How gRPC core's own status starts when the call never reached the target (refused, unresolvable).
# The gateway's UNAVAILABLE about a service behind it starts with that service's name instead
# ("quantizer: UNAVAILABLE: failed to connect ..."), so only the start of the details is compared.
_NO_CONNECTION = ("failed to connect to all addresses", "dns resolution failed", "connection refused")


def command_prefix(gateway: str | None) -> str:
    """`modelpress`, with the --gateway the caller gave (a token is never printed)."""
    return f"modelpress --gateway {gateway}" if gateway else "modelpress"


def detached(job_id: str, gateway: str | None = None) -> str:
    """After Ctrl-C during `compress --wait`, `optimize --wait` or `watch`: the job goes on."""
    prefix = command_prefix(gateway)
    return (f"detached from job {job_id}; it keeps running on the mesh.\n"
            f"  follow it again: {prefix} watch {job_id}\n"
            f"  cancel it:       {prefix} jobs cancel {job_id}")


def gateway_unreachable(exc: grpc.RpcError) -> bool:
    """True when the call never reached a gateway (nothing listens there), as opposed to a gateway
    that answered UNAVAILABLE because a service behind it has no live replica."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
    return code == grpc.StatusCode.UNAVAILABLE and details.lower().startswith(_NO_CONNECTION)


def no_gateway(target: str) -> str:
    return (f"no modelpress gateway answers at {target}: start it with `modelpress up` "
            "(or pass --gateway HOST:PORT)")


def neither_job_nor_artifact(identifier: str) -> str:
    return (f"NOT_FOUND: {identifier!r} is neither a job (whose output would be downloaded) nor an artifact "
            f"(`modelpress jobs list`, `modelpress artifacts`)")


# How the mesh refuses a path: it reads no folder of the caller's unless the operator allows its root
# (services/common/store/path_models.py words both).
_REFUSED_PATHS = ("local paths are disabled", "is outside the allowed roots")


def refused_path_hint(details: str) -> str | None:
    """After the mesh refused a `path:` model: how to bring the folder instead (None for other errors)."""
    if not any(refusal in details for refusal in _REFUSED_PATHS):
        return None
    return ("hint: path:DIR names a folder the mesh reads on its own machines, under the roots its operator "
            "allows. Pass the folder itself, without path: (`modelpress compress ./my-model --recipe ...` "
            "uploads it first), or upload it once with `modelpress upload DIR` and use the artifact id it prints.")
