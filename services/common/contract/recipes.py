"""Recipes: a pipeline as data, a list of named stages (technique, method, default config, gate).

A client picks a built-in by name or sends its own stages (CreateJob's `pipeline`, or YAML/JSON
through the CLI); overrides address a stage by name (validated in chain.py against the services'
Describe). An evaluate stage (technique evaluator, method "evaluate") measures the stage's input
against the job's model and may carry a gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelpress.pipelines import PipelineError, pipeline_data, pipeline_message, stage_data
from modelpress.structs import StructError, from_struct, to_struct
from modelpress.v1 import common_pb2, gateway_pb2
from services.common.contract.model_kinds import CAUSAL_LM, ENCODER
from services.common.measure.isa import isa_class, support
from services.common.contract.techniques import TECHNIQUE_SERVICES

EVALUATE = "evaluate"


@dataclass(frozen=True)
class RecipeStage:
    technique: int
    method: str
    config: dict[str, Any] = field(default_factory=dict)
    # What overrides call the stage (`--set NAME.field=value`); default: its method's name.
    name: str = ""
    gate: str = ""  # evaluate stages only (see gates.py)

    @property
    def label(self) -> str:
        return self.name or self.method

    @property
    def evaluates(self) -> bool:
        return self.technique == common_pb2.TECHNIQUE_EVALUATOR

    def message(self) -> common_pb2.StageSpec:
        return common_pb2.StageSpec(technique=self.technique, method=self.method, config=to_struct(self.config),
                                    name=self.name, gate=self.gate)

    def data(self) -> dict[str, Any]:
        """The stage as a pipeline file holds it (modelpress.pipelines writes every pipeline file)."""
        return stage_data(self.message())


@dataclass(frozen=True)
class RecipeDef:
    name: str
    summary: str
    stages: tuple[RecipeStage, ...]
    # The arithmetic the result runs in (fp32, bf16, f16, int8; "auto": chosen on the worker for its
    # CPU): a recipe whose compute a CPU would emulate is never recommended for it.
    compute: str = "fp32"
    # Built-ins only (ListStrategies shows them): where the result suits (SCENARIOS) and what runs it.
    scenario: str = ""
    hardware: tuple[str, ...] = ()
    # Built-ins only: the runtimes that load the result (RUNTIMES, the first the one it is made for), the
    # data it uses (DATA: none, calibration text, or training), and its rough cost on a ~100 M-parameter
    # model on 2 CPU cores (COSTS). Recommendations and searches choose by these.
    runtimes: tuple[str, ...] = ()
    uses_data: str = ""
    cost: str = ""

    def emulated_on(self, features) -> str:
        """Why a CPU with these ISA features would emulate this recipe's compute ("" if it would not)."""
        if self.compute == "auto":  # resolved on the worker to a precision its CPU accelerates
            return ""
        here = support(self.compute, features)
        return f"{here.precision} compute on an {isa_class(features)} CPU: {here.note}" if here.emulated else ""

    @property
    def faster_on_cpu(self) -> bool:
        """Its result serves faster on a CPU: a CPU engine's, or a cast whose compute is not FP32 (whether this
        CPU runs that compute natively is emulated_on's question). Weight-only quantizers compute in FP32
        there: smaller, not faster."""
        return bool(self.runtimes) and (self.runtimes[0] in CPU_ENGINES or (
            self.runtimes[0] == "transformers" and self.compute != "fp32"))

    def message(self) -> gateway_pb2.Recipe:
        return gateway_pb2.Recipe(name=self.name, summary=self.summary, stages=[s.message() for s in self.stages],
                                  runtimes=self.runtimes, data=self.uses_data, cost=self.cost,
                                  compute=self.compute if self.runtimes else "")

    def data(self) -> dict[str, Any]:
        """The recipe as a pipeline file holds it (what `--pipeline FILE` reads back)."""
        return pipeline_data(self.message())


SCENARIOS = ("cloud", "edge", "mobile")
COMPUTES = ("fp32", "bf16", "f16", "int8", "auto")
RUNTIMES = ("transformers", "vllm", "onnxruntime", "openvino", "llama.cpp", "tensorrt")
# Runtimes that serve on a CPU with their own kernels (fusions, INT8/bf16 compute): what CPU serving picks from.
CPU_ENGINES = ("onnxruntime", "openvino")
# The runtimes whose results the mesh's serving replicas serve, by model kind (services/serving): causal LMs
# through the continuous batcher's PyTorch and ONNX decoders or llama.cpp, not OpenVINO (its causal IR keeps
# the KV cache inside the infer request, which a shared batch cannot split; serving/generation.py's REFUSED).
SERVED_RUNTIMES = {ENCODER: ("transformers", "onnxruntime", "openvino"),
                   CAUSAL_LM: ("transformers", "onnxruntime", "llama.cpp")}
DATA = ("none", "calibration", "training")
COSTS = ("seconds", "minutes", "tens of minutes")


class IncompleteRecipe(ValueError):
    """A built-in recipe without something its listing needs; raised at import, never defaulted."""


def builtin(name: str, summary: str, stages: tuple[RecipeStage, ...], *, scenario: str, hardware: tuple[str, ...],
            compute: str, runtimes: tuple[str, ...], uses_data: str, cost: str) -> RecipeDef:
    """A built-in recipe. What its listing shows besides the stages (scenario, hardware, compute) is
    declared here with it, every part required: a recipe that lacks one fails at import."""
    problems = []
    if not summary:
        problems.append("summary: required")
    if not stages:
        problems.append("stages: at least one")
    if scenario not in SCENARIOS:
        problems.append(f"scenario: {scenario!r} is not one of {', '.join(SCENARIOS)}")
    if not hardware or not all(hardware):
        problems.append("hardware: name at least one target that runs the result")
    if compute not in COMPUTES:
        problems.append(f"compute: {compute!r} is not one of {', '.join(COMPUTES)}")
    if not runtimes or not set(runtimes) <= set(RUNTIMES):
        problems.append(f"runtimes: name at least one of {', '.join(RUNTIMES)}")
    if uses_data not in DATA:
        problems.append(f"uses_data: {uses_data!r} is not one of {', '.join(DATA)}")
    if cost not in COSTS:
        problems.append(f"cost: {cost!r} is not one of {', '.join(COSTS)}")
    if problems:
        raise IncompleteRecipe(f"built-in recipe {name!r}: {'; '.join(problems)}")
    return RecipeDef(name, summary, stages, compute=compute, scenario=scenario, hardware=tuple(hardware),
                     runtimes=tuple(runtimes), uses_data=uses_data, cost=cost)


Q = common_pb2.TECHNIQUE_QUANTIZER
O = common_pb2.TECHNIQUE_OPTIMIZER
P = common_pb2.TECHNIQUE_PRUNER
D = common_pb2.TECHNIQUE_DISTILLER
# Structured cuts heal with a short fine-tune against the unpruned input; the distiller is the longer one.
RECOVERY = {"recovery_minutes": 3.0}
# Block-wise QAT, then the end-to-end scale phase on 30 steps of 8 x 256 calibration tokens (most of the
# built-in calibration split once).
KD_QAT = {"steps_per_block": 150, "end_to_end_tokens": 61_440}

RECIPES: dict[str, RecipeDef] = {
    r.name: r
    for r in (
        builtin("fp16", "Half-precision weights (2x smaller than FP32)", (RecipeStage(Q, "fp16"),),
                scenario="cloud", hardware=("cuda", "cpu with avx512_fp16 or amx", "apple mps"), compute="f16",
                runtimes=("transformers", "vllm"), uses_data="none", cost="seconds"),
        builtin("bf16", "bfloat16 weights (2x smaller than FP32, FP32's range)", (RecipeStage(Q, "bf16"),),
                scenario="cloud", hardware=("cuda (ampere and newer)", "cpu with avx512_bf16 or amx"), compute="bf16",
                runtimes=("transformers", "vllm"), uses_data="none", cost="seconds"),
        builtin("int8-weight-only",
                "INT8 Linear weights per output channel; embeddings and LM head stay float "
                "(compressed-tensors as llm-compressor writes it: vLLM and transformers load it)",
                (RecipeStage(Q, "rtn", {"bits": 8, "group_size": 0}),),
                scenario="edge", hardware=("cpu", "cuda", "vllm (compressed-tensors)"), compute="fp32",
                runtimes=("vllm", "transformers"), uses_data="none", cost="seconds"),
        builtin("int8-compact",
                "INT8 weights per output channel, embeddings and LM head included (smaller than "
                "int8-weight-only; per-module targets: loads in transformers, not vLLM)",
                (RecipeStage(Q, "rtn", {"bits": 8, "group_size": 0, "embedding_bits": 8, "head_bits": 8}),),
                scenario="edge", hardware=("cpu", "transformers (compressed-tensors)"), compute="fp32",
                runtimes=("transformers",), uses_data="none", cost="seconds"),
        builtin("w8a8-dynamic", "INT8 weights (GPTQ) and INT8 activations with per-token scales at run time",
                (RecipeStage(Q, "w8a8", {"activations": "dynamic"}),),
                scenario="cloud", hardware=("cuda with int8 tensor cores (vllm)", "cpu with vnni via onnx/openvino"), compute="int8",
                runtimes=("vllm",), uses_data="calibration", cost="minutes"),
        builtin("w8a8-static", "SmoothQuant, then INT8 weights (GPTQ) and INT8 activations with per-tensor scales "
                "fixed from calibration (without smoothing, static scales cost +147 % ppl on SmolLM2)",
                (RecipeStage(Q, "smoothquant", {"activations": "static"}),),
                scenario="edge", hardware=("cuda with int8 tensor cores (vllm)", "npu / int8 accelerators"), compute="int8",
                runtimes=("vllm",), uses_data="calibration", cost="minutes"),
        builtin("w8a8-smoothquant",
                "SmoothQuant (alpha searched per layer group), then INT8 weights and per-token INT8 activations",
                (RecipeStage(Q, "smoothquant", {"activations": "dynamic"}),),
                scenario="cloud", hardware=("cuda with int8 tensor cores (vllm)",), compute="int8",
                runtimes=("vllm",), uses_data="calibration", cost="minutes"),
        builtin("w4a16-rtn", "INT4 Linear weights, group 64, round-to-nearest; embeddings and head float "
                "(vLLM layout)", (RecipeStage(Q, "rtn", {"bits": 4, "group_size": 64}),),
                scenario="mobile", hardware=("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)"), compute="fp32",
                runtimes=("vllm", "transformers"), uses_data="none", cost="seconds"),
        builtin("w4a16-gptq",
                "INT4 Linear weights, group 64, GPTQ on calibration text; embeddings and head float (vLLM layout)",
                (RecipeStage(Q, "gptq", {"bits": 4, "group_size": 64}),),
                scenario="edge", hardware=("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)"), compute="fp32",
                runtimes=("vllm", "transformers"), uses_data="calibration", cost="minutes"),
        builtin("w4a16-gptq-compact",
                "INT4 GPTQ Linear weights, group 64, with INT8 embeddings and head (smaller than w4a16-gptq; "
                "per-module targets: loads in transformers, not vLLM)",
                (RecipeStage(Q, "gptq", {"bits": 4, "group_size": 64, "embedding_bits": 8, "head_bits": 8}),),
                scenario="mobile", hardware=("transformers (compressed-tensors)", "cpu after export"), compute="fp32",
                runtimes=("transformers",), uses_data="calibration", cost="minutes"),
        builtin("w4a16-awq",
                "INT4 Linear weights, group 64, AWQ scale and clipping search; embeddings and head float "
                "(vLLM layout)", (RecipeStage(Q, "awq", {"bits": 4, "group_size": 64}),),
                scenario="edge", hardware=("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)"), compute="fp32",
                runtimes=("vllm", "transformers"), uses_data="calibration", cost="minutes"),
        builtin("w4a16-qat",
                "INT4 Linear weights, group 64: AWQ grid, then quantization-aware fine-tuning of each block",
                (RecipeStage(Q, "qat", {"bits": 4, "group_size": 64}),),
                scenario="mobile", hardware=("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)"), compute="fp32",
                runtimes=("vllm", "transformers"), uses_data="training", cost="tens of minutes"),
        builtin("w4a16-qat-compact4",
                "INT4 everywhere: block-wise QAT on AWQ's grid for the Linears, and the tied embedding/head at 4 bits "
                "rounded by GPTQ on the head's inputs (about 4.26 bits per weight, everything stored counted; "
                "transformers dequantizes it at load)",
                (RecipeStage(Q, "qat", {"bits": 4, "group_size": 64, "embedding_bits": 4, "head_bits": 4,
                                        "steps_per_block": 150}),),
                scenario="mobile", hardware=("cpu after export (onnx-int4 keeps its codes)", "transformers"),
                compute="fp32", runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("w4a16-kd-qat",
                "INT4 Linear weights, group 64: block-wise QAT on AWQ's grid, then every group scale tuned end to end "
                "against the float model's next-token distribution, codes fixed; embeddings and head float "
                "(vLLM layout)",
                (RecipeStage(Q, "qat", {"bits": 4, "group_size": 64, **KD_QAT}),),
                scenario="edge", hardware=("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)"),
                compute="fp32", runtimes=("vllm", "transformers"), uses_data="training", cost="tens of minutes"),
        builtin("w4a16-kd-qat-compact4",
                "INT4 everywhere: w4a16-kd-qat with the tied embedding/head at 4 bits, its scales tuned end to end "
                "with the rest (about 4.26 bits per weight, everything stored counted; transformers dequantizes it "
                "at load)",
                (RecipeStage(Q, "qat", {"bits": 4, "group_size": 64, "embedding_bits": 4, "head_bits": 4,
                                        **KD_QAT}),),
                scenario="mobile", hardware=("cpu after export (onnx-int4 keeps its codes)", "transformers"),
                compute="fp32", runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("w4a16-autoround",
                "INT4 Linear weights, group 64: learned rounding (AutoRound's signed-gradient offsets and scale gains) "
                "on AWQ's grid, block by block; embeddings and head float (vLLM layout)",
                (RecipeStage(Q, "autoround", {"bits": 4, "group_size": 64}),),
                scenario="edge", hardware=("cuda (marlin kernels in vllm)", "cpu after export (gguf, openvino)"),
                compute="fp32", runtimes=("vllm", "transformers"), uses_data="calibration", cost="tens of minutes"),
        builtin("w4a16-mixed",
                "INT4 GPTQ with the most sensitive Linears at INT8, 4.5 bits per Linear weight on average "
                "(per-module targets, one group per width)",
                (RecipeStage(Q, "mixed-precision", {"bits": 4, "group_size": 64, "average_bits": 4.5}),),
                scenario="edge", hardware=("cuda (vllm)", "cpu after export"), compute="fp32",
                runtimes=("vllm", "transformers"), uses_data="calibration", cost="minutes"),
        builtin("w8a16-gptq", "INT8 Linear weights per channel with GPTQ; embeddings and head float (vLLM layout)",
                (RecipeStage(Q, "gptq", {"bits": 8, "group_size": 0}),),
                scenario="cloud", hardware=("cuda (vllm)", "cpu"), compute="fp32",
                runtimes=("vllm", "transformers"), uses_data="calibration", cost="minutes"),
        builtin("onnx", "ONNX export with ONNX Runtime's transformer fusions (FP32)", (RecipeStage(O, "onnx"),),
                scenario="edge", hardware=("cpu (onnxruntime)",), compute="fp32",
                runtimes=("onnxruntime",), uses_data="none", cost="seconds"),
        builtin("onnx-int8", "ONNX export, fusions, INT8 weights per channel and dynamic INT8 activations "
                "(ONNX Runtime)", (RecipeStage(O, "onnx-int8"),),
                scenario="edge", hardware=("cpu, fastest with vnni (onnxruntime)",), compute="int8",
                runtimes=("onnxruntime",), uses_data="none", cost="seconds"),
        builtin("onnx-int4", "ONNX export, fusions, 4-bit blockwise weights (MatMulNBits, ONNX Runtime)",
                (RecipeStage(O, "onnx-int4"),),
                scenario="edge", hardware=("cpu (onnxruntime, MatMulNBits)",), compute="fp32",
                runtimes=("onnxruntime",), uses_data="none", cost="seconds"),
        builtin("onnx-mixed-6", "ONNX export, then 4- or 8-bit blockwise weights per layer by sensitivity measured "
                "on calibration text, 6 bits on average (MatMulNBits, ONNX Runtime)",
                (RecipeStage(O, "onnx-mixed", {"average_bits": 6.0}),),
                scenario="edge", hardware=("cpu (onnxruntime, MatMulNBits)",), compute="int8",
                runtimes=("onnxruntime",), uses_data="calibration", cost="minutes"),
        builtin("openvino", "OpenVINO IR, FP32 with the precision hint pinned; causal LMs keep their KV cache "
                "in the request (stateful)", (RecipeStage(O, "openvino"),),
                scenario="edge", hardware=("cpu (openvino)",), compute="fp32",
                runtimes=("openvino",), uses_data="none", cost="seconds"),
        builtin("openvino-int8", "OpenVINO IR with NNCF INT8 weights per channel",
                (RecipeStage(O, "openvino-int8"),),
                scenario="edge", hardware=("cpu (openvino)",), compute="fp32",
                runtimes=("openvino",), uses_data="none", cost="seconds"),
        builtin("openvino-int4", "OpenVINO IR with NNCF INT4 weights (group 128, shrunk where it does not "
                "divide), AWQ and scale estimation on 32 calibration windows",
                (RecipeStage(O, "openvino-int4", {"data_aware": True, "calibration_samples": 32}),),
                scenario="edge", hardware=("cpu (openvino)",), compute="fp32",
                runtimes=("openvino",), uses_data="calibration", cost="minutes"),
        builtin("openvino-bf16", "OpenVINO IR computing in bf16 (native with AVX512-BF16 or AMX-BF16; on other CPUs "
                "the stage notes what the plugin ran instead)", (RecipeStage(O, "openvino", {"inference_precision": "bf16"}),),
                scenario="cloud", hardware=("cpu with amx_bf16 or avx512_bf16 (openvino)",), compute="bf16",
                runtimes=("openvino",), uses_data="none", cost="seconds"),
        builtin("openvino-int8-bf16", "OpenVINO IR with NNCF INT8 weights per channel, computing in bf16",
                (RecipeStage(O, "openvino-int8", {"inference_precision": "bf16"}),),
                scenario="edge", hardware=("cpu with amx_bf16 or avx512_bf16 (openvino)",), compute="bf16",
                runtimes=("openvino",), uses_data="none", cost="seconds"),
        builtin("openvino-f16", "OpenVINO IR computing in f16 (native with AVX512-FP16 or AMX-FP16; elsewhere the "
                "stage notes what the plugin ran: bf16 on an AVX512-BF16 CPU)",
                (RecipeStage(O, "openvino", {"inference_precision": "f16"}),),
                scenario="cloud", hardware=("cpu with avx512_fp16 or amx_fp16 (openvino)",), compute="f16",
                runtimes=("openvino",), uses_data="none", cost="seconds"),
        builtin("fastest-cpu", "The engine recipe measured fastest at kept quality for the model's kind on the "
                "evaluator's CPU class (a short search the first time a class is asked for, stored for the next "
                "jobs); the stage says what it ran", (RecipeStage(O, "fastest-cpu"),),
                scenario="edge", hardware=("cpu of the evaluator's isa class (onnxruntime or openvino)",), compute="auto",
                runtimes=("onnxruntime", "openvino"), uses_data="none", cost="seconds"),
        builtin("gguf-f16", "GGUF for llama.cpp with F16 weights", (RecipeStage(O, "gguf-f16"),),
                scenario="edge", hardware=("cpu or gpu (llama.cpp)",), compute="fp32",
                runtimes=("llama.cpp",), uses_data="none", cost="seconds"),
        builtin("gguf-q8_0", "GGUF for llama.cpp with Q8_0 weights", (RecipeStage(O, "gguf-q8_0"),),
                scenario="edge", hardware=("cpu or gpu (llama.cpp)",), compute="int8",
                runtimes=("llama.cpp",), uses_data="none", cost="seconds"),
        builtin("gguf-q4", "GGUF for llama.cpp with Q4_1 weights", (RecipeStage(O, "gguf-q4"),),
                scenario="mobile", hardware=("cpu, apple silicon or phone (llama.cpp)",), compute="int8",
                runtimes=("llama.cpp",), uses_data="none", cost="seconds"),
        # Composites: an activation-aware transform on the quantizer, the engine's own quantizer after it.
        builtin("awq-onnx-int4", "AWQ scales searched for ONNX Runtime's 4-bit blocks of 32 and "
                "folded into the float model (quantizer), then ONNX export with 4-bit MatMulNBits (optimizer)",
                (RecipeStage(Q, "awq-transform", {"bits": 4, "group_size": 32, "symmetric": True}, "transform"),
                 RecipeStage(O, "onnx-int4", {"group_size": 32, "symmetric": True}, "export")),
                scenario="edge", hardware=("cpu (onnxruntime, MatMulNBits)",), compute="fp32",
                runtimes=("onnxruntime",), uses_data="calibration", cost="minutes"),
        builtin("qat-onnx-int4", "INT4 everywhere by block-wise QAT (w4a16-qat-compact4, quantizer), then ONNX "
                "export keeping those codes in MatMulNBits and a 4-bit GatherBlockQuantized (optimizer)",
                (RecipeStage(Q, "qat", {"bits": 4, "group_size": 64, "embedding_bits": 4, "head_bits": 4,
                                        "steps_per_block": 150}, "quantize"),
                 RecipeStage(O, "onnx-int4", {}, "export")),
                scenario="edge", hardware=("cpu (onnxruntime, MatMulNBits)",), compute="fp32",
                runtimes=("onnxruntime",), uses_data="training", cost="tens of minutes"),
        builtin("awq-gguf-q4", "AWQ scales searched for GGUF Q4_1 (32 weights, scale and minimum) "
                "and folded in (quantizer), then GGUF Q4_1 for llama.cpp (optimizer)",
                (RecipeStage(Q, "awq-transform", {"bits": 4, "group_size": 32, "symmetric": False}, "transform"),
                 RecipeStage(O, "gguf-q4", {"type": "q4_1"}, "export")),
                scenario="mobile", hardware=("cpu, apple silicon or phone (llama.cpp)",), compute="int8",
                runtimes=("llama.cpp",), uses_data="calibration", cost="minutes"),
        builtin("awq-openvino-int4", "AWQ scales searched for NNCF's symmetric INT4 groups of 128 "
                "and folded in (quantizer), then OpenVINO IR with data-free NNCF INT4 (optimizer)",
                (RecipeStage(Q, "awq-transform", {"bits": 4, "group_size": 128, "symmetric": True}, "transform"),
                 RecipeStage(O, "openvino-int4", {"group_size": 128, "symmetric": True, "data_aware": False},
                             "export")),
                scenario="edge", hardware=("cpu (openvino)",), compute="fp32",
                runtimes=("openvino",), uses_data="calibration", cost="minutes"),
        builtin("smoothquant-onnx-int8", "SmoothQuant scales searched for per-tensor dynamic INT8 activations "
                "and folded in (quantizer), then ONNX Runtime INT8 weights and dynamic INT8 activations (optimizer)",
                (RecipeStage(Q, "smoothquant-transform", {"activations": "dynamic-per-tensor"}, "transform"),
                 RecipeStage(O, "onnx-int8", {"causal_lm_activations": "dynamic-int8"}, "export")),
                scenario="edge", hardware=("cpu, fastest with vnni (onnxruntime)",), compute="int8",
                runtimes=("onnxruntime",), uses_data="calibration", cost="minutes"),
        # Pruning: dense-zero outputs (unstructured, N:M) and smaller models (structured) in float,
        # for any later stage.
        builtin("prune-magnitude-50", "Half of every block Linear's weights zeroed by |w|, per layer; no data",
                (RecipeStage(P, "magnitude", {"sparsity": 0.5}, "prune"),),
                scenario="edge", hardware=("any (dense zeros: smaller once compressed or quantized, faster on sparse kernels)",), compute="fp32",
                runtimes=("transformers",), uses_data="none", cost="seconds"),
        builtin("prune-wanda-50", "Half of every block Linear's weights zeroed by Wanda (|w|·‖x‖ per row)",
                (RecipeStage(P, "wanda", {"sparsity": 0.5}, "prune"),),
                scenario="edge", hardware=("any (dense zeros: smaller once compressed or quantized, faster on sparse kernels)",), compute="fp32",
                runtimes=("transformers",), uses_data="calibration", cost="minutes"),
        builtin("prune-sparsegpt-50", "Half of every block Linear's weights zeroed by SparseGPT (OBS masks "
                "and updates from the layer Hessian)", (RecipeStage(P, "sparsegpt", {"sparsity": 0.5}, "prune"),),
                scenario="edge", hardware=("any (dense zeros: smaller once compressed or quantized, faster on sparse kernels)",), compute="fp32",
                runtimes=("transformers",), uses_data="calibration", cost="minutes"),
        builtin("prune-2of4", "2:4 semi-structured sparsity by SparseGPT (2 of every 4 inputs of a row kept)",
                (RecipeStage(P, "sparsegpt", {"structure": "2:4"}, "prune"),),
                scenario="cloud", hardware=("cuda with 2:4 sparse tensor cores (ampere and newer)",), compute="fp32",
                runtimes=("transformers",), uses_data="calibration", cost="minutes"),
        builtin("prune-mlp", "A quarter of every block's MLP neurons removed (activation-aware), then a "
                "3-minute recovery against the original; a smaller model stock transformers reloads",
                (RecipeStage(P, "mlp-neurons", {"mlp_keep": 0.75, **RECOVERY}, "prune"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="minutes"),
        builtin("prune-layers", "A quarter of the blocks removed (those changing their input least), then a "
                "3-minute recovery", (RecipeStage(P, "layers", {"layers_keep_share": 0.75, **RECOVERY}, "prune"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="minutes"),
        builtin("prune-heads", "A third of the attention heads removed from every block (whole KV groups; "
                "decoders whose config carries the head size), then a 3-minute recovery",
                (RecipeStage(P, "heads", {"heads_keep": 0.67, **RECOVERY}, "prune"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="minutes"),
        builtin("prune-structured-50", "FLOPs halved: layers for half the cut, MLP neurons for the rest, then a "
                "3-minute recovery", (RecipeStage(P, "structured", {"target_flops": 0.5, **RECOVERY}, "prune"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="minutes"),
        builtin("prune-structured-25", "FLOPs cut by a quarter: layers for half the cut, MLP neurons for the "
                "rest, then a 3-minute recovery",
                (RecipeStage(P, "structured", {"target_flops": 0.75, **RECOVERY}, "prune"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="minutes"),
        # Distillation: students built from their teachers, or a compressed model healed by its original.
        builtin("distill-response", "A student with half the teacher's blocks learns its outputs (logit KL on "
                "cached top-k logits, or the pooled sentence embedding), 10 minutes",
                (RecipeStage(D, "distill-response", {"student_layers_share": 0.5}, "distill"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("distill-feature", "A student with half the blocks learns outputs and hidden states of the "
                "matched blocks, 10 minutes", (RecipeStage(D, "distill-feature", {"student_layers_share": 0.5},
                                                             "distill"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("distill-attention", "A student with half the blocks learns outputs and the last block's "
                "attention (distributions or MiniLMv2 relations), 10 minutes",
                (RecipeStage(D, "distill-attention", {"student_layers_share": 0.5}, "distill"),),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("distill-self", "The input learns from the job's original model (after a compression: its "
                "recovery), 10 minutes", (RecipeStage(D, "distill-self", {}, "distill"),),
                scenario="cloud", hardware=("any: the input's shape, its quality recovered (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        # Half the blocks alone leave half the FLOPs, and the embedding lookup costs little: MLP 1024 of
        # 1536 is what takes the student past 2x in PyTorch eager. 15 minutes: 30 core-minutes on 2 cores.
        builtin("minilm-small", "An encoder student with half the blocks, two thirds of the MLP width and its "
                "token table factorized to rank 128, every token kept (MiniLM: over 60 % fewer parameters, the "
                "teacher's tokenizer), learning the pooled embedding for 15 minutes on the calibration text and 8 copies "
                "of it with 30 % of the tokens swapped for other words of the vocabulary",
                (RecipeStage(D, "distill-response", {"student_layers_share": 0.5, "student_mlp_width": 1024,
                                                     "vocabulary": "factorized", "embedding_rank": 128,
                                                     "max_minutes": 15.0, "calibration_samples": 5000,
                                                     "augment_copies": 8, "augment_share": 0.3,
                                                     "batch_size": 32, "learning_rate": 5e-4}, "distill"),),
                scenario="mobile", hardware=("cpu (transformers, or onnx after export)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("minilm-edge", "FLOPs halved by structured pruning, healed by distillation from the original, "
                "then ONNX Runtime INT8", (
                    RecipeStage(P, "structured", {"target_flops": 0.5}, "prune"),
                    RecipeStage(D, "distill-self", {"max_minutes": 15.0, "calibration_samples": 5000,
                                                    "batch_size": 32, "learning_rate": 2e-4}, "distill"),
                    RecipeStage(O, "onnx-int8", {}, "export")),
                scenario="edge", hardware=("cpu, fastest with vnni (onnxruntime)",), compute="int8",
                runtimes=("onnxruntime",), uses_data="training", cost="tens of minutes"),
        builtin("smollm2-shallow", "A quarter of the blocks removed (those changing their input least), healed "
                "by logit distillation from the original on cached top-k logits for 25 minutes", (
                    RecipeStage(P, "layers", {"layers_keep_share": 0.75}, "prune"),
                    RecipeStage(D, "distill-self", {"max_minutes": 25.0, "calibration_sequence_length": 256,
                                                    "batch_size": 8}, "distill")),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("smollm2-small", "A quarter of the FLOPs removed from every MLP's width (each down projection "
                "refitted by least squares on calibration activations), healed by logit distillation from the "
                "original on cached top-k logits at temperature 1, up to 300k tokens or 30 minutes", (
                    RecipeStage(P, "structured", {"target_flops": 0.0, "mlp_keep": 0.5625, "reconstruct": True,
                                                  "calibration_samples": 128, "calibration_sequence_length": 256},
                                "prune"),
                    # A student this close to its teacher: at T = 2 on the top-64 logits its validation
                    # perplexity rose within 10 steps at every learning rate tried (1e-5, 3e-5, 1e-4); at
                    # T = 1 it fell at every validation (constant 2e-5; now a cosine from 5e-5 over the tokens).
                    RecipeStage(D, "distill-self", {"max_minutes": 30.0, "max_tokens": 300_000,
                                                    "calibration_samples": 1024, "calibration_sequence_length": 256,
                                                    "batch_size": 8, "temperature": 1.0, "learning_rate": 5e-5},
                                "distill")),
                scenario="edge", hardware=("any: a smaller model of the same class (transformers)",), compute="fp32",
                runtimes=("transformers",), uses_data="training", cost="tens of minutes"),
        builtin("tensorrt-fp16", "TensorRT FP16 engine from the ONNX export (NVIDIA GPU workers only)",
                (RecipeStage(O, "tensorrt-fp16"),),
                scenario="cloud", hardware=("nvidia gpu with tensorrt",), compute="f16",
                runtimes=("tensorrt",), uses_data="none", cost="minutes"),
    )
}


# What fastest-cpu chooses among: built-ins of one optimizer stage that a CPU engine serves, data-free, with a
# compute fixed in advance. The gateway's search measures them on the worker's CPU (search/fastest.py).
ENGINE_CHOICES = tuple(name for name, r in RECIPES.items()
                       if len(r.stages) == 1 and r.stages[0].technique == O and r.faster_on_cpu
                       and r.uses_data == "none" and r.compute != "auto")


class UnknownRecipe(KeyError):
    pass


class InvalidPipeline(ValueError):
    """A pipeline given as data or as a message that is malformed; the message names the place."""


MAX_STAGES = 16


def pipeline_from_data(data: Any, default_name: str = "pipeline") -> RecipeDef:
    """A RecipeDef from a pipeline file's contents: {name?, summary?, stages: [{name?, technique,
    method, config?, gate?}, ...]} (or the bare list of stages). The shape is read as every pipeline
    file is (modelpress.pipelines.pipeline_message), then checked as a request's pipeline is."""
    try:
        message = pipeline_message(data)
    except PipelineError as exc:
        raise InvalidPipeline(str(exc)) from None
    return pipeline_from_message(message, default_name)


def pipeline_from_message(message: common_pb2.Pipeline, default_name: str = "pipeline") -> RecipeDef:
    """A RecipeDef from a Pipeline message (a request's, or a file's as modelpress.pipelines reads
    it): every stage names a technique and a method, has a name of its own without '.', and a config
    the codec can read. Methods, config values and gates are checked against the services by chain.py."""
    if not message.stages:
        raise InvalidPipeline("pipeline.stages: a non-empty list of stages is required")
    if len(message.stages) > MAX_STAGES:
        raise InvalidPipeline(f"pipeline.stages: at most {MAX_STAGES} stages, got {len(message.stages)}")
    stages = [_stage_from_message(index, spec) for index, spec in enumerate(message.stages)]
    labels = [s.label for s in stages]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise InvalidPipeline(f"pipeline.stages: stage names must differ; {', '.join(repeated)} repeats (set 'name')")
    return RecipeDef(message.name or default_name, message.summary, tuple(stages),
                     compute=_compute_of(stages))


def _stage_from_message(index: int, spec: common_pb2.StageSpec) -> RecipeStage:
    where = f"stages[{index}]"
    if spec.technique not in TECHNIQUE_SERVICES:
        raise InvalidPipeline(f"{where}.technique: {spec.technique} is not one of "
                              f"{', '.join(f'{v} ({n})' for v, n in TECHNIQUE_SERVICES.items())}")
    method = spec.method or (EVALUATE if spec.technique == common_pb2.TECHNIQUE_EVALUATOR else "")
    if not method:
        raise InvalidPipeline(f"{where}.method: required (a method name from ListMethods)")
    if "." in spec.name:
        raise InvalidPipeline(f"{where}.name: {spec.name!r} must be a string without '.' "
                              f"(overrides use NAME.field)")
    try:
        config = from_struct(spec.config)
    except StructError as exc:
        raise InvalidPipeline(f"pipeline.{where}.config.{exc}") from None
    # A name equal to the method's is the default one: stored empty, as built-ins hold it.
    return RecipeStage(spec.technique, method, config, "" if spec.name == method else spec.name, spec.gate)


def _compute_of(stages: list[RecipeStage]) -> str:
    """A user pipeline computes as its last engine stage does: as the one-stage built-in with the
    same method whose config it contains (the most specific such), else fp32."""
    last = next((s for s in reversed(stages) if not s.evaluates), None)
    if last is None:
        return "fp32"
    fitting = [r for r in RECIPES.values() if len(r.stages) == 1 and r.stages[0].method == last.method
               and r.stages[0].technique == last.technique
               and all(last.config.get(k) == v for k, v in r.stages[0].config.items())]
    return max(fitting, key=lambda r: len(r.stages[0].config)).compute if fitting else "fp32"


def get_recipe(name: str) -> RecipeDef:
    try:
        return RECIPES[name]
    except KeyError:
        raise UnknownRecipe(f"recipe: unknown recipe {name!r}; allowed: {', '.join(RECIPES)}") from None
