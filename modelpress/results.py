"""One result schema for every surface, and the seed's CompressionResult computed from the
evaluator's before/after figures.

`job_document(job)` is a job as JSON-ready data, the same on every surface: `compress --json` and
`jobs get --json` (the CLI), `Client.job_document` (the client), `CompressionRun.document()` (the
in-process run) and the job report's data. Its rules:

* names are the proto's own field names (snake_case), units in the names (`_bytes`, `_ms`, `_mb`);
* enums are their full proto names: "JOB_STATE_SUCCEEDED", "TECHNIQUE_OPTIMIZER", "ARTIFACT_FORMAT_ONNX";
* int64 figures are JSON numbers, never strings;
* every field is present, zero or not. A figure that was not measured (a proto3 `optional` left
  unset, a sub-message left out) is None (JSON null), never 0, and the `not_measured` map beside it
  says why ("perplexity": "an encoder has no perplexity");
* timestamps are RFC 3339 strings in UTC ("2026-12-06T10:00:00Z"), None when unset; Struct fields
  (configs, stage metrics) are plain dicts;
* `result` is the CompressionResult, its `headline` ({text, colour, regressions, unreliable}) from
  modelpress.headline; None while the job runs. A job that ended without an evaluation has a result
  whose figures are None, each with why.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import Message

from modelpress.headline import job_headline
from modelpress.structs import from_struct, from_value
from modelpress.v1 import common_pb2

_TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
# Said of a figure whose source the evaluator did not name a reason for.
NOT_PRODUCED = "the evaluation did not produce it"

# The measured figures of a CompressionResult: its proto3 `optional` scalars.
RESULT_FIGURES = tuple(f.name for f in common_pb2.CompressionResult.DESCRIPTOR.fields
                       if f.has_presence and f.message_type is None)


# ---- figures with presence -------------------------------------------------------------------

def figure(message: Message, name: str) -> Any:
    """A field's value, or None when it was not measured (an unset `optional`, a missing sub-message)."""
    return getattr(message, name) if message.HasField(name) else None


def _measured(metrics: common_pb2.ModelMetrics) -> bool:
    """The evaluator filled this message (its size on disk is always measured when it measures)."""
    return metrics.size_on_disk_bytes > 0


def task_accuracy(metrics: common_pb2.ModelMetrics) -> float | None:
    """The seed's `accuracy`: next-token top-1 for causal LMs, held-out topic k-NN accuracy of the
    sentence embeddings for encoders; None when it was not measured."""
    if metrics.kind == "encoder":
        return metrics.encoder.knn_topic_accuracy if metrics.HasField("encoder") else None
    return figure(metrics, "top1_accuracy")


def _accuracy_source(metrics: common_pb2.ModelMetrics) -> str:
    return "encoder" if metrics.kind == "encoder" else "top1_accuracy"


def not_measured_reason(source: str, *models: common_pb2.ModelMetrics) -> str:
    """Why `source` (a ModelMetrics field) is missing, as the evaluator said for any of `models`."""
    for metrics in models:
        if not _measured(metrics):
            return "the model was not measured"
        if source in metrics.not_measured:
            return metrics.not_measured[source]
    return NOT_PRODUCED


def _change(after: float | None, before: float | None) -> float | None:
    """(after - before) / before; None when either is missing or before is 0 (no relative change)."""
    if after is None or not before:
        return None
    return (after - before) / before


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


class _Filler:
    """Sets a result's figures; a missing one gets its reason in `not_measured` instead of a 0."""

    def __init__(self, result: common_pb2.CompressionResult, original: common_pb2.ModelMetrics,
                 compressed: common_pb2.ModelMetrics) -> None:
        self.result, self.models = result, (original, compressed)

    def put(self, name: str, value: float | None, source: str, zero_base: str = "") -> None:
        if value is not None:
            setattr(self.result, name, value)
            return
        reason = not_measured_reason(source, *self.models)
        if reason == NOT_PRODUCED and zero_base:
            reason = zero_base
        self.result.not_measured[name] = reason


def compression_result(job_id: str, original: common_pb2.ModelMetrics, compressed: common_pb2.ModelMetrics,
                       artifact_id: str, *, speed: list[common_pb2.SpeedRatio] = (),
                       load: common_pb2.MachineLoad | None = None) -> common_pb2.CompressionResult:
    """`speed`: the compressed model's paired ratios to the original from one interleaved run
    (main phase, then decode); latency_improvement is the main one. Only what both models' figures
    give is set; the rest is named in `not_measured` with the evaluator's reason."""
    result = common_pb2.CompressionResult(job_id=job_id, compressed_artifact_id=artifact_id)
    result.original.CopyFrom(original)
    result.compressed.CopyFrom(compressed)
    fill = _Filler(result, original, compressed)
    by_phase = {r.phase: r for r in speed}
    main = speed[0] if speed else None

    def plain(metrics: common_pb2.ModelMetrics, name: str):
        return getattr(metrics, name) if _measured(metrics) and getattr(metrics, name) else None

    size_o, size_c = plain(original, "size_on_disk_bytes"), plain(compressed, "size_on_disk_bytes")
    fill.put("original_model_size_bytes", size_o, "size_on_disk_bytes")
    fill.put("compressed_model_size_bytes", size_c, "size_on_disk_bytes")
    fill.put("compression_ratio", _ratio(size_o, size_c), "size_on_disk_bytes")
    params_o, params_c = plain(original, "parameters"), plain(compressed, "parameters")
    fill.put("original_params", params_o, "parameters")
    fill.put("compressed_params", params_c, "parameters")
    kept = _ratio(params_c, params_o)
    fill.put("param_reduction_ratio", None if kept is None else 1 - kept, "parameters")
    latency_o = original.latency.p50_ms if original.HasField("latency") else None
    latency_c = compressed.latency.p50_ms if compressed.HasField("latency") else None
    fill.put("original_latency_ms", latency_o, "latency")
    fill.put("compressed_latency_ms", latency_c, "latency")
    fill.put("latency_improvement", main.speedup if main else _ratio(latency_o, latency_c), "latency")
    memory_o, memory_c = plain(original, "peak_rss_mb"), plain(compressed, "peak_rss_mb")
    fill.put("original_memory_mb", memory_o, "peak_rss_mb")
    fill.put("compressed_memory_mb", memory_c, "peak_rss_mb")
    held = _ratio(memory_c, memory_o)
    fill.put("memory_reduction", None if held is None else 1 - held, "peak_rss_mb")
    accuracy_o, accuracy_c = task_accuracy(original), task_accuracy(compressed)
    source = _accuracy_source(original)
    fill.put("original_accuracy", accuracy_o, source)
    fill.put("compressed_accuracy", accuracy_c, source)
    both = accuracy_o is not None and accuracy_c is not None
    loss = _ratio(accuracy_o - accuracy_c, accuracy_o) if both else None
    fill.put("accuracy_loss", loss, source,
             zero_base="the original's accuracy is 0: a relative loss is undefined")
    ppl_o, ppl_c = figure(original, "perplexity"), figure(compressed, "perplexity")
    fill.put("original_perplexity", ppl_o, "perplexity")
    fill.put("compressed_perplexity", ppl_c, "perplexity")
    fill.put("perplexity_increase", _change(ppl_c, ppl_o), "perplexity")
    if main:
        result.prefill_speedup.CopyFrom(main)
    decode = by_phase.get("decode")
    if decode is not None:
        result.decode_speedup.CopyFrom(decode)
    decode_o = original.decode.p50_ms if decode is not None and original.HasField("decode") else None
    decode_c = compressed.decode.p50_ms if decode is not None and compressed.HasField("decode") else None
    fill.put("original_decode_ms", decode_o, "decode")
    fill.put("compressed_decode_ms", decode_c, "decode")
    if load is not None:
        result.timing_load.CopyFrom(load)
    return result


def unevaluated_result(job_id: str, artifact_id: str, why: str, *,
                       compressed_size_bytes: int | None = None) -> common_pb2.CompressionResult:
    """The result of a job that ended without a before/after evaluation: every figure unset with
    `why`, but for the output's size in bytes where it is known."""
    result = common_pb2.CompressionResult(job_id=job_id, compressed_artifact_id=artifact_id)
    if compressed_size_bytes:
        result.compressed_model_size_bytes = compressed_size_bytes
    for name in RESULT_FIGURES:
        if not result.HasField(name):
            result.not_measured[name] = why
    return result


def result_headline(recipe: str, result: common_pb2.CompressionResult, succeeded: bool = True
                    ) -> common_pb2.Headline:
    told = job_headline(recipe, result, succeeded)
    return common_pb2.Headline(text=told.text, colour=told.colour, regressions=told.regressions,
                               unreliable=told.unreliable)


# ---- documents -----------------------------------------------------------------------------

def _value(field, value) -> Any:
    if field.message_type is not None:
        return _message_value(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if field.type == field.TYPE_BYTES:
        import base64

        return base64.b64encode(value).decode()
    return value


def _message_value(message: Message) -> Any:
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        return message.ToJsonString()
    if name == "google.protobuf.Struct":
        return from_struct(message)
    if name == "google.protobuf.Value":
        return from_value(message)
    if name == "google.protobuf.ListValue":
        return [from_value(item) for item in message.values]
    return message_document(message)


def message_document(message: Message) -> dict:
    """Any message under the rules above (every field; None for what is unset and has presence)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _value(entry, value[key]) for key in sorted(value)}
        elif field.is_repeated:
            out[field.name] = [_value(field, item) for item in value]
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            out[field.name] = from_struct(value)  # an unset config is an empty one
        elif field.has_presence and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def result_document(result: common_pb2.CompressionResult, recipe: str = "", succeeded: bool = True) -> dict:
    """A CompressionResult under the rules above, its headline computed from its figures."""
    out = message_document(result)
    out["headline"] = message_document(result_headline(recipe, result, succeeded))
    return out


def ended_without_result(job: common_pb2.Job) -> common_pb2.CompressionResult:
    """The result of a job that ended before a result was recorded (it failed or was cancelled first)."""
    state = common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
    return unevaluated_result(job.job_id, job.output.id, f"the job ended {state} before its evaluation")


def job_document(job: common_pb2.Job) -> dict:
    """The job under the rules above: what every surface prints and returns."""
    out = message_document(job)
    if job.HasField("result"):
        result = job.result
    elif job.state in _TERMINAL:
        result = ended_without_result(job)
    else:
        out["result"] = None
        return out
    out["result"] = result_document(result, job.recipe, job.state == common_pb2.JOB_STATE_SUCCEEDED)
    return out


def result_fields(result: common_pb2.CompressionResult, recipe: str = "") -> dict:
    """The result of a succeeded job alone, as job_document writes it (kept for callers that print
    the result without its job)."""
    return result_document(result, recipe, succeeded=True)
