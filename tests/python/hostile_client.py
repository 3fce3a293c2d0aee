#!/usr/bin/env python3
"""An independent, hostile client of the flopmeter collector's ingest stream.

Written against the .proto files only (no Rust code shared with the collector): the Python
stubs are generated at run time with grpcio-tools into a temporary directory, so nothing
generated is committed and a protocol change cannot leave this client behind.

Each case attacks one door of `flopmeter.v1.Ingest/Stream` and asserts the gRPC status, the
Ack/Resend the collector answers with, the Prometheus counter that must move (by exactly how
much), and that the ledger's totals are unchanged, read from /api/v1/models after the case
(exact integers: Python ints are unbounded, like the ledger's u128 sums).

Usage:
  hostile_client.py --grpc HOST:PORT --http HOST:PORT --tokens FILE --agent A --agent B \
      --max-message-bytes N

One line per case: `CASE <name> expected=<...> got=<...> PASS|FAIL`, then
`TOTALS <json>` (what the ledger must hold), then `N passed, N failed`. Exit status 1 on
any failure, 2 if the stubs cannot be generated.
"""

import argparse
import glob
import json
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request

# Every call carries a deadline, so a collector that hangs fails the case instead of the run.
CALL_TIMEOUT_S = 30
METHOD = "/flopmeter.v1.Ingest/Stream"
MODEL = "hostile-model"
RUN = "hostile-run"
GPU_TYPE = "h100-sxm"

pb = None  # flopmeter.v1.ingest_pb2, set by generate_stubs()
admin_pb = None  # flopmeter.v1.admin_pb2
compliance_pb = None  # flopmeter.v1.compliance_pb2
grpc = None


def generate_stubs(proto_root, out_dir):
    """Runs protoc (from grpcio-tools) on every proto/flopmeter/v1/*.proto."""
    global pb, admin_pb, compliance_pb, grpc
    protos = sorted(glob.glob(os.path.join(proto_root, "flopmeter", "v1", "*.proto")))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}",
        f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"protoc failed: {r.stderr}", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, out_dir)
    import grpc as grpc_mod
    from flopmeter.v1 import admin_pb2, compliance_pb2, ingest_pb2

    grpc, pb = grpc_mod, ingest_pb2
    admin_pb, compliance_pb = admin_pb2, compliance_pb2


# ---------------------------------------------------------------------------------------------
# Collector observation: totals and counters over HTTP.


HTTP_TLS = None  # an ssl.SSLContext when the collector's HTTP port speaks TLS


def http_get(http, path):
    scheme = "https" if HTTP_TLS else "http"
    with urllib.request.urlopen(f"{scheme}://{http}{path}", timeout=CALL_TIMEOUT_S,
                                context=HTTP_TLS) as r:
        return r.read().decode()


def totals(http):
    """The model's counted FLOP band and record count, as exact ints (None: no such model)."""
    for m in json.loads(http_get(http, "/api/v1/models")):
        if m["model"] == MODEL:
            c = m["counted"]
            return {
                "records": int(m["records"]),
                "low": int(c["low"]),
                "central": int(c["central"]),
                "high": int(c["high"]),
            }
    return None


SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def counters(http):
    """Every sample of /metrics whose name starts with flopmeter_ingest or flopmeter_accept,
    keyed by name+labels."""
    out = {}
    for line in http_get(http, "/metrics").splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1).startswith(("flopmeter_ingest", "flopmeter_accept")) \
                and not m.group(1).endswith(
            ("_bucket", "_sum", "_count")
        ):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def refused(reason):
    return f'flopmeter_ingest_refused_total{{reason="{reason}"}}'


def rejected(reason):
    return f'flopmeter_ingest_rejected_records_total{{reason="{reason}"}}'


# ---------------------------------------------------------------------------------------------
# Messages.


def now_ms():
    return int(time.time() * 1000)


# Event times well in the past (a backfill) and fixed for the run, so sums are reproducible.
T0 = now_ms() - 3_600_000


def record(seq, **over):
    """A valid 10 s H100 record; FLOP figures vary with seq so sums identify records."""
    start = T0 + seq * 10_000
    fields = dict(
        seq=seq,
        start_unix_ms=start,
        end_unix_ms=start + 10_000,
        gpu_uuid="GPU-hostile-0",
        gpu_type=GPU_TYPE,
        flop_low=3_000_000_000_000_000 + seq,
        flop_central=4_000_000_000_000_000 + 7 * seq,
        flop_high=5_000_000_000_000_000 + 13 * seq,
        gpu_ms=10_000,
        energy_mj=7_000_000,
        mean_sm_clock_mhz=1830,
        mean_tensor_util=0.4,
        method=pb.METHOD_GPM_TENSOR,
        precision=pb.PRECISION_BF16,
        identity=pb.WorkloadIdentity(
            model=MODEL, run=RUN, stage="pretrain",
            source=pb.ATTRIBUTION_SOURCE_PROCESS_ENV,
        ),
    )
    fields.update(over)
    return pb.IntervalRecord(**fields)


def hello(agent_id, **over):
    fields = dict(
        agent_id=agent_id,
        node="hostile-node",
        software_version="hostile-client/1",
        agent_time_unix_ms=now_ms(),
        gpus=[pb.GpuInventory(index=0, uuid="GPU-hostile-0", name="NVIDIA H100 80GB HBM3",
                              pci_device_id=0x2330, catalogue_id=GPU_TYPE)],
    )
    fields.update(over)
    return pb.AgentMessage(hello=pb.Hello(**fields))


def batch(records):
    return pb.AgentMessage(batch=pb.RecordBatch(records=records))


def add(t, records):
    """Totals `t` plus `records` applied once."""
    t = dict(t)
    for r in records:
        t["records"] += 1
        t["low"] += r.flop_low
        t["central"] += r.flop_central
        t["high"] += r.flop_high
    return t


# ---------------------------------------------------------------------------------------------
# Streams.


class Outcome:
    def __init__(self, code, details, replies):
        self.code = code  # grpc.StatusCode
        self.details = details or ""
        self.replies = replies  # CollectorMessage, or bytes for raw calls

    def kinds(self):
        return [r.WhichOneof("kind") for r in self.replies]

    def of(self, kind):
        return [getattr(r, kind) for r in self.replies if r.WhichOneof("kind") == kind]

    def __str__(self):
        return f"{self.code.name}({','.join(self.kinds()) or '-'})"


def exchange(channel, messages, token=None, raw=False):
    """Sends `messages` in order on one stream, half-closes, and reads every reply up to the
    final status. `raw`: messages are bytes written as-is into the gRPC frames."""
    if raw:
        call = channel.stream_stream(METHOD, request_serializer=None,
                                     response_deserializer=None)
    else:
        call = channel.stream_stream(
            METHOD,
            request_serializer=pb.AgentMessage.SerializeToString,
            response_deserializer=pb.CollectorMessage.FromString,
        )
    md = [("authorization", f"Bearer {token}")] if token is not None else []
    responses = call(iter(messages), metadata=md, timeout=CALL_TIMEOUT_S)
    replies = []
    try:
        for r in responses:
            replies.append(r)
        return Outcome(grpc.StatusCode.OK, "", replies)
    except grpc.RpcError as e:
        return Outcome(e.code(), e.details(), replies)


def conversation(channel, token, first, then):
    """Sends `first`, waits for one reply, then sends `then` and reads to the end: for
    attacks that must follow an established session (the Welcome proves it was)."""
    q = queue.Queue()
    q.put(first)

    def gen():
        while True:
            m = q.get()
            if m is None:
                return
            yield m

    call = channel.stream_stream(METHOD, request_serializer=None,
                                 response_deserializer=None)
    responses = call(gen(), metadata=[("authorization", f"Bearer {token}")],
                     timeout=CALL_TIMEOUT_S)
    replies = []
    try:
        replies.append(pb.CollectorMessage.FromString(next(responses)))
        for m in then:
            q.put(m)
        q.put(None)
        for r in responses:
            replies.append(pb.CollectorMessage.FromString(r))
        return Outcome(grpc.StatusCode.OK, "", replies)
    except grpc.RpcError as e:
        q.put(None)
        return Outcome(e.code(), e.details(), replies)


# ---------------------------------------------------------------------------------------------
# Cases.


class Ctx:
    def __init__(self, args, channel, agents):
        self.args = args
        self.channel = channel
        self.a, self.b = agents[0], agents[1]
        self.tokens = {}
        self.expected = None  # totals the ledger must hold
        self.hwm = 0  # agent A's high-water mark as the collector must have it


def check(expected, got, ok):
    return expected, got, bool(ok)


def case_baseline(c):
    recs = [record(s) for s in (1, 2, 3)]
    c.baseline_batch = recs
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    acks = o.of("ack")
    ok = (o.code == grpc.StatusCode.OK and o.kinds() == ["welcome", "ack"]
          and o.of("welcome")[0].high_water_mark == 0
          and acks[0].acked_through == 3 and not acks[0].rejections)
    c.expected = add({"records": 0, "low": 0, "central": 0, "high": 0}, recs)
    c.hwm = 3
    return check("OK welcome(hwm=0) ack(3) no rejections", f"{o} ack={acks[:1]}", ok), {
        "flopmeter_ingest_records_total": 3}


def case_garbage_first(c):
    o = exchange(c.channel, [b"\xff\xfe\x00\x13garbage, not a protobuf\xff" * 4], raw=True)
    return check("INVALID_ARGUMENT", o, o.code == grpc.StatusCode.INVALID_ARGUMENT), {
        refused("malformed-message"): 1}


def case_garbage_after_hello(c):
    o = conversation(c.channel, c.tokens[c.a], hello(c.a).SerializeToString(),
                     [b"\x12\xff\xff\xff\xff\x0f\x01"])
    ok = o.code == grpc.StatusCode.INVALID_ARGUMENT and o.kinds() == ["welcome"]
    return check("welcome, then INVALID_ARGUMENT", o, ok), {refused("malformed-message"): 1}


def case_truncated(c):
    full = hello(c.a).SerializeToString()
    o = exchange(c.channel, [full[:-5]], raw=True)
    return check("INVALID_ARGUMENT", o, o.code == grpc.StatusCode.INVALID_ARGUMENT), {
        refused("malformed-message"): 1}


def case_truncated_batch(c):
    good = batch([record(c.hwm + 1)]).SerializeToString()
    o = conversation(c.channel, c.tokens[c.a], hello(c.a).SerializeToString(), [good[:-3]])
    ok = o.code == grpc.StatusCode.INVALID_ARGUMENT and o.kinds() == ["welcome"]
    return check("welcome, then INVALID_ARGUMENT; nothing applied", o, ok), {
        refused("malformed-message"): 1}


def case_oversized(c):
    # A well-formed batch of valid records, just above the collector's message limit.
    limit = c.args.max_message_bytes
    recs, size, s = [], 0, c.hwm
    while size <= limit:
        s += 1
        r = record(s)
        recs.append(r)
        size += r.ByteSize() + 3
    msg = batch(recs).SerializeToString()
    assert len(msg) > limit
    o = conversation(c.channel, c.tokens[c.a], hello(c.a).SerializeToString(), [msg])
    ok = o.code == grpc.StatusCode.RESOURCE_EXHAUSTED and o.kinds() == ["welcome"]
    return check(f"welcome, then RESOURCE_EXHAUSTED ({len(msg)} > {limit} bytes)", o, ok), {
        refused("message-too-large"): 1}


def case_oversized_hello(c):
    big = hello(c.a, gpus=[pb.GpuInventory(index=i, uuid=f"GPU-{i:032}")
                           for i in range(c.args.max_message_bytes // 30 + 10)])
    msg = big.SerializeToString()
    o = exchange(c.channel, [msg], c.tokens[c.a], raw=True)
    return check("RESOURCE_EXHAUSTED before any Welcome", o,
                 o.code == grpc.StatusCode.RESOURCE_EXHAUSTED and not o.replies), {
        refused("message-too-large"): 1}


def case_batch_before_hello(c):
    o = exchange(c.channel, [batch([record(c.hwm + 1)])], c.tokens[c.a])
    return check("INVALID_ARGUMENT", o, o.code == grpc.StatusCode.INVALID_ARGUMENT
                 and not o.replies), {refused("bad-hello"): 1}


def case_second_hello(c):
    o = exchange(c.channel, [hello(c.a), hello(c.a)], c.tokens[c.a])
    return check("welcome, then INVALID_ARGUMENT", o,
                 o.code == grpc.StatusCode.INVALID_ARGUMENT and o.kinds() == ["welcome"]), {
        refused("bad-hello"): 1}


def case_bad_hello_identity(c):
    o = exchange(c.channel, [hello("agent\x00with-nul")], c.tokens[c.a])
    return check("INVALID_ARGUMENT", o, o.code == grpc.StatusCode.INVALID_ARGUMENT), {
        refused("bad-hello"): 1}


def case_hostile_hello_strings(c):
    # Strings that end up in the agents table and the API: a 10k-character version and an
    # inventory entry carrying a terminal escape sequence.
    o1 = exchange(c.channel, [hello(c.a, software_version="v" * 10_000)], c.tokens[c.a])
    o2 = exchange(c.channel, [hello(c.a, gpus=[pb.GpuInventory(
        uuid="GPU-x", catalogue_id="h100-sxm\x1b[2J")])], c.tokens[c.a])
    ok = all(o.code == grpc.StatusCode.INVALID_ARGUMENT and not o.replies for o in (o1, o2))
    return check("INVALID_ARGUMENT twice", f"{o1} {o2}", ok), {refused("bad-hello"): 2}


def case_wrong_token(c):
    o = exchange(c.channel, [hello(c.a), batch([record(c.hwm + 1)])], "not-the-token")
    return check("UNAUTHENTICATED", o, o.code == grpc.StatusCode.UNAUTHENTICATED
                 and not o.replies), {refused("bad-token"): 1}


def case_no_token(c):
    o = exchange(c.channel, [hello(c.a), batch([record(c.hwm + 1)])], None)
    return check("UNAUTHENTICATED", o, o.code == grpc.StatusCode.UNAUTHENTICATED
                 and not o.replies), {refused("bad-token"): 1}


def case_unknown_agent(c):
    o = exchange(c.channel, [hello("nobody-knows-me"), batch([record(1)])], c.tokens[c.a])
    return check("UNAUTHENTICATED", o, o.code == grpc.StatusCode.UNAUTHENTICATED
                 and not o.replies), {refused("unknown-agent"): 1}


def case_forged_agent_id(c):
    # Agent A's valid token, agent B's id: an authenticated agent impersonating another.
    o = exchange(c.channel, [hello(c.b), batch([record(1)])], c.tokens[c.a])
    return check("UNAUTHENTICATED", o, o.code == grpc.StatusCode.UNAUTHENTICATED
                 and not o.replies), {refused("forged-identity"): 1}


def case_replay(c):
    o = exchange(c.channel, [hello(c.a), batch(c.baseline_batch)], c.tokens[c.a])
    acks = o.of("ack")
    ok = (o.code == grpc.StatusCode.OK and o.kinds() == ["welcome", "ack"]
          and o.of("welcome")[0].high_water_mark == c.hwm
          and acks[0].acked_through == c.hwm and not acks[0].rejections)
    return check(f"OK welcome(hwm={c.hwm}) ack({c.hwm})", o, ok), {
        "flopmeter_ingest_duplicate_records_total": 3, "flopmeter_ingest_records_total": 0}


def absurd_records(first_seq):
    """(record, expected reason) pairs, numbered from `first_seq`."""
    u64 = 2**64 - 1
    i64 = 2**63 - 1
    now = now_ms()
    cases = [
        (dict(flop_low=1, flop_central=2, flop_high=10**17), "flop-above-peak"),
        (dict(flop_low=u64, flop_central=u64, flop_high=u64), "flop-above-peak"),
        (dict(end_unix_ms=T0 - 1, start_unix_ms=T0), "bad-interval"),
        (dict(start_unix_ms=T0, end_unix_ms=T0), "bad-interval"),
        (dict(start_unix_ms=-10_000, end_unix_ms=0), "bad-interval"),
        (dict(start_unix_ms=-(2**63), end_unix_ms=i64), "bad-interval"),
        (dict(start_unix_ms=1, end_unix_ms=T0), "interval-too-long"),
        (dict(start_unix_ms=now + 86_400_000, end_unix_ms=now + 86_410_000),
         "future-event-time"),
        (dict(start_unix_ms=i64 - 10_000, end_unix_ms=i64), "future-event-time"),
        (dict(flop_low=5, flop_central=4, flop_high=6), "band-order"),
        (dict(mean_tensor_util=float("nan")), "bad-value"),
        (dict(mean_tensor_util=float("inf")), "bad-value"),
        (dict(mean_tensor_util=-0.5), "bad-value"),
        (dict(gpu_ms=u64), "gpu-time-above-interval"),
        (dict(energy_mj=u64), "implausible-energy"),
        (dict(gpu_type="x999-not-a-gpu"), "unknown-gpu-type"),
        (dict(gpu_type="h100\x00sxm"), "bad-identity"),
        (dict(gpu_uuid="GPU-" + "u" * 10_000), "bad-identity"),
        (dict(identity=pb.WorkloadIdentity(model="m" * 10_000, run=RUN)), "bad-identity"),
        (dict(identity=pb.WorkloadIdentity(model=MODEL, run="run\nINJECTED 1e30")),
         "bad-identity"),
        (dict(identity=pb.WorkloadIdentity(model=MODEL, run=RUN, stage="\x1b[31mred")),
         "bad-identity"),
        (dict(identity=pb.WorkloadIdentity(model=MODEL, run=RUN, job="j" * 10_000)),
         "bad-identity"),
        (dict(declaration=pb.WorkloadDeclaration(base_model="base\x07bell")), "bad-identity"),
    ]
    return [(record(first_seq + i, **over), reason) for i, (over, reason) in enumerate(cases)]


def case_absurd_values(c):
    pairs = absurd_records(c.hwm + 1)
    recs = [r for r, _ in pairs]
    last = recs[-1].seq
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    acks = o.of("ack")
    want = {r.seq: reason for r, reason in pairs}
    got = {j.seq: j.reason for j in acks[0].rejections} if acks else {}
    wrong = {s: (want[s], got.get(s)) for s in want if got.get(s) != want[s]}
    ok = (o.code == grpc.StatusCode.OK and o.kinds() == ["welcome", "ack"]
          and acks[0].acked_through == last and not wrong)
    c.hwm = last
    deltas = {"flopmeter_ingest_records_total": 0}
    for reason in want.values():
        deltas[rejected(reason)] = deltas.get(rejected(reason), 0) + 1
    return check(f"OK ack({last}), {len(recs)} rejections with the right reasons",
                 f"{o} mismatched={wrong}", ok), deltas


def case_absurd_declarations(c):
    # Declared counts that are not whole numbers by the one rule: an exponent that once made
    # the collector multiply zero by ten 2^31 times inside its writer's transaction (8.7 s
    # per record, every read blocked), a fraction, garbage. Quarantined at the door, fast.
    h = c.hwm
    bad = ["0e2147483647", "1e-2147483648", "2.5", "9" * 5000, "1e99999999999999999999"]
    recs = [record(h + 1 + i, declaration=pb.WorkloadDeclaration(planned_flop=v))
            for i, v in enumerate(bad)]
    recs.append(record(h + 1 + len(bad), declaration=pb.WorkloadDeclaration(
        params="7e9", tokens="0e2147483647")))
    started = time.monotonic()
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    took = time.monotonic() - started
    acks = o.of("ack")
    reasons = [j.reason for j in acks[0].rejections] if acks else []
    details = " | ".join(j.detail for j in acks[0].rejections[:2]) if acks else ""
    # "9"*5000 is refused as a bad-identity string before its parse; the rest by the parser.
    want = ["bad-declaration"] * 3 + ["bad-identity"] + ["bad-declaration"] * 2
    ok = (o.code == grpc.StatusCode.OK and acks and acks[0].acked_through == recs[-1].seq
          and reasons == want and "exponent" in details and took < 10)
    c.hwm = recs[-1].seq
    return check(f"OK, rejections {want} with the exponent named, in seconds",
                 f"{o} reasons={reasons} took={took:.2f}s detail={details[:160]}", ok), {
        rejected("bad-declaration"): 5, rejected("bad-identity"): 1,
        "flopmeter_ingest_records_total": 0}


def admin_call(c, method, request, response):
    call = c.channel.unary_unary(method, request_serializer=request.SerializeToString,
                                 response_deserializer=response.FromString)
    try:
        call(request, timeout=CALL_TIMEOUT_S)
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details() or ""


def case_admin_absurd_numbers_and_strings(c):
    # The admin API's doors: the same parser (SetModel froze the admin path for 12-24 s on
    # "0e2147483647"), and strings that end up in the audit log and on terminals.
    set_model = "/flopmeter.v1.Admin/SetModel"
    ack = "/flopmeter.v1.Compliance/Acknowledge"
    attempts = [
        (set_model, admin_pb.SetModelRequest(entry=admin_pb.ModelEntry(
            model="admin-target", planned_flop="0e2147483647"), by="mallory"),
         admin_pb.SetModelResponse, "exponent"),
        (set_model, admin_pb.SetModelRequest(entry=admin_pb.ModelEntry(
            model="admin-target", base_flop_source="card\x1b]0;pwned\x07"), by="mallory"),
         admin_pb.SetModelResponse, "base_flop_source"),
        (set_model, admin_pb.SetModelRequest(entry=admin_pb.ModelEntry(
            model="admin\u202etarget"), by="mallory"), admin_pb.SetModelResponse, "model"),
        (set_model, admin_pb.SetModelRequest(entry=admin_pb.ModelEntry(
            model="admin-target"), by="mal\x1b[2Jlory"), admin_pb.SetModelResponse, "by"),
        (ack, compliance_pb.AcknowledgeRequest(
            model=MODEL, threshold="eu-systemic-risk", by="mallory",
            reference="r" * (3 << 20)), compliance_pb.AlertActionResponse, "reference"),
        (ack, compliance_pb.AcknowledgeRequest(
            model=MODEL, threshold="eu-systemic-risk", by="mallory",
            reference="ref\x07\u202e"), compliance_pb.AlertActionResponse, "reference"),
    ]
    got = []
    started = time.monotonic()
    for method, req, resp, field in attempts:
        code, details = admin_call(c, method, req, resp)
        got.append((code.name, field in details))
    took = time.monotonic() - started
    ok = all(g == ("INVALID_ARGUMENT", True) for g in got) and took < 10
    models = [m["model"] for m in json.loads(http_get(c.args.http, "/api/v1/models"))]
    ok = ok and "admin-target" not in models
    return check("INVALID_ARGUMENT naming the field, six times, nothing saved",
                 f"{got} took={took:.2f}s models={models}", ok), {}


def case_undeclared_gpus(c):
    # An 8-GPU... here 1-GPU Hello, then records for 20 GPU ids it never declared.
    h = c.hwm
    recs = [record(h + 1 + i, gpu_uuid=f"GPU-made-up-{i}") for i in range(20)]
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    acks = o.of("ack")
    reasons = {j.reason for j in acks[0].rejections} if acks else set()
    n = len(acks[0].rejections) if acks else 0
    ok = o.code == grpc.StatusCode.OK and reasons == {"undeclared-gpu"} and n == 20
    c.hwm = recs[-1].seq
    return check("20 x undeclared-gpu", f"{o} reasons={reasons} n={n}", ok), {
        rejected("undeclared-gpu"): 20, "flopmeter_ingest_records_total": 0}


def case_overlapping_intervals(c):
    # 50 records for the same GPU and the same 10 s, each within the GPU's ceiling (an H100:
    # about 2.4e16 FLOP in 10 s with the tolerance), together 27 times it. The first fits;
    # every other one would take the GPU past its ceiling over their union.
    h = c.hwm
    slot = record(h + 1)
    recs = [record(h + 1 + i, start_unix_ms=slot.start_unix_ms, end_unix_ms=slot.end_unix_ms,
                   flop_low=10**16, flop_central=12 * 10**15, flop_high=13 * 10**15)
            for i in range(50)]
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    acks = o.of("ack")
    rej = [j.reason for j in acks[0].rejections] if acks else []
    ok = (o.code == grpc.StatusCode.OK and acks and acks[0].acked_through == h + 50
          and rej == ["gpu-overlap"] * 49)
    c.hwm = h + 50
    c.expected = add(c.expected, recs[:1])
    return check("1 applied, 49 x gpu-overlap", f"{o} rejections={len(rej)} {set(rej)}", ok), {
        rejected("gpu-overlap"): 49, "flopmeter_ingest_records_total": 1}


def case_event_time_1971(c):
    # A wrong (or hostile) clock: work dated 1971 would start a notification clock dated
    # 1971 that can never move.
    h = c.hwm
    start = 31_536_000_000  # 1971-01-01
    recs = [record(h + 1, start_unix_ms=start, end_unix_ms=start + 10_000,
                   declaration=pb.WorkloadDeclaration(planned_flop="3e25"))]
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    acks = o.of("ack")
    rej = [(j.reason, j.detail) for j in acks[0].rejections] if acks else []
    ok = (o.code == grpc.StatusCode.OK and len(rej) == 1
          and rej[0][0] == "event-time-too-old" and "--backfill-window" in rej[0][1])
    c.hwm = h + 1
    return check("event-time-too-old naming --backfill-window", f"{o} {rej}", ok), {
        rejected("event-time-too-old"): 1, "flopmeter_ingest_records_total": 0}


def case_look_alike_names(c):
    # Names that print like MODEL but are other models: a zero-width space, a non-breaking
    # hyphen, a right-to-left override.
    h = c.hwm
    names = ["hostile\u200b-model", "hostile\u2011model", "\u202eledom-elitsoh"]
    recs = [record(h + 1 + i, identity=pb.WorkloadIdentity(model=n, run=RUN))
            for i, n in enumerate(names)]
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    acks = o.of("ack")
    rej = [j.reason for j in acks[0].rejections] if acks else []
    ok = o.code == grpc.StatusCode.OK and rej == ["bad-identity"] * 3
    c.hwm = recs[-1].seq
    return check("3 x bad-identity", f"{o} {rej}", ok), {
        rejected("bad-identity"): 3, "flopmeter_ingest_records_total": 0}


def case_silent_connection(c):
    # A TCP connection that never sends the HTTP/2 preface is closed after --hello-timeout.
    host, port = c.args.grpc.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT_S)
    started = time.monotonic()
    try:
        s.settimeout(c.args.hello_timeout + 20)
        data = s.recv(4096)
        while data:
            data = s.recv(4096)
        closed = True
    except OSError:
        closed = False
    finally:
        s.close()
    took = time.monotonic() - started
    ok = closed and took < c.args.hello_timeout + 15
    return check(f"closed by the collector after about {c.args.hello_timeout} s",
                 f"closed={closed} after {took:.1f} s", ok), {refused("hello-timeout"): 1}


def case_silent_stream(c):
    # An HTTP/2 stream on the Ingest method that never sends its Hello.
    stop = threading.Event()

    def never():
        stop.wait(CALL_TIMEOUT_S)
        return
        yield  # a generator that yields nothing until the end

    call = c.channel.stream_stream(METHOD, request_serializer=None,
                                   response_deserializer=None)
    started = time.monotonic()
    try:
        for _ in call(never(), metadata=[("authorization", f"Bearer {c.tokens[c.a]}")],
                      timeout=CALL_TIMEOUT_S):
            pass
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    stop.set()
    took = time.monotonic() - started
    ok = code == grpc.StatusCode.DEADLINE_EXCEEDED and took < c.args.hello_timeout + 15
    return check("DEADLINE_EXCEEDED after --hello-timeout", f"{code.name} after {took:.1f} s",
                 ok), {refused("hello-timeout"): 1}


def case_not_grpc(c):
    # A text/html request on the gRPC port, in raw HTTP/2.
    import h2.config
    import h2.connection
    import h2.events

    host, port = c.args.grpc.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT_S)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", c.args.grpc),
                          (":path", METHOD), ("content-type", "text/html")])
    conn.send_data(1, b"<html>hello</html>", end_stream=True)
    s.sendall(conn.data_to_send())
    status = None
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while status is None and time.monotonic() < deadline:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers).get(b":status")
        s.sendall(conn.data_to_send())
    s.close()
    ok = status == b"415"
    return check("HTTP 415", f"status={status}", ok), {refused("not-grpc"): 1}


def tls_channel(c, cert, key):
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(c.args.tls_ca, "rb").read(),
        private_key=open(key, "rb").read(), certificate_chain=open(cert, "rb").read())
    return grpc.secure_channel(c.args.grpc, creds)


def case_tls_admin_cert_as_agent(c):
    # In mutual TLS, the CLI's certificate (CN flopmeter-admin) names an identity too: an
    # agent with that id must still be refused, because the certificate's role is not
    # "agent".
    ch = tls_channel(c, c.args.admin_cert, c.args.admin_key)
    o = exchange(ch, [hello("flopmeter-admin"), batch([record(1)])])
    ch.close()
    ok = (o.code == grpc.StatusCode.PERMISSION_DENIED and not o.replies
          and "OU=flopmeter-agent" in o.details)
    return check("PERMISSION_DENIED naming the agent role", f"{o} {o.details[:200]}", ok), {
        refused("certificate-role"): 1}


def case_tls_agent_cert_streams(c):
    # The agent's own certificate, for contrast: welcomed.
    ch = tls_channel(c, c.args.tls_cert, c.args.tls_key)
    o = exchange(ch, [hello(c.a)])
    ch.close()
    return check("OK welcome", o, o.code == grpc.StatusCode.OK and o.kinds() == ["welcome"]), {}


def case_tls_silent_after_handshake(c):
    # A TLS handshake, then no HTTP/2 preface: closed after --hello-timeout.
    import ssl

    ctx = ssl.create_default_context(cafile=c.args.tls_ca)
    ctx.set_alpn_protocols(["h2"])
    host, port = c.args.grpc.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=CALL_TIMEOUT_S)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    started = time.monotonic()
    try:
        s.settimeout(c.args.hello_timeout + 20)
        while s.recv(4096):
            pass
        closed = True
    except socket.timeout:
        closed = False
    except (OSError, ssl.SSLError):
        closed = True  # a reset is a close too
    finally:
        s.close()
    took = time.monotonic() - started
    ok = closed and took < c.args.hello_timeout + 15
    return check(f"closed after about {c.args.hello_timeout} s", f"after {took:.1f} s", ok), {
        refused("hello-timeout"): 1}


TLS_CASES = [
    ("tls-agent-cert-streams", case_tls_agent_cert_streams),
    ("tls-admin-cert-as-agent", case_tls_admin_cert_as_agent),
    ("tls-silent-after-handshake", case_tls_silent_after_handshake),
]


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def case_descriptor_flood(c):
    # More connections than the collector has file descriptors (its limit is lowered for this
    # test): the accept loop must back off and count, not spin, and serve again afterwards.
    if not c.args.collector_pid:
        return check("skipped (no --collector-pid)", "", True), {}
    host, port = c.args.grpc.rsplit(":", 1)
    hz = os.sysconf("SC_CLK_TCK")
    # The whole flood is measured: a spinning accept loop burns its core from the first
    # refused accept (and then accepts nothing, so the connects themselves slow down).
    t0, w0 = proc_cpu_ticks(c.args.collector_pid), time.monotonic()
    socks = []
    while len(socks) < c.args.flood and time.monotonic() - w0 < 15:
        try:
            socks.append(socket.create_connection((host, int(port)), timeout=2))
        except OSError:
            pass
    time.sleep(3)
    t1, w1 = proc_cpu_ticks(c.args.collector_pid), time.monotonic()
    cpu = (t1 - t0) / hz / (w1 - w0)
    for s in socks:
        s.close()
    # Serving again: a normal stream works.
    o = None
    for _ in range(30):
        time.sleep(1)
        try:
            o = exchange(c.channel, [hello(c.a)], c.tokens[c.a])
            if o.kinds() == ["welcome"]:
                break
        except Exception:  # noqa: BLE001 - the channel may need to reconnect
            pass
    served = o is not None and o.kinds() == ["welcome"]
    ok = cpu < 0.25 and served
    print(f"FLOOD {len(socks)} connections held, collector CPU {cpu:.1%} of a core while out "
          f"of descriptors", flush=True)
    return check("CPU < 25% of a core while flooded; serves again afterwards",
                 f"cpu={cpu:.1%} served={served} held={len(socks)}", ok), {
        'flopmeter_accept_errors_total{listener="grpc",reason="fd-exhausted"}': ">0"}


def case_absurd_operator_peak(c):
    # An uncatalogued GPU whose agent declares an absurd peak (1e300 TFLOP/s, NaN): the
    # declared peak must not become a ceiling that lets any FLOP figure through.
    h = c.hwm
    gpus = [pb.GpuInventory(index=0, uuid="GPU-uncat-huge", operator_peak_tflops=1e300),
            pb.GpuInventory(index=1, uuid="GPU-uncat-nan", operator_peak_tflops=float("nan"))]
    u64 = 2**64 - 1
    recs = [record(h + 1, gpu_type="", gpu_uuid="GPU-uncat-huge", unknown_peak=True,
                   flop_low=u64, flop_central=u64, flop_high=u64),
            record(h + 2, gpu_type="", gpu_uuid="GPU-uncat-nan", unknown_peak=True)]
    o = exchange(c.channel, [hello(c.a, gpus=gpus), batch(recs)], c.tokens[c.a])
    acks = o.of("ack")
    reasons = [j.reason for j in acks[0].rejections] if acks else []
    ok = (o.code == grpc.StatusCode.OK and o.kinds() == ["welcome", "ack"]
          and acks[0].acked_through == h + 2 and reasons == ["implausible-peak"] * 2)
    c.hwm = h + 2
    return check(f"OK ack({h + 2}), implausible-peak x2", f"{o} reasons={reasons}", ok), {
        rejected("implausible-peak"): 2, "flopmeter_ingest_records_total": 0}


def case_gap(c):
    jump = c.hwm + 10
    o = exchange(c.channel, [hello(c.a), batch([record(jump), record(jump + 1)])],
                 c.tokens[c.a])
    resends = o.of("resend")
    ok = (o.code == grpc.StatusCode.OK and o.kinds() == ["welcome", "resend"]
          and resends[0].from_seq == c.hwm + 1)
    return check(f"OK resend(from {c.hwm + 1}), no ack", o, ok), {
        "flopmeter_ingest_resends_total": 1, "flopmeter_ingest_records_total": 0}


def case_gap_inside_batch(c):
    # hwm+1 is quarantined (absurd), hwm+3 is valid but lies past the gap at hwm+2: the
    # collector acknowledges through hwm+1, asks for hwm+2, and must not apply hwm+3.
    h = c.hwm
    recs = [record(h + 1, mean_tensor_util=7.0), record(h + 3)]
    o = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])
    acks, resends = o.of("ack"), o.of("resend")
    ok = (o.code == grpc.StatusCode.OK and o.kinds() == ["welcome", "ack", "resend"]
          and acks[0].acked_through == h + 1 and resends[0].from_seq == h + 2)
    c.hwm = h + 1
    return check(f"OK ack({h + 1}) resend(from {h + 2})", o, ok), {
        "flopmeter_ingest_resends_total": 1, "flopmeter_ingest_records_total": 0,
        rejected("bad-value"): 1}


def case_non_increasing(c):
    h = c.hwm
    outcomes = [
        exchange(c.channel, [hello(c.a), batch([record(h + 1), record(h + 1)])], c.tokens[c.a]),
        exchange(c.channel, [hello(c.a), batch([record(h + 2), record(h + 1)])], c.tokens[c.a]),
        exchange(c.channel, [hello(c.a), batch([record(0), record(h + 1)])], c.tokens[c.a]),
    ]
    ok = all(o.code == grpc.StatusCode.INVALID_ARGUMENT and o.kinds() == ["welcome"]
             for o in outcomes)
    return check("welcome, then INVALID_ARGUMENT, three times",
                 " ".join(map(str, outcomes)), ok), {
        refused("sequence-not-increasing"): 3, "flopmeter_ingest_records_total": 0}


def case_concurrent_streams(c):
    # Many streams of one agent racing the same new records: each must be acknowledged,
    # and the records applied exactly once.
    n = 16
    h = c.hwm
    recs = [record(h + 1), record(h + 2)]
    results = [None] * n
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        results[i] = exchange(c.channel, [hello(c.a), batch(recs)], c.tokens[c.a])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [str(o) for o in results
           if o is None or o.code != grpc.StatusCode.OK
           or [a.acked_through for a in o.of("ack")] != [h + 2]]
    c.hwm = h + 2
    c.expected = add(c.expected, recs)
    return check(f"{n}x OK ack({h + 2}); applied once", f"bad={bad}", not bad), {
        "flopmeter_ingest_records_total": 2,
        "flopmeter_ingest_duplicate_records_total": 2 * (n - 1)}


CASES = [
    ("baseline", case_baseline),
    ("garbage-first-message", case_garbage_first),
    ("garbage-after-hello", case_garbage_after_hello),
    ("truncated-hello", case_truncated),
    ("truncated-batch", case_truncated_batch),
    ("oversized-batch", case_oversized),
    ("oversized-hello", case_oversized_hello),
    ("batch-before-hello", case_batch_before_hello),
    ("second-hello", case_second_hello),
    ("bad-hello-agent-id", case_bad_hello_identity),
    ("hostile-hello-strings", case_hostile_hello_strings),
    ("wrong-token", case_wrong_token),
    ("no-token", case_no_token),
    ("unknown-agent", case_unknown_agent),
    ("forged-agent-id", case_forged_agent_id),
    ("replay", case_replay),
    ("absurd-values", case_absurd_values),
    ("absurd-operator-peak", case_absurd_operator_peak),
    ("absurd-declarations", case_absurd_declarations),
    ("admin-absurd-numbers-and-strings", case_admin_absurd_numbers_and_strings),
    ("undeclared-gpus", case_undeclared_gpus),
    ("overlapping-intervals", case_overlapping_intervals),
    ("event-time-1971", case_event_time_1971),
    ("look-alike-names", case_look_alike_names),
    ("silent-connection", case_silent_connection),
    ("silent-stream", case_silent_stream),
    ("not-grpc-content-type", case_not_grpc),
    ("sequence-gap", case_gap),
    ("gap-inside-batch", case_gap_inside_batch),
    ("non-increasing-seqs", case_non_increasing),
    ("concurrent-streams", case_concurrent_streams),
    ("descriptor-flood", case_descriptor_flood),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grpc", required=True, help="collector gRPC HOST:PORT")
    p.add_argument("--http", required=True, help="collector HTTP HOST:PORT")
    p.add_argument("--tokens", required=True, help="the collector's --agent-tokens file")
    p.add_argument("--agent", action="append", required=True,
                   help="an agent id of the tokens file (twice: A, then B)")
    p.add_argument("--max-message-bytes", type=int, required=True,
                   help="the collector's --max-message-bytes")
    p.add_argument("--proto-root", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto"))
    p.add_argument("--only", help="run only the cases whose name contains this")
    p.add_argument("--hello-timeout", type=float, default=30,
                   help="the collector's --hello-timeout, seconds")
    p.add_argument("--collector-pid", type=int, help="for the descriptor flood's CPU figure")
    p.add_argument("--tls-ca", help="mutual TLS mode: the CA of the collector and the clients; "
                   "runs the TLS cases only")
    p.add_argument("--tls-cert", help="an agent's client certificate (its id: the first --agent)")
    p.add_argument("--tls-key")
    p.add_argument("--admin-cert", help="the CLI's client certificate (flopmeter certs dev)")
    p.add_argument("--admin-key")
    p.add_argument("--flood", type=int, default=400,
                   help="connections of the descriptor flood (above the collector's limit)")
    args = p.parse_args()
    if len(args.agent) != 2:
        p.error("--agent must be given twice")

    with tempfile.TemporaryDirectory(prefix="flopmeter-pb-") as out:
        generate_stubs(args.proto_root, out)
        with open(args.tokens, "rb") as f:
            tokens = tomllib.load(f)
        cases = CASES
        if args.tls_ca:
            import ssl

            global HTTP_TLS
            HTTP_TLS = ssl.create_default_context(cafile=args.tls_ca)
            channel = None
            cases = TLS_CASES
        else:
            channel = grpc.insecure_channel(args.grpc)
            grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        c = Ctx(args, channel, args.agent)
        c.tokens = tokens
        if args.tls_ca:
            c.expected = totals(args.http)
        passed = failed = 0
        for name, fn in cases:
            if args.only and name != "baseline" and args.only not in name:
                continue
            before = counters(args.http)
            try:
                (expected, got, ok), deltas = fn(c)
            except Exception as e:  # a client-side surprise is a failed case, not a crash
                expected, got, ok, deltas = "no exception", repr(e), False, {}
            after = counters(args.http)
            notes = []
            for key, want in deltas.items():
                moved = after.get(key, 0) - before.get(key, 0)
                if want == ">0" and moved > 0:
                    continue
                if moved != want:
                    ok = False
                    notes.append(f"{key} moved {moved:g}, expected {want}")
            t = totals(args.http)
            if t != c.expected:
                ok = False
                notes.append(f"totals {t} != expected {c.expected}")
            got = str(got)
            if len(got) > 400:
                got = got[:400] + "..."
            extra = f" [{'; '.join(notes)}]" if notes else ""
            print(f"CASE {name} expected={expected} got={got}{extra} "
                  f"{'PASS' if ok else 'FAIL'}", flush=True)
            passed += ok
            failed += not ok
        if channel:
            channel.close()
        print("TOTALS " + json.dumps({k: str(v) for k, v in (c.expected or {}).items()}))
        print(f"{passed} passed, {failed} failed")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
