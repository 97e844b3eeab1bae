"""Property-based fuzzing of every gateway RPC: requests built from the contract's own descriptors
with hostile strings, extreme and non-finite numbers, deep structs and unknown enum values. No
answer may be UNKNOWN or INTERNAL, and every service must still serve afterwards.

Bounded here (MODELPRESS_FUZZ_EXAMPLES per RPC, 40 by default); `make fuzz` runs many more.
Model references are never valid ones, so no real job or measurement starts.
"""

from __future__ import annotations

import asyncio
import os

import grpc
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpress import Client
from modelpress.v1 import gateway_pb2

GATEWAY = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
EXAMPLES = int(os.environ.get("MODELPRESS_FUZZ_EXAMPLES", "40"))
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
HOSTILE_STRINGS = ["", " ", "*", ">", "jobs.>", "a.b", "é", "\x00", "a\x00b", "../../etc/passwd", "/etc", "/",
                   "j-0000000000000000", "a-00000000000000000000", "c-0", "int8-weight-only@999999", "@", "NAME@x",
                   "x" * 300, "z" * 200_000, "\ud7ff" * 10, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "%s%s%n", "{{7*7}}", "' OR 1=1 --",
                   "quantize.bits", "builtin:minilm-l6", "artifact:a-1", "json", "html", "avx2", "fp16"]
INT_RANGES = {FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
              FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
              FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1)}

strings = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=40))
numbers = st.one_of(st.integers(-10, 10), st.sampled_from([-1, 0, 1, 2**31 - 1, -2**31, 2**53, 10**12]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.0, 1e308, -1e-308]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), floats, strings),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(strings, inner, max_size=3)),
    max_leaves=12)


def _deep(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    return value


structs = st.one_of(st.dictionaries(strings, json_values, max_size=4),
                    st.integers(1, 40).map(_deep), st.builds(lambda k: {k: float("nan")}, strings))


def _field_values(field: FieldDescriptor, depth: int):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Struct":
            return structs
        if field.message_type.GetOptions().map_entry:
            return st.dictionaries(strings, _field_values(field.message_type.fields_by_name["value"], depth + 1),
                                   max_size=3).map(lambda d: ("map", d))
        return messages(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return strings
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return floats
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 40)
    lo, hi = INT_RANGES.get(field.type, (-2**31, 2**31 - 1))
    return st.one_of(numbers.filter(lambda v: lo <= v <= hi), st.integers(lo, hi))


def _set(message, field: FieldDescriptor, value) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
        struct = struct_pb2.Struct()
        try:
            struct.update(value)
        except (ValueError, TypeError):
            return
        (target.add() if _repeated(field) else target).CopyFrom(struct)
    elif isinstance(value, tuple) and value[0] == "map":
        for key, item in value[1].items():
            if field.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        (target.add() if _repeated(field) else target).CopyFrom(value)
    elif _repeated(field):
        target.append(value)
    else:
        setattr(message, field.name, value)


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated and not (
        field.message_type is not None and field.message_type.GetOptions().map_entry)


@st.composite
def _message(draw, descriptor, depth: int):
    cls = _class_of(descriptor)
    message = cls()
    if depth > 3:
        return message
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        values = _field_values(field, depth)
        try:
            if _repeated(field):
                for value in draw(st.lists(values, max_size=3)):
                    _set(message, field, value)
            else:
                _set(message, field, draw(values))
        except (ValueError, TypeError):  # a value protobuf itself refuses (out of range, bad UTF-8)
            continue
    return message


def messages(descriptor, depth: int = 0):
    return _message(descriptor, depth)


def _class_of(descriptor):
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(descriptor)


def _call(channel: grpc.Channel, method, request):
    path = f"/{GATEWAY.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    stub = getattr(channel, kind)(path, request_serializer=lambda m: m.SerializeToString(),
                                  response_deserializer=_class_of(method.output_type).FromString)
    answer = stub(iter(request) if method.client_streaming else request, timeout=10)
    if method.server_streaming:
        for _ in answer:  # a stream that answers at all is drained (bounded by the deadline)
            pass


def _fuzz_all(target: str) -> dict[str, dict[str, int]]:
    seen: dict[str, dict[str, int]] = {}
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 16 << 20)]) as channel:
        for method in GATEWAY.methods:
            requests = messages(method.input_type)
            if method.client_streaming:
                requests = st.lists(requests, min_size=0, max_size=3)

            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(request=requests)
            def fuzz(request):
                try:
                    _call(channel, method, request)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                    assert code not in FORBIDDEN, (method.name, code, exc.details()[:300], str(request)[:300])
                counts = seen.setdefault(method.name, {})
                counts[code.name] = counts.get(code.name, 0) + 1

            fuzz()
    return seen


async def test_no_rpc_answers_unknown_or_internal_and_every_service_survives(gateway):
    seen = await asyncio.to_thread(_fuzz_all, gateway)
    assert set(seen) == {m.name for m in GATEWAY.methods}
    with grpc.insecure_channel(gateway) as channel:
        health = await asyncio.to_thread(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest(),
                                         timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    methods = await asyncio.to_thread(Client(gateway).list_methods)
    assert not methods.unavailable, methods.unavailable
