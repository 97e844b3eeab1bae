"""A serving replica as its own process, called by the real clients of the protocols it speaks:
`tritonclient.grpc` and `tritonclient.http` (Open Inference Protocol v2) on an ONNX encoder, the
`openai` client on a causal LM and on the encoder's embeddings. Answers are checked against the
models run directly in this process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.contract.config import parse_config
from services.common.contract.engine_api import ProgressReporter
from tests.protocol_clients import tritonclient_grpc_apart

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Modules are imported once per interpreter.",
             "A tuple is an immutable sequence."]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def encoder_onnx(tiny_bert_dir, tmp_path_factory) -> Path:
    from services.optimizer.configs import OnnxConfig
    from services.optimizer.engine import run_onnx

    folder = tmp_path_factory.mktemp("served-bert-onnx")
    run_onnx(parse_config(OnnxConfig, {}), tiny_bert_dir, folder, ProgressReporter())
    return folder


@pytest.fixture(scope="module")
def chat_llama(tiny_bpe_llama_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("served-llama") / "model"
    shutil.copytree(tiny_bpe_llama_dir, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}))
    return folder


@pytest.fixture(scope="module")
def noised_llama(chat_llama, tmp_path_factory) -> Path:
    """The chat model with noise on its weights: an "original" the served model disagrees with."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("noised-llama") / "model"
    shutil.copytree(chat_llama, folder)
    model = AutoModelForCausalLM.from_pretrained(chat_llama)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def server(encoder_onnx, chat_llama, noised_llama, tiny_bert_dir, tmp_path_factory):
    ready = tmp_path_factory.mktemp("serving") / "ready.json"
    config = {"max_batch_size": 8, "max_wait_ms": 20, "max_kv_tokens": 2048, "max_input_tokens": 256,
              "max_request_bytes": 1_000_000}
    proc = subprocess.Popen([sys.executable, "-m", "services.serving", "--model", f"encoder={encoder_onnx}",
                             "--model", f"lm={chat_llama}", "--shadow", f"encoder={tiny_bert_dir}",
                             "--shadow", f"lm={noised_llama}", "--config", json.dumps(config), "--grpc",
                             "127.0.0.1:0", "--http", "127.0.0.1:0", "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the serving replica exited: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the serving replica did not load its models"
        time.sleep(0.2)
    ports = json.loads(ready.read_text())
    yield {"grpc": f"127.0.0.1:{ports['grpc_port']}", "http": f"127.0.0.1:{ports['http_port']}"}
    proc.terminate()
    proc.wait(timeout=30)


def _reference_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """The float encoder, mean-pooled over its tokens (what a bare BERT folder is served as)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    rows = []
    for text in texts:
        batch = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]
        rows.append(hidden.mean(0).numpy())
    return np.stack(rows)


def test_tritonclient_grpc_embeds_text_and_gets_the_protocols_errors(server, tiny_bert_dir):
    from tritonclient.utils import InferenceServerException

    grpcclient = tritonclient_grpc_apart()
    client = grpcclient.InferenceServerClient(server["grpc"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("encoder")
    metadata = client.get_model_metadata("encoder", as_json=True)
    assert {i["name"] for i in metadata["inputs"]} >= {"text", "input_ids"}
    text = grpcclient.InferInput("text", [len(SENTENCES)], "BYTES")
    text.set_data_from_numpy(np.array([s.encode() for s in SENTENCES], dtype=object))
    result = client.infer("encoder", [text], outputs=[grpcclient.InferRequestedOutput("embedding")])
    got = result.as_numpy("embedding")
    assert got.shape == (3, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference_embeddings(tiny_bert_dir, SENTENCES), atol=1e-4)

    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [text])
    assert unknown.value.status() == "StatusCode.NOT_FOUND" and "no-such-model" in unknown.value.message()
    wrong = grpcclient.InferInput("input_ids", [1, 4], "FP32")
    wrong.set_data_from_numpy(np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as bad:
        client.infer("encoder", [wrong])
    assert bad.value.status() == "StatusCode.INVALID_ARGUMENT" and "input_ids" in bad.value.message()
    huge = grpcclient.InferInput("text", [1], "BYTES")
    huge.set_data_from_numpy(np.array([b"word " * 2_000_000], dtype=object))  # 10 MB of text
    with pytest.raises(InferenceServerException) as large:
        client.infer("encoder", [huge])
    assert large.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_tritonclient_grpc_streams_generated_text_request_by_request(server):
    """Triton's streaming extension: two prompts on one stream are generated together, each answered
    piece by piece under its id, the last piece flagged final with its finish reason; the pieces add up
    to the unary answer; a failing request gets its error on the stream and the others go on."""
    import queue

    from tritonclient.utils import InferenceServerException

    grpcclient = tritonclient_grpc_apart()
    client = grpcclient.InferenceServerClient(server["grpc"])
    prompts = {"a": b"The interpreter reads", "b": b"A module is"}
    parameters = {"max_tokens": 12, "temperature": 0}

    def text_input(prompt: bytes):
        text = grpcclient.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt], dtype=object))
        return text

    unary = {rid: client.infer("lm", [text_input(p)], parameters=parameters).as_numpy("text_output")[0].decode()
             for rid, p in prompts.items()}
    events: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        for rid, prompt in prompts.items():
            client.async_stream_infer("lm", [text_input(prompt)], request_id=rid, parameters=parameters,
                                      enable_empty_final_response=True)
        client.async_stream_infer("no-such-model", [text_input(b"x")], request_id="c")
        pieces: dict[str, list[str]] = {"a": [], "b": []}
        finals, errors = {}, []
        while len(finals) < 2 or not errors:
            result, error = events.get(timeout=60)
            if error is not None:
                errors.append(error)
                continue
            response = result.get_response()
            pieces[response.id].append(result.as_numpy("text_output")[0].decode())
            if response.parameters["triton_final_response"].bool_param:
                finals[response.id] = response.parameters["finish_reason"].string_param
    finally:
        client.stop_stream()
    assert {rid: "".join(parts) for rid, parts in pieces.items()} == unary
    assert len(pieces["a"]) > 2 and set(finals.values()) <= {"length", "stop"}
    assert isinstance(errors[0], InferenceServerException) and "NOT_FOUND" in errors[0].message()


def test_tritonclient_http_takes_token_ids_in_binary_and_json(server, tiny_bert_dir):
    import tritonclient.http as httpclient
    from transformers import AutoTokenizer
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(server["http"])
    assert client.is_server_live() and client.is_model_ready("encoder")
    ids = AutoTokenizer.from_pretrained(tiny_bert_dir)(SENTENCES[:2], padding=True, return_tensors="np")
    want = _reference_embeddings(tiny_bert_dir, SENTENCES[:2])
    for binary in (True, False):
        inputs = [httpclient.InferInput("input_ids", list(ids.input_ids.shape), "INT64"),
                  httpclient.InferInput("attention_mask", list(ids.attention_mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(ids.input_ids.astype(np.int64), binary_data=binary)
        inputs[1].set_data_from_numpy(ids.attention_mask.astype(np.int64), binary_data=binary)
        result = client.infer("encoder", inputs,
                              outputs=[httpclient.InferRequestedOutput("embedding", binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy("embedding"), want, atol=1e-4)
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no-such-model")
    assert "no-such-model" in unknown.value.message()


def test_openai_client_completes_streams_chats_and_embeds(server, chat_llama, tiny_bert_dir):
    import openai
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client = openai.OpenAI(base_url=f"http://{server['http']}/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} == {"encoder", "lm"}

    tokenizer = AutoTokenizer.from_pretrained(chat_llama)
    model = AutoModelForCausalLM.from_pretrained(chat_llama).eval()
    prompt = "The interpreter reads"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        greedy = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=0, pad_token_id=0)
    want = tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)

    done = client.completions.create(model="lm", prompt=prompt, max_tokens=12, temperature=0)
    assert done.choices[0].text == want and done.choices[0].finish_reason in ("length", "stop")
    assert done.usage.prompt_tokens == ids.shape[1] and done.usage.completion_tokens <= 12
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="lm", prompt=prompt, max_tokens=12, temperature=0, stream=True) if c.choices)
    assert streamed == want
    if len(want) > 4:
        stop = want[2:4]
        cut = client.completions.create(model="lm", prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
        assert cut.choices[0].text == want[:want.index(stop)] and cut.choices[0].finish_reason == "stop"

    chat = client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "Hello"}],
                                          max_tokens=8, temperature=0)
    chat_ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)["input_ids"]
    assert chat.usage.prompt_tokens == chat_ids.shape[1] and chat.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="lm", messages=[{"role": "user", "content": "Hello"}],
                                                 max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens

    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=prompt)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="lm", prompt=prompt, max_tokens=5000)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="encoder", prompt=prompt)

    vectors = client.embeddings.create(model="encoder", input=SENTENCES)
    got = np.array([d.embedding for d in vectors.data], dtype=np.float32)
    np.testing.assert_allclose(got, _reference_embeddings(tiny_bert_dir, SENTENCES), atol=1e-4)


def test_metrics_count_what_was_served(server):
    import urllib.request

    text = urllib.request.urlopen(f"http://{server['http']}/metrics", timeout=10).read().decode()
    assert 'modelpress_serving_requests_total{deployment="encoder",outcome="ok",protocol="oip-grpc"}' in text
    assert "modelpress_serving_batch_size_bucket" in text


def test_the_shadow_reports_agreement_with_the_original_on_live_traffic(server):
    """The encoder's shadow is its own float original (the ONNX export agrees with it); the LM's is a
    noised copy (it disagrees): both measured on the requests the tests above sent."""
    import urllib.request

    def stats(name: str) -> dict:
        deadline = time.monotonic() + 30
        while True:
            figures = json.loads(urllib.request.urlopen(f"http://{server['http']}/v2/models/{name}/stats",
                                                        timeout=10).read())
            if figures["shadow"]["compared"] or time.monotonic() > deadline:
                return figures
            time.sleep(0.5)

    encoder = stats("encoder")
    assert encoder["shadow"]["compared"] >= 3 and encoder["shadow"]["failed"] == 0
    assert encoder["shadow"]["mean_cosine"] > 0.9999 and encoder["shadow"]["min_cosine"] > 0.999
    lm = stats("lm")
    assert lm["shadow"]["compared"] >= 1 and lm["shadow"]["positions"] >= 3
    assert lm["shadow"]["mean_kl"] > 1e-4 and 0.0 <= lm["shadow"]["next_token_agreement"] < 1.0
    assert lm["requests"]["ok"] >= 4 and lm["batch_sizes"]


def test_a_client_that_goes_away_mid_stream_frees_its_sequence(server):
    """A streamed completion whose client disconnects is cancelled at once: its KV reservation is back
    before the generation would have ended on its own."""
    import http.client
    import urllib.request

    connection = http.client.HTTPConnection(server["http"], timeout=30)
    body = json.dumps({"model": "lm", "prompt": "The interpreter reads", "max_tokens": 400, "temperature": 0.7, "seed": 1,
                       "stream": True})
    connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")

    def reserved() -> int:
        stats = json.loads(urllib.request.urlopen(f"http://{server['http']}/v2/models/lm/stats", timeout=10).read())
        return stats["kv_tokens_in_use"]

    assert reserved() > 400  # prompt + max_tokens held while it streams
    connection.close()
    deadline = time.monotonic() + 20
    while reserved():
        assert time.monotonic() < deadline, "the abandoned stream kept its KV reservation"
        time.sleep(0.2)
