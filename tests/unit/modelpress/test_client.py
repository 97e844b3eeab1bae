"""Client.upload streams the folder's tar chunk by chunk: the client's memory stays flat whatever the
model's size, what it sent is what the gateway stored, and a failure says what happened."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from modelpress import Client, DataLoss
from modelpress.folders import tar_folder
from modelpress.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

# Big enough that holding the tar (or a file) whole would show many times over, small enough for the suite
# on 2 cores; bench/upload_memory.py measures 1 GB through a real gateway.
UPLOAD_BYTES = 300 << 20
PEAK_LIMIT_MB = 200


class _Sink(gateway_pb2_grpc.GatewayServiceServicer):
    """A gateway that only hashes what it is sent (and can be told to claim another digest)."""

    def __init__(self) -> None:
        self.received: list[tuple[gateway_pb2.UploadHeader, int, str]] = []
        self.deleted: list[str] = []
        self.lie = False

    def UploadModel(self, request_iterator, context):
        header = next(request_iterator).header
        digest, size = hashlib.sha256(), 0
        for message in request_iterator:
            digest.update(message.chunk)
            size += len(message.chunk)
        self.received.append((header, size, digest.hexdigest()))
        sha = "0" * 64 if self.lie else digest.hexdigest()
        return gateway_pb2.UploadModelResponse(artifact=common_pb2.ArtifactRef(id="a-sunk", sha256=sha, size_bytes=size))

    def DeleteArtifact(self, request, context):
        self.deleted.append(request.artifact_id)
        return gateway_pb2.DeleteArtifactResponse(deleted=True)


@pytest.fixture(scope="module")
def sink():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = _Sink()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None)


def _model(folder: Path, weight_bytes: int) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertModel"]}')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    with open(folder / "model.safetensors", "wb") as weights:
        weights.truncate(weight_bytes)  # sparse on disk: read back as zeros, sent as a plain member
    return folder


def test_the_stream_is_the_folders_tar_and_its_digest_is_checked(sink, tmp_path):
    servicer, target = sink
    folder = _model(tmp_path / "model", 3 << 20)
    seen: list[tuple[int, int]] = []
    with Client(target) as client:
        ref = client.upload(folder, progress=lambda sent, total: seen.append((sent, total)))
    tar_folder(folder, tmp_path / "model.tar")
    expected = (tmp_path / "model.tar").read_bytes()
    header, size, sha = servicer.received[-1]
    assert (header.name, size, sha) == ("model", len(expected), hashlib.sha256(expected).hexdigest())
    assert ref.sha256 == sha and not header.sha256  # the digest is known only once it is all sent
    assert seen[-1] == (len(expected), len(expected)) and len(seen) == -(-len(expected) // (1 << 20))
    with tarfile.open(tmp_path / "model.tar") as tar:
        assert [m.name for m in tar] == ["1_Pooling/config.json", "config.json", "model.safetensors"]


def test_a_digest_the_gateway_did_not_receive_is_data_loss_and_the_artifact_goes(sink, tmp_path):
    servicer, target = sink
    folder = _model(tmp_path / "model", 1 << 10)
    servicer.lie = True
    try:
        with Client(target) as client, pytest.raises(DataLoss, match="the gateway stored sha256 0000"):
            client.upload(folder)
    finally:
        servicer.lie = False
    assert servicer.deleted == ["a-sunk"]


def test_a_file_that_changes_while_read_is_named_not_a_cancelled_call(sink, tmp_path, monkeypatch):
    _, target = sink
    folder = _model(tmp_path / "model", 2 << 20)
    real_open = open

    def growing_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("model.safetensors") and "b" in mode:
            with real_open(path, "ab") as grow:
                grow.write(b"more")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", growing_open)
    with Client(target) as client, pytest.raises(OSError, match="model.safetensors: changed size"):
        client.upload(folder)


MEASURE = """
import sys
from modelpress import Client

def kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

with Client(sys.argv[1]) as client:
    baseline = kb("VmRSS:")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS: the peak below is the upload's
    ref = client.upload(sys.argv[2])
    print(ref.size_bytes, (kb("VmHWM:") - baseline) / 1024)
"""


def test_uploading_hundreds_of_megabytes_keeps_the_clients_peak_memory_flat(sink, tmp_path):
    _, target = sink
    folder = _model(tmp_path / "model", UPLOAD_BYTES)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    done = subprocess.run([sys.executable, "-c", MEASURE, target, str(folder)], check=False, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    size, peak_mb = done.stdout.split()
    assert int(size) > UPLOAD_BYTES
    assert float(peak_mb) < PEAK_LIMIT_MB, f"the upload's peak RSS grew {peak_mb} MB"



def test_a_model_argument_is_uploaded_when_it_is_a_folder_here_and_names_no_scheme(tmp_path, monkeypatch):
    from modelpress.client import local_model_folder

    (tmp_path / "my-model").mkdir()
    (tmp_path / "a-folder").mkdir()
    monkeypatch.chdir(tmp_path)
    for text in ("./my-model", "my-model", str(tmp_path / "my-model")):
        assert local_model_folder(text).resolve() == (tmp_path / "my-model").resolve(), text
    # Written with a scheme, or as an artifact id, it is the mesh's to read; no folder here, nothing to upload.
    for text in (f"path:{tmp_path / 'my-model'}", "builtin:minilm-l6", "artifact:a-x", "a-folder", "./not-here",
                 "/srv/models/on-the-mesh"):
        assert local_model_folder(text) is None, text
