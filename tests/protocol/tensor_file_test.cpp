// Tensor files (JSON and safetensors) and input matching: round trips, and
// each malformed input refused with a message that names the problem.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "core/paths.h"
#include "protocol/input_spec.h"
#include "protocol/tensor_file.h"
#include "support/process.h"

using namespace mms;
using nlohmann::json;

namespace {
std::string JsonError(const std::string& text) {
  auto j = json::parse(text);
  auto r = TensorsFromJson(j);
  return r.ok() ? "ok" : r.status().message();
}
}  // namespace

TEST_CASE("JSON tensors: round trip of every dtype, and malformed files refused") {
  json in = json::parse(R"({
    "f": {"dtype": "float32", "shape": [2, 2], "data": [1.5, -2, 0, 3.25]},
    "d": {"dtype": "float64", "shape": [1], "data": [0.1]},
    "h": {"dtype": "float16", "shape": [2], "data": [0.5, -1]},
    "i": {"dtype": "int64", "shape": [3], "data": [1, -2, 9007199254740993]},
    "b": {"dtype": "bool", "shape": [2], "data": [true, false]}})");
  auto t = TensorsFromJson(in);
  REQUIRE_MESSAGE(t.ok(), t.status().ToString());
  REQUIRE(t->size() == 5);
  json back = TensorsToJson(*t);
  CHECK(back["f"]["data"] == in["f"]["data"]);
  CHECK(back["i"]["data"][2] == 9007199254740993LL);  // int64 exactly, not through a double
  CHECK(back["h"]["data"] == in["h"]["data"]);
  CHECK(back["b"]["data"] == in["b"]["data"]);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [3], "data": [1, 2]}})").find("3") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "complex64", "shape": [1], "data": [1]}})").find("complex64") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [-1], "data": []}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float32", "data": [1]}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "int32", "shape": [1], "data": ["one"]}})") != "ok");
  CHECK(JsonError(R"({"x": [1, 2, 3]})") != "ok");
  // dtype names in any case, torch's or safetensors'.
  for (const char* dt : {"FLOAT32", "Float32", "F32", "f32", "float"}) {
    auto x = TensorsFromJson(json::parse(std::string(R"({"x": {"dtype": ")") + dt + R"(", "shape": [1], "data": [1]}})"));
    REQUIRE_MESSAGE(x.ok(), dt);
    CHECK((*x)[0].dtype == DType::kFloat32);
  }
  CHECK(JsonError(R"({"x": {"dtype": "F8_E4M3", "shape": [1], "data": [1]}})").find("or safetensors' F32") != std::string::npos);
  // A misspelt key is named, not ignored; an empty name is refused, not dropped.
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [1], "data": [1], "dtpye": "int64"}})")
            .find("unknown key 'dtpye'") != std::string::npos);
  CHECK(JsonError(R"({"": {"dtype": "float32", "shape": [1], "data": [1]}})").find("empty name") != std::string::npos);
}

TEST_CASE("safetensors: round trip with alignment and metadata, corrupt headers refused") {
  testing::TempDir dir;
  Tensor a = Tensor::Alloc("a", DType::kFloat32, {3});
  Tensor b = Tensor::Alloc("b", DType::kInt64, {2, 2});
  for (int i = 0; i < 3; ++i) reinterpret_cast<float*>(a.mutable_data())[i] = 0.5f * static_cast<float>(i);
  for (int i = 0; i < 4; ++i) reinterpret_cast<int64_t*>(b.mutable_data())[i] = -i;
  std::string path = dir / "t.safetensors";
  REQUIRE(WriteSafetensorsFile(path, {a, b}, {{"format", "test"}}, 64).ok());
  auto h = ReadSafetensorsHeader(path);
  REQUIRE(h.ok());
  CHECK(h->metadata.at("format") == "test");
  CHECK(h->data_offset % 64 == 0);
  for (const auto& e : h->entries) CHECK((h->data_offset + e.begin) % 64 == 0);
  auto r = ReadTensorFile(path);
  REQUIRE(r.ok());
  REQUIRE(r->size() == 2);
  for (size_t i = 0; i < 2; ++i) {
    const Tensor& want = i == 0 ? a : b;
    const Tensor& got = (*r)[0].name == want.name ? (*r)[0] : (*r)[1];
    CHECK(got.shape == want.shape);
    CHECK(std::memcmp(got.data.get(), want.data.get(), want.nbytes) == 0);
  }
  // Corruptions: a header longer than the file, invalid JSON, ranges out of bounds.
  auto write = [&](const std::string& header, size_t data_bytes) {
    std::string f = dir / "bad.safetensors";
    std::ofstream o(f, std::ios::binary);
    uint64_t n = header.size();
    o.write(reinterpret_cast<const char*>(&n), 8);
    o << header << std::string(data_bytes, '\0');
    o.close();
    auto x = ReadSafetensorsFile(f);
    return x.ok() ? std::string("ok") : x.status().message();
  };
  CHECK(write(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 8) == "ok");
  CHECK(write(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", 8) != "ok");  // past the end
  CHECK(write(R"({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8) != "ok");   // bytes ≠ shape
  CHECK(write(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12) != "ok");  // overlap
  CHECK(write("{not json", 0) != "ok");
  std::string f = dir / "short.safetensors";
  std::ofstream(f, std::ios::binary) << "abc";
  CHECK_FALSE(ReadSafetensorsFile(f).ok());
  CHECK_FALSE(ReadTensorFile(dir / "missing.json").ok());
  // JSON that is not an object, or nothing at all, is named as such (it was
  // reported as "not a safetensors file").
  for (const auto& [text, says] : std::vector<std::pair<std::string, std::string>>{
           {"[1, 2]", "holds JSON that is not an object"}, {"\"x\"", "holds JSON that is not an object"},
           {"", "is empty"}, {"  \n", "is empty"}}) {
    std::string p = dir / "odd.json";
    std::ofstream(p) << text;
    auto r = ReadTensorFile(p);
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(r.status().message().find(says) != std::string::npos, r.status().message());
    CHECK(r.status().code() == Code::kInvalidArgument);
  }
}

TEST_CASE("inputs are matched to forward()'s arguments by name, dtype and shape") {
  std::vector<InputSpec> specs = InputSpecsFromJson(json::parse(
      R"([{"name": "ids", "dtype": "int64", "shape": [1, 4]}, {"name": "dense", "dtype": "float32", "shape": [1, 8]}])"));
  REQUIRE(specs.size() == 2);
  Tensor ids = Tensor::Alloc("ids", DType::kInt64, {3, 4});  // another batch size is fine
  Tensor dense = Tensor::Alloc("dense", DType::kFloat32, {3, 8});
  auto ok = MatchInputs(specs, {dense, ids}, "rec:1");
  REQUIRE(ok.ok());
  CHECK((*ok)[0].name == "ids");  // forward() order
  auto missing = MatchInputs(specs, {ids}, "rec:1");
  CHECK(missing.status().message().find("dense") != std::string::npos);
  Tensor extra = Tensor::Alloc("extra", DType::kFloat32, {1});
  CHECK(MatchInputs(specs, {ids, dense, extra}, "rec:1").status().message().find("extra") != std::string::npos);
  // The same name twice: refused (the second used to be ignored silently).
  auto twice = MatchInputs(specs, {ids, dense, Tensor::Alloc("ids", DType::kInt64, {1})}, "rec:1");
  CHECK(twice.status().message().find("'ids' is given more than once") != std::string::npos);
  Tensor wrong_dtype = Tensor::Alloc("ids", DType::kFloat32, {3, 4});
  CHECK(MatchInputs(specs, {wrong_dtype, dense}, "rec:1").status().message().find("int64") != std::string::npos);
  Tensor wrong_shape = Tensor::Alloc("dense", DType::kFloat32, {3, 9});
  CHECK_FALSE(MatchInputs(specs, {ids, wrong_shape}, "rec:1").ok());
  // Older records hold names only: any dtype and shape pass.
  auto names = InputSpecsFromJson(json::parse(R"(["ids", "dense"])"));
  CHECK(MatchInputs(names, {wrong_dtype, wrong_shape}, "rec:1").ok());
}

namespace {
// Writes a safetensors file with this header and `data_bytes` zero bytes of
// data; returns "ok" or the reader's error message.
std::string ReadSafetensorsWith(const testing::TempDir& dir, const std::string& header, size_t data_bytes) {
  std::string f = dir / "h.safetensors";
  {
    std::ofstream o(f, std::ios::binary | std::ios::trunc);
    uint64_t n = header.size();
    o.write(reinterpret_cast<const char*>(&n), 8);
    o << header << std::string(data_bytes, '\0');
  }
  auto x = ReadSafetensorsFile(f);
  return x.ok() ? std::string("ok") : x.status().message();
}
}  // namespace

TEST_CASE("safetensors: a shape whose byte size wraps 64 bits is refused, not read as 0 or 4 bytes") {
  testing::TempDir dir;
  // 2^62 F32 elements are 2^64 bytes: 0 in uint64, which matched [0, 0].
  std::string r = ReadSafetensorsWith(dir, R"({"x": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0);
  CHECK(r.find("'x'") != std::string::npos);
  CHECK(r.find("too large") != std::string::npos);
  // 2^62 + 1 elements wrap to 4 bytes.
  r = ReadSafetensorsWith(dir, R"({"x": {"dtype": "F32", "shape": [4611686018427387905], "data_offsets": [0, 4]}})", 4);
  CHECK(r.find("too large") != std::string::npos);
  // Spread over two dims, and with 8-byte elements.
  CHECK(ReadSafetensorsWith(dir, R"({"x": {"dtype": "I64", "shape": [2, 1152921504606846976], "data_offsets": [0, 0]}})", 0) != "ok");
  // An element count that itself overflows says so (it read as "bad data_offsets").
  r = ReadSafetensorsWith(dir, R"({"x": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})", 0);
  CHECK_MESSAGE(r.find("too many elements") != std::string::npos, r);
  // Neighbours that are fine still are.
  CHECK(ReadSafetensorsWith(dir, R"({"x": {"dtype": "F32", "shape": [0, 4611686018427387904], "data_offsets": [0, 0]}})", 0) == "ok");
  CHECK(ReadSafetensorsWith(dir, R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 4) == "ok");
}

TEST_CASE("Tensor::TryAlloc refuses a negative dim or a byte size that wraps size_t") {
  auto huge = Tensor::TryAlloc("x", DType::kFloat32, {int64_t{1} << 62});  // 2^64 bytes
  REQUIRE_FALSE(huge.ok());
  CHECK(huge.status().code() == Code::kInvalidArgument);
  CHECK(huge.status().message().find("'x'") != std::string::npos);
  CHECK_FALSE(Tensor::TryAlloc("x", DType::kInt64, {int64_t{1} << 61}).ok());
  CHECK_FALSE(Tensor::TryAlloc("x", DType::kFloat32, {int64_t{1} << 40, int64_t{1} << 40}).ok());  // numel overflow
  auto neg = Tensor::TryAlloc("x", DType::kFloat32, {2, -1});
  REQUIRE_FALSE(neg.ok());
  CHECK(neg.status().message().find("negative") != std::string::npos);
  auto ok = Tensor::TryAlloc("x", DType::kInt64, {3, 0});
  REQUIRE(ok.ok());
  CHECK(ok->nbytes == 0);
  CHECK(Tensor::TryAlloc("x", DType::kInt64, {2, 3})->nbytes == 48);
}

TEST_CASE("JSON tensors: data nested 200k deep is refused without recursing (it overflowed the stack)") {
  testing::TempDir dir;
  const size_t depth = 200000;
  std::string file = R"({"x": {"dtype": "float32", "shape": [1], "data": )" + std::string(depth, '[') + "1" +
                     std::string(depth, ']') + "}}";
  std::ofstream(dir / "deep.json") << file;  // ~400 KB, as `mms predict --input` reads it
  auto r = ReadTensorFile(dir / "deep.json");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == Code::kInvalidArgument);
  CHECK(r.status().message().find("'x'") != std::string::npos);
  CHECK(r.status().message().find("nested") != std::string::npos);
  // Nesting as deep as a (legal, if odd) shape of as many dims is walked without recursion too.
  std::string shape = "[1";
  for (size_t i = 1; i < depth; ++i) shape += ",1";
  shape += "]";
  std::ofstream(dir / "deep_ok.json") << R"({"x": {"dtype": "float32", "shape": )" + shape +
                                          R"(, "data": )" + std::string(depth, '[') + "2.5" + std::string(depth, ']') + "}}";
  auto ok = ReadTensorFile(dir / "deep_ok.json");
  REQUIRE_MESSAGE(ok.ok(), ok.status().ToString());
  CHECK((*ok)[0].shape.size() == depth);
  CHECK((*ok)[0].as<float>()[0] == 2.5f);
}

TEST_CASE("JSON tensors: data is flat or nested exactly as the shape, ragged nesting is refused") {
  auto floats = [](const std::string& text) {
    auto r = TensorsFromJson(json::parse(text));
    REQUIRE_MESSAGE(r.ok(), r.status().ToString());
    return TensorToDoubles((*r)[0]);
  };
  const std::vector<double> want{1, 2, 3, 4};
  CHECK(floats(R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [1, 2, 3, 4]}})") == want);
  CHECK(floats(R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}})") == want);
  CHECK(floats(R"({"x": {"dtype": "int64", "shape": [2, 1, 2], "data": [[[1, 2]], [[3, 4]]]}})") == want);
  CHECK(floats(R"({"x": {"dtype": "float32", "shape": [], "data": 7}})") == std::vector<double>{7});
  CHECK(floats(R"({"x": {"dtype": "float32", "shape": [], "data": [7]}})") == std::vector<double>{7});
  CHECK(floats(R"({"x": {"dtype": "float32", "shape": [2, 0], "data": [[], []]}})").empty());
  CHECK(floats(R"({"x": {"dtype": "float32", "shape": [2, 0], "data": []}})").empty());

  // The reviewed case: 4 values in all, but rows of 3 and 1 (was read as [[1, 2], [3, 4]]).
  std::string e = JsonError(R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [[1, 2, 3], [4]]}})");
  CHECK(e.find("'x'") != std::string::npos);
  CHECK(e.find("data[0] has 3 entries but dimension 1 is 2") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [[1, 2], [3], [4]]}})")
            .find("has 3 entries but dimension 0 is 2") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [[[1, 2], [3, 4]]]}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [4], "data": [[1], [2], [3], [4]]}})")
            .find("data[0] is a list") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [[1, 2], 3, 4]}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [[1, [2]], [3, 4]]}})")
            .find("data[0][1] is a list") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [2, 0], "data": [[], [[]]]}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [], "data": [[7]]}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [2], "data": 7}})") != "ok");
}

TEST_CASE("JSON tensors: floats beyond the dtype's range are refused, not turned into inf") {
  std::string e = JsonError(R"({"x": {"dtype": "float32", "shape": [2], "data": [1, 1e39]}})");
  CHECK(e.find("'x'") != std::string::npos);
  CHECK(e.find("value 1 (1e+39)") != std::string::npos);
  CHECK(e.find("out of range for float32") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [1], "data": [-1e39]}})").find("float32") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float16", "shape": [1], "data": [70000]}})").find("float16") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float16", "shape": [1], "data": [-65520]}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "bfloat16", "shape": [1], "data": [3.4e38]}})").find("bfloat16") != std::string::npos);
  // The largest finite values (and those that round down to them) are fine.
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [2], "data": [3.4028235e38, -3.4028235e38]}})") == "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float16", "shape": [2], "data": [65504, 65519]}})") == "ok");
  CHECK(JsonError(R"({"x": {"dtype": "bfloat16", "shape": [1], "data": [3.38e38]}})") == "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float64", "shape": [1], "data": [1e308]}})") == "ok");
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [1], "data": [1e-50]}})") == "ok");  // underflow rounds to 0
}

TEST_CASE("JSON tensors: NaN and infinities written as \"nan\"/\"inf\"/\"-inf\" read back (predict --output as --input)") {
  testing::TempDir dir;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<Tensor> in;
  for (DType dt : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kBFloat16}) {
    auto r = TensorsFromJson(json::parse(std::string(R"({"t": {"dtype": ")") + DTypeName(dt) +
                                         R"(", "shape": [4], "data": [1.5, 0, 0, 0]}})"));
    REQUIRE(r.ok());
    Tensor t = (*r)[0];
    t.name = DTypeName(dt);
    in.push_back(t);
  }
  // Non-finite values in every float dtype, set through a float32 copy.
  auto set = [&](Tensor& t, size_t i, float v) {
    if (t.dtype == DType::kFloat32) reinterpret_cast<float*>(t.mutable_data())[i] = v;
    if (t.dtype == DType::kFloat64) reinterpret_cast<double*>(t.mutable_data())[i] = v;
    if (t.dtype == DType::kFloat16) reinterpret_cast<uint16_t*>(t.mutable_data())[i] = std::isnan(v) ? 0x7e00 : v > 0 ? 0x7c00 : 0xfc00;
    if (t.dtype == DType::kBFloat16) reinterpret_cast<uint16_t*>(t.mutable_data())[i] = std::isnan(v) ? 0x7fc0 : v > 0 ? 0x7f80 : 0xff80;
  };
  for (auto& t : in) {
    set(t, 1, nan);
    set(t, 2, inf);
    set(t, 3, -inf);
  }
  json written = TensorsToJson(in);
  for (const auto& t : in) CHECK(written[t.name]["data"] == json::parse(R"([1.5, "nan", "inf", "-inf"])"));
  REQUIRE(WriteTensorFile(dir / "o.json", in).ok());
  auto back = ReadTensorFile(dir / "o.json");
  REQUIRE_MESSAGE(back.ok(), back.status().ToString());
  REQUIRE(back->size() == in.size());
  for (const auto& t : *back) {
    CAPTURE(t.name);
    std::vector<double> v = TensorToDoubles(t);
    REQUIRE(v.size() == 4);
    CHECK(v[0] == 1.5);
    CHECK(std::isnan(v[1]));
    CHECK(v[2] == std::numeric_limits<double>::infinity());
    CHECK(v[3] == -std::numeric_limits<double>::infinity());
  }
  // Only exactly what the writer emits; other spellings are refused with the accepted ones.
  std::string e = JsonError(R"({"x": {"dtype": "float32", "shape": [1], "data": ["Infinity"]}})");
  CHECK(e.find("\"inf\"") != std::string::npos);
  CHECK(JsonError(R"({"x": {"dtype": "float32", "shape": [1], "data": [null]}})") != "ok");
  CHECK(JsonError(R"({"x": {"dtype": "int32", "shape": [1], "data": ["nan"]}})") != "ok");
}

namespace {
// The raw header of a safetensors file: what any reader of the format sees.
json RawHeader(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  std::string h(n, '\0');
  in.read(h.data(), static_cast<std::streamsize>(n));
  return json::parse(h);
}
// The format's own rule: the entries, sorted by offset, cover the data
// region exactly, without holes (the reference reader refuses a gap).
void CheckNoHoles(const std::string& path) {
  json h = RawHeader(path);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = h.begin(); it != h.end(); ++it)
    if (it.key() != "__metadata__") ranges.push_back({it.value()["data_offsets"][0], it.value()["data_offsets"][1]});
  std::sort(ranges.begin(), ranges.end());
  uint64_t at = 0;
  for (const auto& [b, e] : ranges) {
    CHECK(b == at);
    at = e;
  }
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  uint64_t size = static_cast<uint64_t>(in.tellg());
  auto parsed = ReadSafetensorsHeader(path);
  REQUIRE(parsed.ok());
  CHECK(parsed->data_offset + at == size);
  CHECK(parsed->data_offset % 8 == 0);
}
}  // namespace

TEST_CASE("safetensors: written files have no holes — aligned ones fill gaps with entries mms skips") {
  // `predict --output x.safetensors` of a dict output left a 48-byte gap,
  // which the format's reference reader refuses (InvalidOffset).
  testing::TempDir dir;
  Tensor a = Tensor::Alloc("scores", DType::kFloat32, {2, 2});
  Tensor b = Tensor::Alloc("top", DType::kInt64, {2});
  reinterpret_cast<float*>(a.mutable_data())[3] = 7.5f;
  reinterpret_cast<int64_t*>(b.mutable_data())[1] = 42;
  std::string out = dir / "out.safetensors";
  REQUIRE(WriteTensorFile(out, {a, b}).ok());
  CheckNoHoles(out);
  json raw = RawHeader(out);
  CHECK(raw["scores"]["data_offsets"] == json::array({0, 16}));  // contiguous: no filler needed
  CHECK(raw["top"]["data_offsets"] == json::array({16, 32}));
  // Packed files keep 64-byte alignment for the device: the gap is an entry.
  std::string packed = dir / "packed.safetensors";
  REQUIRE(WriteSafetensorsFile(packed, {a, b}, {}, 64, /*checksum=*/true).ok());
  CheckNoHoles(packed);
  CHECK(RawHeader(packed).contains(std::string(kSafetensorsPadPrefix) + "0"));
  auto h = ReadSafetensorsHeader(packed);
  REQUIRE(h.ok());
  REQUIRE(h->entries.size() == 2);  // the filler is not a tensor
  for (const auto& e : h->entries) CHECK((h->data_offset + e.begin) % 64 == 0);
  auto back = ReadTensorFile(packed);
  REQUIRE(back.ok());
  REQUIRE(back->size() == 2);
  CHECK(reinterpret_cast<const int64_t*>((*back)[1].data.get())[1] == 42);
  // A filler is checked like any entry (one overlapping a tensor is refused),
  // and only U8 bytes count as filler: a tensor of another dtype so named stays.
  auto raw_file = [&](const std::string& header, size_t data_bytes) {
    std::string f = dir / "pads.safetensors";
    std::ofstream o(f, std::ios::binary);
    uint64_t n = header.size();
    o.write(reinterpret_cast<const char*>(&n), 8);
    o << header << std::string(data_bytes, '\0');
    o.close();
    return ReadSafetensorsHeader(f);
  };
  auto overlap = raw_file(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "__mms_pad_0": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}})", 12);
  CHECK_FALSE(overlap.ok());
  // A padding name on anything but 1-D U8: read as a tensor, it could not be written back (fuzzing).
  auto named = raw_file(R"({"__mms_pad_0": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 8);
  REQUIRE_FALSE(named.ok());
  CHECK(named.status().message().find("a name mms reserves for 1-D U8 padding") != std::string::npos);
  // An extension in capitals is still safetensors (it was written as JSON).
  std::string upper = dir / "OUT.SAFETENSORS";
  REQUIRE(WriteTensorFile(upper, {a}).ok());
  CHECK(ReadSafetensorsHeader(upper).ok());
  CHECK(ReadTensorFile(upper).ok());
}

TEST_CASE("tensor files: a key given twice, a directory, a byte order mark, text that is neither format") {
  testing::TempDir dir;
  auto read = [&](const std::string& name, const std::string& text) {
    std::string p = dir / name;
    std::ofstream(p, std::ios::binary) << text;
    auto r = ReadTensorFile(p);
    return r.ok() ? std::string("ok") : r.status().message();
  };
  // The later value used to win silently.
  std::string twice = read("twice.json", R"({"x": {"dtype": "float32", "shape": [1], "data": [1]},
                                           "x": {"dtype": "float32", "shape": [1], "data": [2]}})");
  CHECK_MESSAGE(twice.find("the key 'x' appears twice") != std::string::npos, twice);
  std::string inner = read("inner.json", R"({"x": {"dtype": "float32", "dtype": "int64", "shape": [1], "data": [1]}})");
  CHECK_MESSAGE(inner.find("'dtype' appears twice") != std::string::npos, inner);
  // Same-named keys in different objects are fine.
  CHECK(read("two.json", R"({"x": {"dtype": "float32", "shape": [1], "data": [1]},
                            "y": {"dtype": "float32", "shape": [1], "data": [2]}})") == "ok");
  // In a safetensors header too (the format forbids it).
  std::string st = dir / "twice.safetensors";
  {
    std::string header = R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                             "x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})";
    std::ofstream o(st, std::ios::binary);
    uint64_t n = header.size();
    o.write(reinterpret_cast<const char*>(&n), 8);
    o << header << std::string(8, '\0');
  }
  auto r = ReadTensorFile(st);
  REQUIRE_FALSE(r.ok());
  CHECK_MESSAGE(r.status().message().find("'x' appears twice") != std::string::npos, r.status().message());
  // A UTF-8 byte order mark before the JSON is skipped (it read as "not an object").
  CHECK(read("bom.json", "\xEF\xBB\xBF{\"x\": {\"dtype\": \"float32\", \"shape\": [1], \"data\": [1]}}") == "ok");
  // A directory is named as one (it read as "is empty").
  auto d = ReadTensorFile(dir.path());
  REQUIRE_FALSE(d.ok());
  CHECK_MESSAGE(d.status().message().find("is a directory") != std::string::npos, d.status().message());
  // Text that is neither: said so, with where the JSON went wrong (it read as
  // "not a safetensors file (header length does not fit)").
  std::string text = read("notes.txt", "hello, these are not tensors\n");
  CHECK_MESSAGE(text.find("is neither JSON nor a safetensors file") != std::string::npos, text);
  // A number JSON cannot hold says so, not only "not valid JSON".
  std::string big = read("big.json", R"({"x": {"dtype": "float32", "shape": [1], "data": [-1e400]}})");
  CHECK_MESSAGE(big.find("1e400") != std::string::npos, big);
}

TEST_CASE("safetensors: a packed file's checksums cover its header too — names, shapes, offsets and metadata") {
  // Only the tensor bytes were covered: two names swapped in the header, or
  // an adapter's scale edited in the metadata, loaded as healthy and served
  // wrong outputs.
  testing::TempDir dir;
  Tensor q = Tensor::Alloc("q.weight", DType::kFloat32, {2, 2});
  Tensor v = Tensor::Alloc("v.weight", DType::kFloat32, {2, 2});
  reinterpret_cast<float*>(q.mutable_data())[0] = 1.5f;
  reinterpret_cast<float*>(v.mutable_data())[0] = -2.5f;
  const std::string path = dir / "packed.safetensors";
  REQUIRE(WriteSafetensorsFile(path, {q, v}, {{"scale", "2.0"}}, 64, /*checksum=*/true).ok());
  auto read = [](const std::string& p, SafetensorsHeader* h) {
    std::ifstream in(p, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    auto parsed = ReadSafetensorsHeader(p);
    REQUIRE(parsed.ok());
    *h = *parsed;
    return bytes;
  };
  auto verify = [&](const std::string& p) {
    SafetensorsHeader h;
    std::string bytes = read(p, &h);
    return VerifySafetensorsChecksum(h, reinterpret_cast<const uint8_t*>(bytes.data()) + h.data_offset,
                                     bytes.size() - h.data_offset, p);
  };
  CHECK(verify(path).ok());
  // Same-length edits of the header only: each is caught, the tensor bytes untouched.
  auto edited = [&](const std::string& from, const std::string& to) {
    SafetensorsHeader h;
    std::string bytes = read(path, &h);
    REQUIRE(from.size() == to.size());
    size_t at = bytes.find(from);
    REQUIRE(at != std::string::npos);
    REQUIRE(at < h.data_offset);
    std::string copy = bytes;
    copy.replace(at, from.size(), to);
    size_t second = bytes.find(to);
    if (second != std::string::npos && second < h.data_offset) copy.replace(second, to.size(), from);  // a swap
    const std::string out = dir / "edited.safetensors";
    std::ofstream(out, std::ios::binary) << copy;
    return verify(out);
  };
  Status swapped = edited("\"q.weight\"", "\"v.weight\"");
  CHECK(swapped.code() == Code::kCorrupt);
  CHECK_MESSAGE(swapped.message().find("header (names, shapes, offsets, metadata) does not match") != std::string::npos,
                swapped.message());
  CHECK(edited("\"scale\":\"2.0\"", "\"scale\":\"9.0\"").code() == Code::kCorrupt);
  CHECK(edited("\"shape\":[2,2]", "\"shape\":[1,4]").code() == Code::kCorrupt);
  // A file written before header checksums (no such key) still verifies by its data alone.
  SafetensorsHeader h;
  std::string bytes = read(path, &h);
  h.metadata.erase(kSafetensorsHeaderChecksumKey);
  h.metadata["scale"] = "9.0";
  CHECK(VerifySafetensorsChecksum(h, reinterpret_cast<const uint8_t*>(bytes.data()) + h.data_offset,
                                  bytes.size() - h.data_offset, path)
            .ok());
}

TEST_CASE("safetensors: a file with an empty tensor, as the writer lays it out, reads back") {
  // An empty tensor shares its offset with the next: read as an overlap, so
  // a model with an empty parameter could be packed but not loaded.
  testing::TempDir dir;
  Tensor a = Tensor::Alloc("a", DType::kFloat32, {4});
  Tensor z = Tensor::Alloc("z", DType::kFloat32, {0});
  reinterpret_cast<float*>(a.mutable_data())[2] = 2.5f;
  for (bool packed : {false, true}) {
    const std::string path = dir / (packed ? "packed.safetensors" : "plain.safetensors");
    REQUIRE((packed ? WriteSafetensorsFile(path, {z, a}, {}, 64, /*checksum=*/true) : WriteTensorFile(path, {z, a})).ok());
    auto back = ReadTensorFile(path);
    REQUIRE_MESSAGE(back.ok(), back.status().ToString());
    REQUIRE(back->size() == 2);
    for (const auto& t : *back)
      if (t.name == "a") CHECK(reinterpret_cast<const float*>(t.data.get())[2] == 2.5f);
  }
}

// Found by fuzzing (libFuzzer, ASan+UBSan) at stop 23.
TEST_CASE("JSON tensors: negative int64 values below -2^53 read exactly (they were rounded through a double)") {
  auto r = TensorsFromJson(json::parse(
      R"({"ids": {"dtype": "int64", "shape": [3], "data": [-9007199254740993, -9223372036854775807, 9007199254740993]}})"));
  REQUIRE(r.ok());
  const int64_t* v = (*r)[0].as<int64_t>();
  CHECK(v[0] == -9007199254740993LL);
  CHECK(v[1] == -9223372036854775807LL);  // read as INT64_MIN before
  CHECK(v[2] == 9007199254740993LL);
  CHECK(JsonError(R"({"x": {"dtype": "int64", "shape": [1], "data": [-9223372036854775809]}})") != "ok");
}

TEST_CASE("bool tensors hold 0 or 1 only: other bytes in a safetensors file or an IPC frame are refused") {
  testing::TempDir dir;
  Tensor b = Tensor::Alloc("mask", DType::kBool, {3});
  b.mutable_data()[0] = 1;
  REQUIRE(WriteTensorFile(dir / "ok.safetensors", {b}).ok());
  CHECK(ReadTensorFile(dir / "ok.safetensors").ok());
  b.mutable_data()[2] = 0xff;
  REQUIRE(WriteSafetensorsFile(dir / "bad.safetensors", {b}).ok());
  auto bad = ReadTensorFile(dir / "bad.safetensors");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().message().find("bool tensor 'mask' holds the byte 255 at element 2") != std::string::npos);
}

TEST_CASE("tensor names safetensors reserves, or an empty one, are refused rather than lost on the way back") {
  for (const char* name : {"__metadata__", "__mms_pad_0"}) {
    INFO(name);
    CHECK(JsonError(std::string(R"({")") + name + R"(": {"dtype": "float32", "shape": [1], "data": [1]}})")
              .find("a name safetensors reserves") != std::string::npos);
    testing::TempDir dir;
    Tensor t = Tensor::Alloc(name, DType::kFloat32, {1});
    auto w = WriteTensorFile(dir / "out.safetensors", {t});
    CHECK_FALSE(w.ok());
  }
  // An empty name in a safetensors header (accepted there, refused in JSON).
  testing::TempDir dir;
  const std::string header = R"({"": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})";
  std::string file(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(file.data(), &n, 8);
  file += header + std::string(4, '\0');
  std::ofstream(dir / "empty.safetensors", std::ios::binary) << file;
  auto r = ReadTensorFile(dir / "empty.safetensors");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().message().find("empty name") != std::string::npos);
}

TEST_CASE("safetensors: a checksum checked as the data is read asks for each piece in order and stops when the read does") {
  testing::TempDir dir;
  // 20 MiB in two tensors: pieces of at most 8 MiB, asked for in file order.
  Tensor a = Tensor::Alloc("a", DType::kUInt8, {12ll << 20});
  Tensor b = Tensor::Alloc("b", DType::kUInt8, {8ll << 20});
  for (size_t i = 0; i < a.nbytes; ++i) a.mutable_data()[i] = static_cast<uint8_t>(i * 7);
  for (size_t i = 0; i < b.nbytes; ++i) b.mutable_data()[i] = static_cast<uint8_t>(i * 13);
  const std::string path = dir / "w.safetensors";
  REQUIRE(WriteSafetensorsFile(path, {a, b}, {}, 64, /*checksum=*/true).ok());
  auto h = ReadSafetensorsHeader(path);
  REQUIRE(h.ok());
  const std::string bytes = ReadFile(path).value();
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data()) + h->data_offset;
  const uint64_t size = bytes.size() - h->data_offset;
  std::vector<uint64_t> asked;
  Status st = VerifySafetensorsChecksumAsRead(*h, data, size, path, [&](uint64_t end) {
    asked.push_back(end);
    return true;
  });
  CHECK_MESSAGE(st.ok(), st.ToString());
  REQUIRE(asked.size() >= 3);
  for (size_t i = 1; i < asked.size(); ++i) {
    CHECK(asked[i] > asked[i - 1]);
    CHECK(asked[i] - asked[i - 1] <= (8ull << 20));
  }
  CHECK(asked.back() == size);
  // The read failing at 10 MiB: the check stops there, CANCELLED, asking no further.
  asked.clear();
  st = VerifySafetensorsChecksumAsRead(*h, data, size, path, [&](uint64_t end) {
    asked.push_back(end);
    return end <= (10ull << 20);
  });
  CHECK(st.code() == Code::kCancelled);
  CHECK(asked.back() > (10ull << 20));
  CHECK(asked.size() == 2);
  // And the same data checked at once still matches; a flipped byte does not.
  CHECK(VerifySafetensorsChecksum(*h, data, size, path).ok());
  std::string flipped = bytes;
  flipped[h->data_offset + (9ull << 20)] ^= 0x10;
  CHECK(VerifySafetensorsChecksum(*h, reinterpret_cast<const uint8_t*>(flipped.data()) + h->data_offset, size, path)
            .code() == Code::kCorrupt);
}

TEST_CASE("safetensors: data read as it is hashed (16 MiB on) gives the sequential path's results, and a read that fails stops the hash") {
  testing::TempDir dir;
  Tensor a = Tensor::Alloc("a", DType::kUInt8, {20ll << 20});
  Tensor b = Tensor::Alloc("b", DType::kUInt8, {4ll << 20});
  for (size_t i = 0; i < a.nbytes; ++i) a.mutable_data()[i] = static_cast<uint8_t>(i * 31 + 7);
  for (size_t i = 0; i < b.nbytes; ++i) b.mutable_data()[i] = static_cast<uint8_t>(i * 5);
  const std::string path = dir / "w.safetensors";
  REQUIRE(WriteSafetensorsFile(path, {a, b}, {}, 64, /*checksum=*/true).ok());
  const std::string intact = ReadFile(path).value();
  auto h = ReadSafetensorsHeader(path);
  REQUIRE(h.ok());
  const uint64_t n = intact.size() - h->data_offset;
  REQUIRE(n >= (16ull << 20));
  std::vector<uint8_t> dst(n);
  // Intact: the bytes, and OK.
  Status st = ReadSafetensorsData(path, *h, dst.data(), n);
  CHECK_MESSAGE(st.ok(), st.ToString());
  CHECK(std::memcmp(dst.data(), intact.data() + h->data_offset, n) == 0);
  // A flipped byte: CORRUPT, the message the sequential check gives.
  std::string flipped = intact;
  flipped[h->data_offset + (17ull << 20)] ^= 0x01;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << flipped;
  st = ReadSafetensorsData(path, *h, dst.data(), n);
  CHECK(st.code() == Code::kCorrupt);
  CHECK(st.message() ==
        VerifySafetensorsChecksum(*h, reinterpret_cast<const uint8_t*>(flipped.data()) + h->data_offset, n, path)
            .message());
  // The file cut short after its header was read (a read that ends early
  // while the hash waits for its piece): the read's error, not a hang, not CANCELLED.
  for (uint64_t keep : std::vector<uint64_t>{0, 1, 8ull << 20, (12ull << 20) + 3}) {
    INFO("data kept: " << keep);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << intact.substr(0, h->data_offset + keep);
    st = ReadSafetensorsData(path, *h, dst.data(), n);
    CHECK(st.code() == Code::kInvalidArgument);
    CHECK(st.message().find("is truncated") != std::string::npos);
  }
  // Gone before the read: IO.
  std::filesystem::remove(path);
  st = ReadSafetensorsData(path, *h, dst.data(), n);
  CHECK(st.code() == Code::kIo);
  CHECK(st.message().find("cannot open") != std::string::npos);
}
