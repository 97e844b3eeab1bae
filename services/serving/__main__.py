"""The serving service.

In the mesh (`python -m services.serving --listen HOST:PORT --nats-url ... [--http-listen HOST:PORT]`,
as `modelpress up` starts it): serves the gateway's deployments (services/serving/mesh_worker.py).

On its own, without NATS: `python -m services.serving --model NAME=FOLDER [...]`.

Serves each artifact folder under its name through OIP gRPC (`--grpc`), and OIP REST, OpenAI's API
and Prometheus metrics over HTTP (`--http`). `--config` takes a JSON object of DeploymentConfig
fields (services/common/contract/deployment_config.py), applied to every model."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path

from services.common.contract.config import parse_config
from services.common.contract.deployment_config import DeploymentConfig
from services.serving.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--config", default="{}", help="JSON object of DeploymentConfig fields")
    parser.add_argument("--shadow", action="append", default=[], metavar="NAME=FOLDER",
                        help="the original of model NAME, run beside it on --shadow-share of its requests")
    parser.add_argument("--shadow-share", type=float, default=1.0)
    parser.add_argument("--grpc", default="127.0.0.1:8001", help="OIP gRPC listen address (port 0: any free)")
    parser.add_argument("--http", default="127.0.0.1:8000", help="HTTP listen address (port 0: any free)")
    parser.add_argument("--ready-file", type=Path, help="written with the bound ports once every model is loaded")
    args = parser.parse_args(argv)
    models = {}
    for spec in args.model:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not Path(folder).is_dir():
            parser.error(f"--model {spec!r}: NAME=FOLDER with an existing folder is expected")
        models[name] = Path(folder)
    shadows = {}
    for spec in args.shadow:
        name, sep, folder = spec.partition("=")
        if not sep or name not in models or not Path(folder).is_dir():
            parser.error(f"--shadow {spec!r}: NAME=FOLDER naming a --model and an existing folder is expected")
        shadows[name] = (Path(folder), args.shadow_share)
    config = parse_config(DeploymentConfig, json.loads(args.config))
    host, _, port = args.http.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run(models, config, args.grpc, host or "127.0.0.1", int(port), args.ready_file, shadows))


if __name__ == "__main__":
    import sys

    if "--model" in sys.argv:
        main()
    else:
        from services.common.runtime.server import run_service
        from services.serving.mesh_worker import register

        run_service("serving", register)
