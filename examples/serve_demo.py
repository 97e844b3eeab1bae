"""The demo's last step (`make demo`): compressed results served on the running local mesh beside their
originals, and called the way users call them — MiniLM through the Open Inference Protocol
(`tritonclient.grpc`), SmolLM2 through OpenAI's API (the `openai` client) — printing the answers and the
served latency before and after. SmolLM2's compressed deployment is the one the demo's search made
(`modelpress search ... --deploy NAME`); MiniLM's is made here.

    python examples/serve_demo.py --chat NAME [--gateway HOST:PORT]   (default: the mesh `modelpress up` started)
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelpress import Client
from modelpress.v1 import common_pb2

SENTENCES = ["A tuple is an immutable sequence.", "Modules are imported once per interpreter.",
             "The with statement wraps a block in a context manager.", "Generators yield values lazily."]
QUESTION = "What does the Python with statement do?"


def finished(client: Client, job: common_pb2.Job) -> common_pb2.Job:
    while job.state not in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED,
                            common_pb2.JOB_STATE_CANCELLED):
        time.sleep(2)
        job = client.get_job(job.job_id)
    if job.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"job {job.job_id} ended {common_pb2.JobState.Name(job.state)}: {job.error}")
    return job


def deployed(client: Client, name: str, **source) -> common_pb2.Deployment:
    for existing in client.list_deployments():  # a demo run twice redeploys
        if existing.name == name:
            client.delete_deployment(existing.deployment_id)
    deployment = client.deploy(name=name, config={"max_batch_size": 16, "max_wait_ms": 5}, **source)
    return client.wait_deployment(deployment.deployment_id, timeout_s=600)


def endpoint(deployment: common_pb2.Deployment, protocol: str) -> str:
    return next(e.address for e in deployment.endpoints if e.protocol == protocol)


def embed_latencies(address: str, name: str, rounds: int = 8) -> tuple[np.ndarray, list[float]]:
    """Each sentence sent by its own client thread, `rounds` times; (embeddings, latencies in ms)."""
    import tritonclient.grpc as grpcclient  # a process of its own: no other OIP stubs are loaded here

    def one(sentence: str) -> tuple[np.ndarray, float]:
        client = grpcclient.InferenceServerClient(address)
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([sentence.encode()], dtype=object))
        start = time.perf_counter()
        result = client.infer(name, [text])
        return result.as_numpy("embedding")[0], (time.perf_counter() - start) * 1000

    with ThreadPoolExecutor(len(SENTENCES)) as pool:
        runs = [list(pool.map(one, SENTENCES)) for _ in range(rounds)]
    return np.stack([e for e, _ in runs[-1]]), [ms for run in runs[1:] for _, ms in run]


def chat(address: str, name: str) -> tuple[str, float, int]:
    import openai

    client = openai.OpenAI(base_url=f"http://{address}/v1", api_key="local", max_retries=0)
    start = time.perf_counter()
    answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=48, temperature=0)
    return answer.choices[0].message.content, time.perf_counter() - start, answer.usage.completion_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gateway", help="the gateway (default: the local mesh's)")
    parser.add_argument("--chat", required=True, metavar="NAME", help="the SmolLM2 deployment to chat with")
    args = parser.parse_args()
    from services.cli import launcher
    from services.common.runtime.settings import default_home

    state = launcher.read_state(default_home())
    client = Client(args.gateway or (state.gateway if state else "127.0.0.1:50051"), timeout_s=120)

    print("MiniLM-L6: onnx-int8 beside the FP32 original, through OIP gRPC (tritonclient)")
    minilm = finished(client, client.create_job("builtin:minilm-l6", "onnx-int8"))
    original = client.create_job("builtin:minilm-l6", "onnx")  # the original as served FP32 ONNX
    original = finished(client, original)
    served = {"minilm-fp32": deployed(client, "minilm-fp32", job_id=original.job_id),
              "minilm-int8": deployed(client, "minilm-int8", job_id=minilm.job_id)}
    vectors = {}
    for name, deployment in served.items():
        vectors[name], latencies = embed_latencies(endpoint(deployment, "oip-grpc"), name)
        print(f"  {name}: p50 {statistics.median(latencies):.1f} ms over {len(latencies)} requests")
    cosines = (vectors["minilm-fp32"] * vectors["minilm-int8"]).sum(1)
    print(f"  cosine int8 vs fp32 per sentence: {', '.join(f'{c:.4f}' for c in cosines)}")

    searched = next((d for d in client.list_deployments() if d.name == args.chat), None)
    if searched is None:
        raise SystemExit(f"no deployment named {args.chat!r}: run the search with --deploy {args.chat} first")
    searched = client.wait_deployment(searched.deployment_id, timeout_s=600)
    print(f"SmolLM2-135M: the search's winner ({args.chat}, job {searched.job_id}) beside the FP32 original, "
          "through OpenAI's chat API (openai)")
    from services.common.models.builtin_models import builtin_folder
    from services.common.runtime.settings import default_cache

    fp32 = client.upload(builtin_folder("smollm2-135m", default_cache()))  # the original, as the mesh reads it
    lm = {"smollm2-fp32": deployed(client, "smollm2-fp32", artifact_id=fp32.id), args.chat: searched}
    for name, deployment in lm.items():
        text, seconds, tokens = chat(endpoint(deployment, "http"), name)
        print(f"  {name}: {tokens} tokens in {seconds:.2f} s ({tokens / seconds:.1f} tokens/s)\n    {text!r}")
    for deployment in [*served.values(), *lm.values()]:
        client.delete_deployment(deployment.deployment_id)
    client.close()


if __name__ == "__main__":
    main()
