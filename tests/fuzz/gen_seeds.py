#!/usr/bin/env python3
"""Seed corpora for the mms fuzz targets, built from real inputs:
the wire format of lib/protocol/codec.h (requests the CLI sends), testdata's
JSON tensor files and adapters, safetensors in mms's packed layout, mms.toml
texts, unit strings. Usage: gen_seeds.py TESTDATA_DIR OUT_CORPUS_DIR"""
import json, os, struct, sys

testdata, out = sys.argv[1], sys.argv[2]
MAGIC, VERSION = 0x504D4D53, 1
DT = {"float32": (1, "f", 4), "float64": (2, "d", 8), "float16": (3, "e", 2), "bfloat16": (4, "H", 2),
      "int8": (5, "b", 1), "uint8": (6, "B", 1), "int16": (7, "h", 2), "int32": (8, "i", 4),
      "int64": (9, "q", 8), "bool": (10, "?", 1)}
ST = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16", "int8": "I8", "uint8": "U8",
      "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL"}

def pad8(n): return (8 - (n & 7)) & 7

def encode(mtype, rid, body, tensors=()):
    b = json.dumps(body, separators=(",", ":")).encode()
    out = struct.pack("<IHHQII", MAGIC, VERSION, mtype, rid, len(b), len(tensors)) + b
    for name, dtype, shape, data in tensors:
        code, _, size = DT[dtype]
        nb = name.encode()
        out += struct.pack("<BBHI", code, len(shape), len(nb), 0)
        out += b"".join(struct.pack("<q", d) for d in shape)
        out += struct.pack("<Q", len(data)) + nb
        out += b"\0" * pad8(len(out)) + data
    return out

def tdata(dtype, n, seed=1):
    _, fmt, size = DT[dtype]
    if dtype == "bfloat16": return b"".join(struct.pack("<H", 0x3f80 + i) for i in range(n))
    if dtype == "bool": return bytes([i & 1 for i in range(n)])
    if fmt in "fde": return b"".join(struct.pack("<" + fmt, (i - 2) * 0.5) for i in range(n))
    return b"".join(struct.pack("<" + fmt, (i * seed) % 100 - 50 if fmt not in "B" else i) for i in range(n))

def w(sub, name, data):
    d = os.path.join(out, sub); os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f: f.write(data if isinstance(data, bytes) else data.encode())

# ---- codec: the requests of messages.h, as the CLI sends them
reqs = [(0x0001, {}), (0x0002, {}), (0x0003, {}), (0x0004, {}), (0x0005, {}), (0x0102, {}),
        (0x0103, {"model": "tiny"}), (0x0104, {"model": "tiny:2"}), (0x0105, {"model": "tiny"}),
        (0x0106, {"model": "tiny"}), (0x0107, {"model": "tiny"}),
        (0x0201, {"request_id": "00000000000000000000000000000001", "metrics": {"click": 1, "revenue": 2.5}}),
        (0x0202, {"experiment": "exp1"}), (0x0301, {"model": "tiny"}), (0x0302, {"model": "tiny", "limit": 10}),
        (0x0401, {"model": "tiny"}), (0x0501, {}), (0x0601, {})]
for i, (t, body) in enumerate(reqs):
    w("codec", f"req_{t:04x}", encode(t, 1000 + i, body))
x = ("x", "float32", [2, 4], tdata("float32", 8))
w("codec", "predict_tiny", encode(0x0101, 7, {"model": "tiny", "user": "u1", "tenant": "t", "timeout_ms": 500}, [x]))
w("codec", "predict_adapter", encode(0x0101, 8, {"model": "llm:3", "adapter": "a1"}, [("x", "float32", [1, 16], tdata("float32", 16))]))
for j, dt in enumerate(DT):
    shape = [[], [3], [2, 3], [0, 5], [1, 1, 2]][j % 5]
    n = 1
    for d in shape: n *= d
    w("codec", f"predict_{dt}", encode(0x0101, 100 + j, {"model": "m"}, [("in_" + dt, dt, shape, tdata(dt, n))]))
w("codec", "predict_multi", encode(0x0101, 9, {"model": "rec"},
      [("user", "int64", [2], tdata("int64", 2)), ("item", "int64", [2], tdata("int64", 2)),
       ("ctx", "float16", [2, 3], tdata("float16", 6)), ("name_\u00e9\u4e2d", "uint8", [5], tdata("uint8", 5))]))
w("codec", "error_reply", encode(0x7FFF, 3, {"code": "PROTOCOL", "message": "x", "reason": "bad_json"}))
w("codec", "reply_predict", encode(0x8101, 7, {"latency_us": 10, "version": 2}, [x]))
w("codec", "nested_body", encode(0x0001, 1, {"a": [[[{"b": [1, 2, {"c": "\\\"]["}]}]]]}))
w("codec", "long_name", encode(0x0101, 1, {"model": "m"}, [("n" * 300, "int8", [4], tdata("int8", 4))]))

# ---- tensor files: testdata's JSON inputs (mode byte 0: JSON in memory; 2: through a file)
tf = []
for f in sorted(os.listdir(testdata)):
    if f.endswith(".json"):
        tf.append((f, open(os.path.join(testdata, f), "rb").read()))
extra = {
    "all_dtypes.json": json.dumps({dt: {"dtype": dt, "shape": [2, 2], "data": [[0, 1], [1, 0]]} for dt in DT}),
    "nonfinite.json": json.dumps({"a": {"dtype": "float16", "shape": [4], "data": ["nan", "inf", "-inf", 65504]},
                                  "b": {"dtype": "bfloat16", "shape": [2], "data": [1e38, -3.5]},
                                  "c": {"dtype": "F64", "shape": [], "data": 1e308}}),
    "scalar.json": json.dumps({"s": {"dtype": "int64", "shape": [], "data": [9007199254740993]}}),
    "alias.json": json.dumps({"h": {"dtype": "half", "shape": [1, 3], "data": [[1e-7, 6e-8, -0.0]]},
                              "l": {"dtype": "long", "shape": [2], "data": [-9223372036854775808, 18446744073709551615]},
                              "u": {"dtype": "u8", "shape": [2], "data": [255, 0]}}),
    "bom.json": "\ufeff" + json.dumps({"x": {"dtype": "bool", "shape": [3], "data": [True, False, 1]}}),
    "nested3.json": json.dumps({"x": {"dtype": "int16", "shape": [2, 1, 2], "data": [[[1, 2]], [[3, 4]]]}}),
}
tf += [(k, v.encode()) for k, v in extra.items()]
for name, data in tf:
    w("tensor_file", "json_" + name, b"\x00" + data)
    w("tensor_file", "file_json_" + name, b"\x02\x00" + data)
    w("tensor_file", "file_noext_" + name, b"\x02\x02" + data)

def safetensors(tensors, metadata=None, align=1, pads=True):
    h, off, blobs, pi = {}, 0, b"", 0
    for name, dt, shape, data in tensors:
        a = (off + align - 1) // align * align
        if a > off and pads:
            h[f"__mms_pad_{pi}"] = {"dtype": "U8", "shape": [a - off], "data_offsets": [off, a]}; pi += 1
            blobs += b"\0" * (a - off); off = a
        h[name] = {"dtype": ST[dt], "shape": shape, "data_offsets": [off, off + len(data)]}
        blobs += data; off += len(data)
    if metadata: h["__metadata__"] = metadata
    j = json.dumps(h, separators=(",", ":")).encode()
    start = 8 + len(j); j += b" " * ((start + 7) // 8 * 8 - start)
    return struct.pack("<Q", len(j)) + j + blobs

sts = {
    "one.st": safetensors([x]),
    "all.st": safetensors([(dt, dt, [3], tdata(dt, 3)) for dt in DT], {"format": "pt"}, align=64),
    "packed.st": safetensors([("fc.weight", "float32", [4, 4], tdata("float32", 16)), ("fc.bias", "float32", [4], tdata("float32", 4)),
                              ("empty", "int64", [0, 3], b"")],
                             {"format": "mms-packed-1", "source": "/x/tiny.pt", "alias:fc2.weight": "fc.weight",
                              "mms.module_xxh3_64": "0123456789abcdef", "mms.xxh3_64": "0123456789abcdef",
                              "mms.header_xxh3_64": "fedcba9876543210"}, align=64),
}
for f in sorted(os.listdir(os.path.join(testdata, "adapters"))):
    p = os.path.join(testdata, "adapters", f, "adapter_model.safetensors")
    if os.path.exists(p): sts[f"adapter_{f}.st"] = open(p, "rb").read()
for name, data in sts.items():
    w("tensor_file", "st_" + name, b"\x01" + data)
    w("tensor_file", "file_st_" + name, b"\x02\x01" + data)

# ---- adapters: MODE, adapter_config.json, "\n#--#\n", safetensors
SEP = b"\n#--#\n"
for f in sorted(os.listdir(os.path.join(testdata, "adapters"))):
    d = os.path.join(testdata, "adapters", f)
    cfg = open(os.path.join(d, "adapter_config.json"), "rb").read()
    p = os.path.join(d, "adapter_model.safetensors")
    st = open(p, "rb").read() if os.path.exists(p) else b""
    for mode in (0, 2, 4):
        w("adapter", f"dir_{f}_{mode}", bytes([mode]) + cfg + SEP + st)
cfgs = {
    "layers": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": "layers"},
    "regex": {"r": 4, "lora_alpha": 16, "use_rslora": True, "target_modules": ".*\\.(q|v)$|^(q|v)$"},
    "layers_int": {"r": 2, "target_modules": ["up_proj"], "layers_to_transform": 2, "layers_pattern": ["layers"]},
}
a1 = open(os.path.join(testdata, "adapters", "a1", "adapter_model.safetensors"), "rb").read()
for k, c in cfgs.items():
    w("adapter", f"dir_cfg_{k}", b"\x00" + json.dumps(c).encode() + SEP + a1)
base = safetensors([("q.weight", "float32", [16, 16], tdata("float32", 256)), ("v.weight", "float32", [16, 16], tdata("float32", 256)),
                    ("o.weight", "float32", [4, 16], tdata("float32", 64)), ("o.bias", "float32", [4], tdata("float32", 4))],
                   {"format": "mms-packed-1", "alias:k.weight": "q.weight"}, align=64)
a1cfg = open(os.path.join(testdata, "adapters", "a1", "adapter_config.json"), "rb").read()
w("adapter", "base_packed", b"\x01" + a1cfg + SEP + base)
w("adapter", "base_packed_stacked", b"\x05" + a1cfg + SEP + base)
info = {"rank": 4, "alpha": 8.0, "rslora": False, "scale": 2.0, "dtype": "float32",
        "targets": [{"module": "q", "in": 16, "out": 16}], "bytes": 512}
w("adapter", "packed_adapter_meta", b"\x01" + a1cfg + SEP + safetensors(
    [("q.lora_A", "float32", [4, 16], tdata("float32", 64)), ("q.lora_B", "float32", [16, 4], tdata("float32", 64))],
    {"format": "mms-adapter-1", "mms.adapter": json.dumps(info)}, align=64))

# ---- config
tomls = {
 "full.toml": '''[daemon]
socket = "/run/mms/mms.sock"
data_dir = "/var/lib/mms"
contexts = 256
workers = 0
max_message_bytes = "256MiB"
shutdown_grace = "10s"

[log]
level = "info"
file = ""
format = "json"

[registry]
path = "/var/lib/mms/registry.db"
allowed_roots = ["/srv/models", "/opt/m"]
poll_interval = "250ms"
busy_timeout = "5s"

[pool]
devices = ["cpu", "cuda:0"]
device_budget = "auto"
host_budget = "8GiB"
pinned = ["tiny:1"]
policy = "lrfu"
policy_half_life = 350.5
load_threads = 2
load_retry_backoff = "2s"
warmup = true
intra_op_threads = 0

[experiments]
attribution_window = "1h"
attribution_capacity = 1000000
flush_interval = "2s"
confidence = 0.95

[scheduler]
workers = 0
queue_depth = 1000
max_queue_delay = "1ms"
high_priority_sla_ms = 100
high_priority = ["a"]
low_priority = ["b"]
starvation_interval = 8

[limits]
model_qps = 0
model_burst = 0
tenant_qps = 10.5
tenant_burst = 1e3

[shadow]
duty_cycle = 0.25

[lora]
device_budget = "256MiB"
host_budget = 1073741824

[metrics]
address = "[::1]:9464"
''',
 "small.toml": '[pool]\ndevices = "auto"\ndevice_budget = "1.5GB"\n[metrics]\naddress = ":9464"\n',
 "inline.toml": 'daemon = { contexts = 8, shutdown_grace = "1m30s" }\nlog.level = "debug"\n# comment\n[registry]\nallowed_roots = [ \'lit\', """multi\nline""" ]\n',
 "dates.toml": '[log]\nfile = \'C:\\path\'\n[x]\nd = 1979-05-27T07:32:00Z\nt = 07:32:00\nh = 0xDEAD_BEEF\no = 0o755\nb = 0b11\nf = +inf\nn = nan\n[[arr]]\na = 1\n[[arr]]\n',
 "unicode.toml": '[daemon]\nsocket = "\\u00e9\\U0001F600 \\t"\n"data_dir" = "x"\n',
 "empty.toml": "",
}
for k, v in tomls.items(): w("config", k, v)

# ---- pbtxt (Triton config.pbtxt)
pbtxts = {
 "bert.pbtxt": '''name: "bert"
platform: "pytorch_libtorch"
max_batch_size: 8
input [
  { name: "INPUT__0" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "INPUT__1" data_type: TYPE_INT64 dims: [ -1, 4 ] reshape { shape: [ 3, -1 ] } }
]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1, 768 ] } ]
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
parameters: { key: "DISABLE_OPTIMIZED_EXECUTION" value: { string_value: "tr\\x75e" } }
''',
 "named.pbtxt": 'max_batch_size: 0x10\ninput < name: \'ids\' dims: 2 dims: -1 >; input { name: "mask" dims: [2, 3, -1] },\n'
                '[ext.x] { f: -inf g: 1.5e-3 }\n',
 "plain.pbtxt": 'name: "x" # comment\nmax_batch_size: 0\ninput [ { name: "a" dims: [ 4 ] } ]\n',
 "warmup.pbtxt": 'max_batch_size: 4\ninput [ { name: "ids" dims: [ -1 ] }, { name: "mask" dims: [ 3, -1 ] }, { name: "free" dims: 1 } ]\n'
                 'model_warmup [ { name: "w" batch_size: 2 inputs { key: "ids" value: { data_type: TYPE_INT64 dims: [ 3 ] zero_data: true } }\n'
                 'inputs { key: "mask" value: { data_type: TYPE_FP16 dims: [ 3, 4 ] random_data: true } }\n'
                 'inputs { key: "free" value: { data_type: 11 dims: [ 1 ] input_data_file: "f.bin" } } } ]\n',
}
for k, v in pbtxts.items(): w("pbtxt", k, v)

# ---- units
units = ["250ms", "10s", "30m", "2h", "1d", "1m30s", "1h 30m", "1.5s", "90", "0", "500us", "1500\u00b5s", "100ns",
         "512MiB", "8GiB", "1.5GB", "1048576", "1TiB", "64KiB", "1000B", "2k", "3T", "+5", "1e3ms", "0.001",
         "1,5,10,25,50,100", "33.333", "0.01", "100", "12.5", "17280000000000001ns", "18446744073709551615",
         "9223372036854775807ns", "2562047h", "106751d", "auto", "socket", "max_mesage_bytes"]
for i, u in enumerate(units): w("units", f"u{i:02d}", u)
print("seeds written to", out)
