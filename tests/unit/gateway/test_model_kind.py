"""What the gateway knows of a job's model before the job exists: its kind (a built-in's declared, a
path's or an artifact's config.json), and whether the optimizer workers can run a stage's engine."""

import io
import json
import tarfile

import grpc
import pytest

from modelpress.v1 import common_pb2, optimizer_pb2
from services.common.contract.chain import MethodUnavailable
from services.gateway.model_head import read_model_head
from services.gateway.validation import check_engines_available

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
BERT = {"architectures": ["BertModel"], "model_type": "bert"}


class TarStore:
    """The artifact store's read of one artifact: its tar in chunks, config.json first."""

    def __init__(self, config: dict | None, chunk: int = 512) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            files = {"model.safetensors": b"\0" * 4096}
            if config is not None:
                files = {"config.json": json.dumps(config).encode(), **files}
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        self.data, self.chunk = buffer.getvalue(), chunk

    async def iter_chunks(self, artifact_id):
        for start in range(0, len(self.data), self.chunk):
            yield self.data[start:start + self.chunk]


async def test_the_kind_comes_from_the_builtin_the_paths_config_or_the_artifacts_config(allowed_root):
    assert (await read_model_head(common_pb2.ModelRef(builtin="minilm-l6"), None)).kind == "encoder"
    assert (await read_model_head(common_pb2.ModelRef(builtin="smollm2-135m"), None)).kind == "causal-lm"
    for name, config, kind in (("llama", LLAMA, "causal-lm"), ("bert", BERT, "encoder"),
                               ("t5", {"architectures": ["T5ForConditionalGeneration"]}, None)):
        (allowed_root / name).mkdir()
        (allowed_root / name / "config.json").write_text(json.dumps(config))
        assert (await read_model_head(common_pb2.ModelRef(path=str(allowed_root / name)), None)).kind == kind
    (allowed_root / "bare").mkdir()
    assert (await read_model_head(common_pb2.ModelRef(path=str(allowed_root / "bare")), None)).kind is None
    artifact = common_pb2.ModelRef(artifact_id="a-1")
    assert (await read_model_head(artifact, TarStore(BERT))).kind == "encoder"
    assert (await read_model_head(artifact, TarStore(LLAMA))).kind == "causal-lm"
    assert (await read_model_head(artifact, TarStore(None))).kind is None  # a dataset, or a folder without a config


def engines(*available: bool):
    """ListEngines answering once per replica in turn, each replica with or without TensorRT."""
    answers = iter([common_pb2.EngineInfo(name="tensorrt", available=a, methods={"fp16": "tensorrt-fp16"},
                                          reason="" if a else "no GPU") for a in available])

    async def list_engines():
        return optimizer_pb2.OptimizerServiceListEnginesResponse(engines=[next(answers)])

    return list_engines


TENSORRT = [common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_OPTIMIZER, method="tensorrt-fp16")]


async def test_an_engine_every_replica_asked_lacks_refuses_the_stage_and_one_replica_with_it_is_enough():
    with pytest.raises(MethodUnavailable, match="tensorrt-fp16 needs the tensorrt engine, which no optimizer worker "
                                                "can run: no GPU"):
        await check_engines_available(TENSORRT, engines(False, False), calls=2)
    await check_engines_available(TENSORRT, engines(False, True), calls=2)


async def test_no_optimizer_stage_asks_nothing_and_a_replica_without_list_engines_is_not_a_refusal():
    async def never():
        raise AssertionError("asked")

    quantize = [common_pb2.StageSpec(technique=common_pb2.TECHNIQUE_QUANTIZER, method="rtn")]
    await check_engines_available(quantize, never, calls=4)

    async def unimplemented():
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata())

    await check_engines_available(TENSORRT, unimplemented, calls=4)
