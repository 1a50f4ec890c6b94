#include "config/triton_config.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "config/pbtxt.h"
#include "protocol/tensor_file.h"

using namespace mms;

namespace {

std::string ErrorOf(std::string_view text) {
  auto r = ParsePbtxt(text, "c.pbtxt");
  return r.ok() ? "" : r.status().message();
}

InputSpec Spec(std::string name, std::vector<int64_t> shape) { return InputSpec{std::move(name), DType::kInt64, shape}; }

}  // namespace

TEST_CASE("pbtxt: protobuf text format, as Triton writes config.pbtxt") {
  auto m = ParsePbtxt(R"(name: "bert"   # the model
max_batch_size: 8
input [
  { name: "INPUT__0" data_type: TYPE_INT64 dims: [ -1 ] },
  <name: 'INPUT__1', dims: -1; dims: 0x10>
]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ -1, 768 ] } ]
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 0, 1 ] } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100 }
parameters: { key: "A" value: { string_value: "x" "y\n\x41\101\u00e9" } }
optimization { cuda { graphs: true } eager_batching: false gather_kernel_buffer_threshold: 1.5e+3 }
[ext.field] { x: -inf }
version_policy: { latest { num_versions: 2 } }
empty: []
)",
                      "c.pbtxt");
  REQUIRE_MESSAGE(m.ok(), m.status().message());
  CHECK(m->Last("name")->text == "bert");
  CHECK(m->Last("name")->kind == PbtxtField::Kind::kString);
  CHECK(m->Last("max_batch_size")->text == "8");
  CHECK(m->Last("max_batch_size")->line == 2);
  CHECK(m->Last("max_batch_size")->column == 17);
  auto inputs = m->All("input");
  REQUIRE(inputs.size() == 2);
  REQUIRE(inputs[0]->kind == PbtxtField::Kind::kMessage);
  CHECK(inputs[0]->message->Last("data_type")->kind == PbtxtField::Kind::kIdentifier);
  CHECK(inputs[0]->message->Last("data_type")->text == "TYPE_INT64");
  CHECK(inputs[0]->message->All("dims").size() == 1);
  CHECK(inputs[0]->message->Last("dims")->text == "-1");
  CHECK(inputs[1]->message->Last("name")->text == "INPUT__1");  // < > and single quotes
  REQUIRE(inputs[1]->message->All("dims").size() == 2);
  CHECK(inputs[1]->message->All("dims")[1]->text == "0x10");
  CHECK(m->All("output").size() == 1);
  CHECK(m->Last("instance_group")->message->All("gpus").size() == 2);
  auto value = m->Last("parameters")->message->Last("value")->message->Last("string_value");
  CHECK(value->text == "xy\nAA\xc3\xa9");  // joined, unescaped
  // A surrogate pair in two \u escapes is one character.
  CHECK(ParsePbtxt(R"(s: "\ud83d\ude00")", "c")->Last("s")->text == "\xf0\x9f\x98\x80");
  CHECK(m->Last("optimization")->message->Last("gather_kernel_buffer_threshold")->text == "1.5e+3");
  CHECK(m->Last("[ext.field]")->message->Last("x")->text == "-inf");
  CHECK(m->All("empty").empty());
  // Without a schema a field may repeat; Last is the last one.
  CHECK(ParsePbtxt("a: 1\na: 2\n", "c")->Last("a")->text == "2");
}

TEST_CASE("pbtxt: text protobuf refuses is refused with its line and column") {
  CHECK(ErrorOf("max_batch_size 8") == "c.pbtxt:1:16: expected ':' after max_batch_size, found '8'");
  CHECK(ErrorOf("dims [ 1 ]") == "c.pbtxt:1:8: expected ':' after dims (a list of values needs one)");
  CHECK(ErrorOf("input [ { name: \"x\" }\n") == "c.pbtxt:2:1: expected ',' or ']' in the list of input, found end of file");
  CHECK(ErrorOf("a { b: 1\n") == "c.pbtxt:2:1: expected '}' before the end of file");
  CHECK(ErrorOf("a { b: 1 >") == "c.pbtxt:1:10: expected a field name, found '>'");
  CHECK(ErrorOf("}") == "c.pbtxt:1:1: expected a field name, found '}'");
  CHECK(ErrorOf("a: \"open\nb: 1") == "c.pbtxt:1:9: string not closed on its line");
  CHECK(ErrorOf("a: \"\\q\"") == "c.pbtxt:1:7: unknown escape \\q in a string");
  CHECK(ErrorOf("a: [1, ]") == "c.pbtxt:1:8: expected a value for a, found ']'");
  CHECK(ErrorOf("a: ") == "c.pbtxt:1:4: expected a value for a, found end of file");
  // Nesting is bounded (protobuf's limit): no stack overflow on a hostile file.
  std::string deep;
  for (int i = 0; i < 100; ++i) deep += "a {";
  CHECK(ErrorOf(deep + std::string(100, '}')).empty());
  CHECK(ErrorOf("a {" + deep + std::string(101, '}')) == "c.pbtxt:1:303: messages nested deeper than 100");
  std::string very_deep;
  for (int i = 0; i < 1'000'000; ++i) very_deep += "a{";
  CHECK(ErrorOf(very_deep).find("nested deeper than 100") != std::string::npos);
}

TEST_CASE("triton config: batching and the inputs' shapes as Triton means them") {
  auto c = ParseTritonConfig(R"(
max_batch_size: 16
input [
  { name: "ids" data_type: TYPE_INT64 dims: [ -1 ] },
  { name: "pixels" dims: [ 3, 224, 224 ] reshape { shape: [ 1, 3, -1 ] } }
]
dynamic_batching { max_queue_delay_microseconds: 250 })",
                             "c.pbtxt");
  REQUIRE_MESSAGE(c.ok(), c.status().message());
  CHECK(c->max_batch_size == 16);
  CHECK(c->dynamic_batching);
  CHECK(c->max_queue_delay_us == 250);
  REQUIRE(c->inputs.size() == 2);
  CHECK(c->inputs[0].name == "ids");
  CHECK(c->inputs[0].line == 4);
  CHECK(c->inputs[0].dims == std::vector<int64_t>{-1});
  CHECK(c->inputs[1].dims == std::vector<int64_t>{1, 3, -1});  // the model sees reshape's shape
  auto none = ParseTritonConfig("name: \"x\"\n", "c.pbtxt");
  REQUIRE(none.ok());
  CHECK(none->max_batch_size == 0);
  CHECK_FALSE(none->dynamic_batching);
  CHECK(ParseTritonConfig("dynamic_batching { }", "c")->max_queue_delay_us == 0);  // Triton's default
  CHECK_FALSE(ParseTritonConfig("max_batch_size: 8 sequence_batching { }", "c")->dynamic_batching);
  // proto3: a scalar at its default is "not set", so it may be given again.
  CHECK(ParseTritonConfig("max_batch_size: 0\nmax_batch_size: 4", "c")->max_batch_size == 4);

  auto error = [](std::string_view text) {
    auto r = ParseTritonConfig(text, "c.pbtxt");
    return r.ok() ? "" : r.status().message();
  };
  CHECK(error("max_batch_size: -3") == "c.pbtxt:1:17: max_batch_size -3 is out of range (0 to 2147483647)");
  CHECK(error("max_batch_size: 2147483648") ==
        "c.pbtxt:1:17: max_batch_size 2147483648 is out of range (0 to 2147483647)");
  CHECK(error("max_batch_size: " + std::string(1'000'000, '7')) ==
        "c.pbtxt:1:17: max_batch_size 777777777777777777777777... is out of range (0 to 2147483647)");
  CHECK(error("max_batch_size: 1.5") == "c.pbtxt:1:17: max_batch_size 1.5 is not an integer");
  CHECK(error("max_batch_size: \"8\"") == "c.pbtxt:1:17: max_batch_size is a number, not the string \"8\"");
  CHECK(ParseTritonConfig("max_batch_size: 0x7fffffff", "c")->max_batch_size == 2147483647);
  CHECK(ParseTritonConfig("max_batch_size: 010", "c")->max_batch_size == 8);  // octal, as protobuf reads it
  CHECK(error("dynamic_batching { max_queue_delay_microseconds: -1 }") ==
        "c.pbtxt:1:50: max_queue_delay_microseconds -1 is out of range (0 to 18446744073709551615)");
  CHECK(error("dynamic_batching: 1") == "c.pbtxt:1:19: dynamic_batching is a block: dynamic_batching { ... }");
  // What protobuf (so Triton) refuses: a singular field twice, two members of a oneof.
  CHECK(error("max_batch_size: 8\nmax_batch_size: 16") ==
        "c.pbtxt:2:17: max_batch_size is given twice (first on line 1); Triton refuses that: keep one");
  CHECK(error("dynamic_batching { }\ndynamic_batching { }").find("dynamic_batching is given twice") != std::string::npos);
  CHECK(error("dynamic_batching { }\nsequence_batching { }") ==
        "c.pbtxt:2:19: sequence_batching is given along with dynamic_batching (line 1); Triton takes one of them: keep "
        "one");
  CHECK(error("input [ { name: \"x\" name: \"y\" dims: 1 } ]").find("name is given twice") != std::string::npos);
  CHECK(error("input [ { dims: [ 1 ] } ]") == "c.pbtxt:1:9: an input without a name: give it name: \"...\"");
  CHECK(error("input [ { name: 4 dims: [ 1 ] } ]") == "c.pbtxt:1:17: name is a string: name: \"...\"");
  CHECK(error("input [ { name: \"x\" dims: [ -2 ] } ]") ==
        "c.pbtxt:1:29: input x: a dim is a size of at least 1 or -1 (any size), not -2");
  CHECK(error("input [ { name: \"x\" dims: [ 0 ] } ]") ==
        "c.pbtxt:1:29: input x: a dim is a size of at least 1 or -1 (any size), not 0");
  CHECK(error("input [ { name: \"x\" } ]") ==
        "c.pbtxt:1:9: input x has no dims: give its shape, e.g. dims: [ -1 ] (Triton refuses it without)");
  CHECK(error("input: 4") == "c.pbtxt:1:8: input is a block: input { ... }");
  CHECK(error("max_batch_size 4").find("c.pbtxt:1:16: expected ':'") == 0);
}

TEST_CASE("triton config: -1 dims become variable dims of forward's inputs, by name, __INDEX or order") {
  const std::vector<InputSpec> specs = {Spec("ids", {2, 3}), Spec("types", {2, 3})};
  auto dims = [&](std::string_view text, const std::vector<InputSpec>& s) -> std::string {
    auto c = ParseTritonConfig(text, "c.pbtxt");
    if (!c.ok()) return "parse error: " + c.status().message();
    auto r = TritonVariableDims(*c, s, "c.pbtxt");
    if (!r.ok()) return "error: " + r.status().message();
    std::string out;
    for (const auto& d : *r) out += (out.empty() ? "" : " ") + d;
    return out;
  };
  // By name; with max_batch_size > 0 dims leave out the batch dim.
  CHECK(dims("max_batch_size: 8 input [ { name: \"types\" dims: [ -1 ] }, { name: \"ids\" dims: [ 3 ] } ]", specs) ==
        "types:1");
  // NAME__INDEX: the argument at INDEX, whatever the names; the index is
  // what follows the first "__", as the PyTorch backend splits it.
  CHECK(dims("max_batch_size: 8 input [ { name: \"X__1\" dims: [ -1 ] }, { name: \"Y__0\" dims: [ 3 ] } ]", specs) ==
        "types:1");
  CHECK(dims("max_batch_size: 8 input [ { name: \"__1\" dims: [ -1 ] }, { name: \"__0\" dims: [ 3 ] } ]", specs) ==
        "types:1");
  // "in__a__1" has the index "a__1", no number: neither rule holds throughout, so the config's order.
  CHECK(dims("max_batch_size: 8 input [ { name: \"in__a__1\" dims: [ 3 ] }, { name: \"in__b__0\" dims: [ -1 ] } ]",
             specs) == "types:1");
  CHECK(dims("max_batch_size: 8 input [ { name: \"a\" dims: [ 3 ] }, { name: \"ids\" dims: [ -1 ] } ]", specs) ==
        "types:1");
  // max_batch_size 0: dims are the whole shape; dim 0 is never checked, so -1 there frees nothing.
  CHECK(dims("input [ { name: \"ids\" dims: [ -1, -1 ] }, { name: \"types\" dims: [ 2, 3 ] } ]", specs) == "ids:1");
  // Inputs recorded without a shape (no sample) are skipped; so is a config without inputs.
  CHECK(dims("max_batch_size: 8 input [ { name: \"ids\" dims: [ -1 ] } ]", {InputSpec{"ids", {}, {}}}) == "");
  CHECK(dims("max_batch_size: 8", specs) == "");
  // The sample and the config disagree: an error naming the line and the fix.
  const std::string types = ", { name: \"types\" dims: [ 3 ] } ]";
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"ids\" dims: [ -1, 4 ] }" + types, specs) ==
        "error: c.pbtxt:2: input ids has shape [-1, -1, 4] (the batch dim first) but the sample's has 2 dims [2, 3]: "
        "fix the sample input or the config");
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"a__1\" dims: [ 4 ] }, { name: \"b__0\" dims: [ 3 ] } ]", specs) ==
        "error: c.pbtxt:2: input a__1 (forward's types) has shape [-1, 4] but the sample's is [2, 3] (dim 1): fix the "
        "sample input or the config");
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"a__2\" dims: [ -1 ] }, { name: \"b__0\" dims: [ 3 ] } ]", specs) ==
        "error: c.pbtxt:2: input a__2 is forward's argument 2 (counting from 0, by its __INDEX), but forward takes 2 "
        "(ids, types): name the config's inputs as forward's arguments or NAME__INDEX");
  // Sequence batching's control (and state) inputs are forward's arguments too.
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"INPUT__0\" dims: [ -1 ] } ]\nsequence_batching { control_input [ { "
             "name: \"START__1\" control [ { kind: CONTROL_SEQUENCE_START fp32_false_true: [ 0, 1 ] } ] } ] }",
             specs) == "ids:1");
  // One config input per argument, as Triton requires.
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"ids\" dims: [ -1 ] } ]", specs) ==
        "error: c.pbtxt: 1 input in the config, but forward takes 2 (ids, types): give the config one input per "
        "argument, as Triton requires");
}

TEST_CASE("triton config: model_warmup becomes a sample input for forward's inputs") {
  const std::string dir = std::filesystem::temp_directory_path() / ("mms-warmup-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir + "/warmup");
  const std::vector<InputSpec> specs = {InputSpec{"x", {}, {}}, InputSpec{"ids", {}, {}}};
  auto sample = [&](std::string_view text) -> Result<std::vector<Tensor>> {
    MMS_ASSIGN_OR_RETURN(TritonConfig c, ParseTritonConfig(text, "c.pbtxt"));
    return TritonWarmupSample(c, specs, dir, "c.pbtxt");
  };
  const std::string inputs = "input [ { name: \"INPUT__0\" dims: [ 4 ] }, { name: \"INPUT__1\" dims: [ -1 ] } ]\n";
  const float row[4] = {1.5f, -2, 0, 8};  // (bytes 2 and 3 of 1.5f: 0xc0 0x3f)
  const std::string raw(reinterpret_cast<const char*>(row), sizeof row);
  {
    std::ofstream(dir + "/warmup/x.bin", std::ios::binary) << raw;
    auto t = sample("max_batch_size: 8\n" + inputs + R"(model_warmup [ { name: "w" batch_size: 3
  inputs { key: "INPUT__0" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: "x.bin" } }
  inputs { key: "INPUT__1" value: { data_type: TYPE_INT64 dims: [ 5 ] zero_data: true } } } ]
model_warmup [ { name: "second, unused" } ])");
    REQUIRE_MESSAGE(t.ok(), t.status().message());
    REQUIRE(t->size() == 2);
    CHECK((*t)[0].name == "x");
    CHECK((*t)[0].shape == std::vector<int64_t>{3, 4});  // batch_size rows of the file's one
    CHECK(TensorToDoubles((*t)[0]) == std::vector<double>{1.5, -2, 0, 8, 1.5, -2, 0, 8, 1.5, -2, 0, 8});
    CHECK((*t)[1].name == "ids");
    CHECK((*t)[1].dtype == DType::kInt64);
    CHECK(TensorToDoubles((*t)[1]) == std::vector<double>(15, 0.0));
  }
  {  // random_data: floats in [0, 1), integers zero; without batching the dims are the whole shape.
    auto t = sample(inputs + R"(model_warmup { batch_size: 1
  inputs { key: "INPUT__1" value: { data_type: TYPE_INT32 dims: [ 2, 2 ] random_data: true } }
  inputs { key: "INPUT__0" value: { data_type: TYPE_FP16 dims: [ 64 ] random_data: true } } })");
    REQUIRE_MESSAGE(t.ok(), t.status().message());
    CHECK((*t)[0].name == "ids");
    CHECK((*t)[0].shape == std::vector<int64_t>{2, 2});
    CHECK(TensorToDoubles((*t)[0]) == std::vector<double>(4, 0.0));
    auto values = TensorToDoubles((*t)[1]);
    CHECK((*t)[1].dtype == DType::kFloat16);
    CHECK(std::all_of(values.begin(), values.end(), [](double v) { return v >= 0 && v < 1; }));
    CHECK(std::set<double>(values.begin(), values.end()).size() > 10);
  }
  auto error = [&](std::string_view text) {
    auto r = sample(text);
    return r.ok() ? "" : r.status().message();
  };
  const std::string w = "max_batch_size: 8\n" + inputs + "model_warmup [ { name: \"w\" batch_size: 2\n";
  const std::string ids = "inputs { key: \"INPUT__1\" value: { data_type: TYPE_INT64 dims: [ 2 ] zero_data: true } }\n";
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_STRING dims: [ 4 ] zero_data: true } }\n" + ids +
              "} ]") ==
        "c.pbtxt:4: model_warmup input INPUT__0: data_type TYPE_STRING is not one mms serves (TYPE_BOOL, TYPE_UINT8, "
        "TYPE_INT8 to TYPE_INT64, TYPE_FP16, TYPE_FP32, TYPE_FP64, TYPE_BF16)");
  CHECK(error(w + ids + "} ]") == "c.pbtxt:3: model_warmup 'w' gives no x (forward takes them): give the warm-up every input");
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ -1 ] zero_data: true } }\n" + ids +
              "} ]") == "c.pbtxt:4: model_warmup input INPUT__0: a warm-up's dims are sizes, not -1: give the size to run");
  CHECK(error(w + "inputs { key: \"nope\" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }\n" + ids + "} ]") ==
        "c.pbtxt:4: model_warmup input nope is none of the config's inputs: give the warm-up the inputs' names");
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 4 ] } }\n" + ids + "} ]") ==
        "c.pbtxt:4: model_warmup input INPUT__0: give zero_data: true, random_data: true or input_data_file");
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true "
                  "random_data: true } }\n" + ids + "} ]")
            .find("random_data is given along with zero_data") != std::string::npos);
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: \"a/../../x.bin\" } }\n" +
              ids + "} ]") ==
        "c.pbtxt:4: model_warmup input INPUT__0: input_data_file 'a/../../x.bin' must name a file under the model's "
        "warmup/ directory");
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: \"/etc/passwd\" } }\n" +
              ids + "} ]")
            .find("must name a file under the model's warmup/ directory") != std::string::npos);
  {  // A file longer than a row: its first row, as Triton reads it; under a subdirectory too.
    std::filesystem::create_directories(dir + "/warmup/sub");
    std::filesystem::copy_file(dir + "/warmup/x.bin", dir + "/warmup/sub/x.bin");
    auto t = sample(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP16 dims: [ 4 ] input_data_file: "
                        "\"sub/x.bin\" } }\n" + ids + "} ]");
    REQUIRE_MESSAGE(t.ok(), t.status().message());
    CHECK((*t)[0].nbytes == 2 * 4 * 2);
    CHECK(std::memcmp((*t)[0].data.get(), raw.data(), 8) == 0);
    CHECK(std::memcmp((*t)[0].data.get() + 8, raw.data(), 8) == 0);
  }
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_BOOL dims: [ 4 ] input_data_file: \"x.bin\" } }\n" +
              ids + "} ]") ==
        "c.pbtxt:4: model_warmup input INPUT__0: input_data_file " + dir +
            "/warmup/x.bin byte 2 is 192: a TYPE_BOOL is one byte, 0 or 1");
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 8 ] input_data_file: \"x.bin\" } }\n" +
              ids + "} ]") ==
        "c.pbtxt:4: model_warmup input INPUT__0: input_data_file " + dir +
            "/warmup/x.bin has 16 bytes, under the 32 of one float32[8] row");
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 4 ] input_data_file: \"none.bin\" } }\n" +
              ids + "} ]")
            .find("none.bin") != std::string::npos);
  CHECK(error(inputs + "model_warmup { batch_size: 2 " + ids + "}") ==
        "c.pbtxt:2: model_warmup: batch_size 2 for a model without batching (max_batch_size 0): Triton takes 1");
  CHECK(error("max_batch_size: 8\n" + inputs + "model_warmup { batch_size: 100000 " + ids + "}") ==
        "c.pbtxt:3: model_warmup: batch_size 100000 is over the 65536 rows a sample may have: a few rows do");
  CHECK(error(w + ids + ids + "} ]") == "c.pbtxt:5:8: model_warmup input INPUT__1 is given twice (first on line 4): keep one");
  // Refused before anything is allocated (a 4 TB zero-filled buffer, before).
  CHECK(error(w + "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 1000000, 1000000 ] zero_data: true } }\n" +
              ids + "} ]") ==
        "c.pbtxt:4: model_warmup input INPUT__0: the warm-up sample would be over 64 MiB: give it fewer rows or smaller "
        "dims (a few rows do)");
  // A warm-up's faults are its own: the config parses, and the fault is said only when it is used.
  auto bad_warmup = ParseTritonConfig("model_warmup [ { batch_size: 1 inputs { key: \"x\" value: { dims: [ 0 ] } } } ]", "c");
  REQUIRE_MESSAGE(bad_warmup.ok(), bad_warmup.status().message());
  CHECK(TritonWarmupSample(*bad_warmup, specs, dir, "c").status().message() ==
        "c:1:67: input x: a dim is a size of at least 1 or -1 (any size), not 0");
  // Triton skips a warm-up of batch_size 0 (the default): the next one is used, or none.
  auto second = sample("max_batch_size: 8\n" + inputs +
                       "model_warmup [ { name: \"skipped\" inputs { key: \"INPUT__0\" value: { data_type: TYPE_STRING } } },\n"
                       "{ name: \"used\" batch_size: 1 " + ids +
                       "inputs { key: \"INPUT__0\" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]");
  REQUIRE_MESSAGE(second.ok(), second.status().message());
  CHECK((*second)[0].shape == std::vector<int64_t>{1, 2});
  auto none = ParseTritonConfig("model_warmup [ { name: \"w\" } ]", "c");
  CHECK(UsableWarmup(*none) == nullptr);
  CHECK(TritonWarmupSample(*none, specs, dir, "c").status().code() == Code::kNotFound);
  std::filesystem::remove_all(dir);
}
