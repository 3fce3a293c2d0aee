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
grpc = None


def generate_stubs(proto_root, out_dir):
    """Runs protoc (from grpcio-tools) on every proto/flopmeter/v1/*.proto."""
    global pb, grpc
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
    from flopmeter.v1 import ingest_pb2

    grpc, pb = grpc_mod, ingest_pb2


# ---------------------------------------------------------------------------------------------
# Collector observation: totals and counters over HTTP.


def http_get(http, path):
    with urllib.request.urlopen(f"http://{http}{path}", timeout=CALL_TIMEOUT_S) as r:
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
    """Every sample of /metrics whose name starts with flopmeter_ingest, keyed by name+labels."""
    out = {}
    for line in http_get(http, "/metrics").splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1).startswith("flopmeter_ingest") and not m.group(1).endswith(
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
    ("sequence-gap", case_gap),
    ("gap-inside-batch", case_gap_inside_batch),
    ("non-increasing-seqs", case_non_increasing),
    ("concurrent-streams", case_concurrent_streams),
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
    args = p.parse_args()
    if len(args.agent) != 2:
        p.error("--agent must be given twice")

    with tempfile.TemporaryDirectory(prefix="flopmeter-pb-") as out:
        generate_stubs(args.proto_root, out)
        with open(args.tokens, "rb") as f:
            tokens = tomllib.load(f)
        channel = grpc.insecure_channel(args.grpc)
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        c = Ctx(args, channel, args.agent)
        c.tokens = tokens
        passed = failed = 0
        for name, fn in CASES:
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
        channel.close()
        print("TOTALS " + json.dumps({k: str(v) for k, v in (c.expected or {}).items()}))
        print(f"{passed} passed, {failed} failed")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
