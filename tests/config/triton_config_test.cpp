#include "config/triton_config.h"

#include <doctest/doctest.h>

#include "config/pbtxt.h"

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
  CHECK(m->Last("optimization")->message->Last("gather_kernel_buffer_threshold")->text == "1.5e+3");
  CHECK(m->Last("[ext.field]")->message->Last("x")->text == "-inf");
  CHECK(m->All("empty").empty());
  // The last of a singular field wins, as protobuf has it.
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

  auto error = [](std::string_view text) {
    auto r = ParseTritonConfig(text, "c.pbtxt");
    return r.ok() ? "" : r.status().message();
  };
  CHECK(error("max_batch_size: -3") == "c.pbtxt:1:17: max_batch_size -3 is out of range (0 to 2147483647)");
  CHECK(error("max_batch_size: 2147483648") ==
        "c.pbtxt:1:17: max_batch_size 2147483648 is out of range (0 to 2147483647)");
  CHECK(error("max_batch_size: " + std::string(1'000'000, '7')) ==
        "c.pbtxt:1:17: max_batch_size 777777777777777777777777... is out of range (0 to 2147483647)");
  CHECK(error("max_batch_size: 1.5") == "c.pbtxt:1:17: max_batch_size 1.5 is out of range (0 to 2147483647)");
  CHECK(ParseTritonConfig("max_batch_size: 0x7fffffff", "c")->max_batch_size == 2147483647);
  CHECK(error("dynamic_batching { max_queue_delay_microseconds: -1 }") ==
        "c.pbtxt:1:50: max_queue_delay_microseconds -1 is out of range (0 to 18446744073709551615)");
  CHECK(error("dynamic_batching: 1") == "c.pbtxt:1:19: dynamic_batching is a block: dynamic_batching { }");
  CHECK(error("input [ { dims: [ 1 ] } ]") == "c.pbtxt:1:9: an input without a name: give it name: \"...\"");
  CHECK(error("input [ { name: \"x\" dims: [ -2 ] } ]") ==
        "c.pbtxt:1:29: input x: a dim is a size or -1 (any size), not -2");
  CHECK(error("input: 4") == "c.pbtxt:1:8: input is a block: input [ { name: \"x\" dims: [ 4 ] } ]");
  CHECK(error("max_batch_size 4").find("c.pbtxt:1:16: expected ':'") == 0);
}

TEST_CASE("triton config: -1 dims become variable dims of forward's inputs, by name, __INDEX or order") {
  const std::vector<InputSpec> specs = {Spec("ids", {2, 3}), Spec("types", {2, 3})};
  auto dims = [&](std::string_view text, const std::vector<InputSpec>& s) -> std::string {
    auto c = ParseTritonConfig(text, "c.pbtxt");
    REQUIRE_MESSAGE(c.ok(), c.status().message());
    auto r = TritonVariableDims(*c, s, "c.pbtxt");
    if (!r.ok()) return "error: " + r.status().message();
    std::string out;
    for (const auto& d : *r) out += (out.empty() ? "" : " ") + d;
    return out;
  };
  // By name; with max_batch_size > 0 dims leave out the batch dim.
  CHECK(dims("max_batch_size: 8 input [ { name: \"types\" dims: [ -1 ] }, { name: \"ids\" dims: [ 3 ] } ]", specs) ==
        "types:1");
  // NAME__INDEX: the argument at INDEX, whatever the names.
  CHECK(dims("max_batch_size: 8 input [ { name: \"X__1\" dims: [ -1 ] }, { name: \"Y__0\" dims: [ -1 ] } ]", specs) ==
        "types:1 ids:1");
  // Neither throughout: the config's order.
  CHECK(dims("max_batch_size: 8 input [ { name: \"a\" dims: [ 3 ] }, { name: \"ids\" dims: [ -1 ] } ]", specs) ==
        "types:1");
  // max_batch_size 0: dims are the whole shape; dim 0 is never checked, so -1 there frees nothing.
  CHECK(dims("input [ { name: \"ids\" dims: [ -1, -1 ] }, { name: \"types\" dims: [ 2, 3 ] } ]", specs) == "ids:1");
  // Inputs recorded without a shape (no sample) and inputs without dims are skipped.
  CHECK(dims("max_batch_size: 8 input [ { name: \"ids\" dims: [ -1 ] } ]", {InputSpec{"ids", {}, {}}}) == "");
  CHECK(dims("max_batch_size: 8 input [ { name: \"ids\" } ]", specs) == "");
  // The sample and the config disagree: an error naming the line and the fix.
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"ids\" dims: [ -1, 4 ] } ]", specs) ==
        "error: c.pbtxt:2: input ids has shape [-1, -1, 4] (the batch dim first) but the sample's has 2 dims [2, 3]: "
        "fix the sample input or the config");
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"a__1\" dims: [ 4 ] } ]", specs) ==
        "error: c.pbtxt:2: input a__1 (forward's types) has shape [-1, 4] but the sample's is [2, 3] (dim 1): fix the "
        "sample input or the config");
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"a__2\" dims: [ -1 ] } ]", specs) ==
        "error: c.pbtxt:2: input a__2 is forward's argument 2 (counting from 0, by its __INDEX), but forward takes 2 "
        "(ids, types): name the config's inputs as forward's arguments or NAME__INDEX");
  CHECK(dims("max_batch_size: 8\ninput [ { name: \"a\" dims: [ -1 ] }, { name: \"b\" dims: [ -1 ] },\n"
             "{ name: \"c\" dims: [ -1 ] } ]",
             specs)
            .find("error: c.pbtxt:3: input c is forward's argument 2 (counting from 0, by its place in the config)") == 0);
}
