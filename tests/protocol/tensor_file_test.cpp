// Tensor files (JSON and safetensors) and input matching: round trips, and
// each malformed input refused with a message that names the problem.
#include <doctest/doctest.h>

#include <cstring>
#include <fstream>

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
  Tensor wrong_dtype = Tensor::Alloc("ids", DType::kFloat32, {3, 4});
  CHECK(MatchInputs(specs, {wrong_dtype, dense}, "rec:1").status().message().find("int64") != std::string::npos);
  Tensor wrong_shape = Tensor::Alloc("dense", DType::kFloat32, {3, 9});
  CHECK_FALSE(MatchInputs(specs, {ids, wrong_shape}, "rec:1").ok());
  // Older records hold names only: any dtype and shape pass.
  auto names = InputSpecsFromJson(json::parse(R"(["ids", "dense"])"));
  CHECK(MatchInputs(names, {wrong_dtype, wrong_shape}, "rec:1").ok());
}
