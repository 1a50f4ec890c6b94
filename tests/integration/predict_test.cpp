// The predict path and the pool through the real daemon and CLI: real
// TorchScript models, real loads, evictions, pins across restarts.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include <fcntl.h>
#include <unistd.h>

#include "protocol/tensor_file.h"
#include "support/process.h"

using namespace mms::testing;
using nlohmann::json;

namespace {

std::string Data(const std::string& n) { return TestDataDir() + "/" + n; }

void Register(const Daemon& d, const std::string& name, const std::string& version, const std::string& path,
              std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"model", "register", name, "--version", version, "--path", path, "-q"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = d.Mms(args);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
}

json Predict(const Daemon& d, const std::string& ref, const std::string& input, int want = 0,
             std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"--json", "predict", ref, "--input", input};
  args.insert(args.end(), extra.begin(), extra.end());
  auto r = d.Mms(args);
  INFO(ref << " " << input << " → " << r.err << r.out);
  CHECK(r.exit_code == want);
  return r.out.empty() ? json() : json::parse(r.out);
}

json Pool(const Daemon& d) {
  auto r = d.Mms({"--json", "pool"});
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);
}

json FindModel(const json& pool, const std::string& ref) {
  for (const auto& dev : pool["devices"])
    for (const auto& m : dev["models"])
      if (m["ref"] == ref) return m;
  for (const char* tier : {"host", "disk"})
    for (const auto& m : pool[tier]["models"])
      if (m["ref"] == ref) return m;
  return json();
}

}  // namespace

TEST_CASE("predict with JSON and safetensors inputs, outputs named, request id and version in the reply") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "rec", "1", Data("rec.pt"), {"--sample-input", Data("rec_input.json")});
  json r = Predict(d, "rec", Data("rec_input.json"));
  CHECK(r["ref"] == "rec:1");
  CHECK(r["version"] == "1");
  CHECK(r["request_id"].get<std::string>().size() == 16);
  CHECK(r["outputs"]["output"]["shape"] == json::array({2, 10}));
  CHECK(r["outputs"]["output"]["dtype"] == "float32");
  // The same input as safetensors gives the same scores (and a fresh request id).
  auto in = mms::ReadTensorFile(Data("rec_input.json"));
  REQUIRE(in.ok());
  REQUIRE(mms::WriteSafetensorsFile(d.dir() + "/in.safetensors", *in).ok());
  json r2 = Predict(d, "rec:1", d.dir() + "/in.safetensors");
  CHECK(r2["outputs"] == r["outputs"]);
  CHECK(r2["request_id"] != r["request_id"]);
  // Outputs written as safetensors hold exactly the scores of the JSON reply.
  auto conv = d.Mms({"--json", "predict", "rec", "--input", d.dir() + "/in.safetensors", "--output", d.dir() + "/out.safetensors"});
  REQUIRE_MESSAGE(conv.exit_code == 0, conv.err);
  {  // "outputs" always holds tensors: with --output they are in the file
    json cj = json::parse(conv.out);
    CHECK_FALSE(cj.contains("outputs"));
    CHECK(cj["output_names"] == json::array({"output"}));
    CHECK(cj["output_file"] == d.dir() + "/out.safetensors");
  }
  auto out = mms::ReadSafetensorsFile(d.dir() + "/out.safetensors");
  REQUIRE(out.ok());
  REQUIRE(out->size() == 1);
  CHECK((*out)[0].name == "output");
  CHECK((*out)[0].shape == std::vector<int64_t>{2, 10});
  std::vector<double> want = r["outputs"]["output"]["data"].get<std::vector<double>>();
  REQUIRE(static_cast<size_t>((*out)[0].numel()) == want.size());
  for (size_t i = 0; i < want.size(); ++i) CHECK((*out)[0].as<float>()[i] == doctest::Approx(want[i]));
  // An --output nobody can write is refused before the request runs (exit 2), not after.
  auto served = [&] { return json::parse(d.Mms({"--json", "status"}).out)["requests_served"].get<uint64_t>(); };
  uint64_t before = served();
  std::ofstream(d.dir() + "/plainfile") << "x";
  std::filesystem::create_symlink(d.dir() + "/plainfile", d.dir() + "/link.json");
  for (const auto& [bad, says] : std::vector<std::pair<std::string, std::string>>{
           {d.dir() + "/link.json", "is a symbolic link; name the file itself"},
           {d.dir() + "/no/such/dir/out.json", "does not exist (create it first)"},
           {d.dir(), "is a directory"},
           {std::string("/dev/null"), "not a regular file"},
           {d.dir() + "/plainfile/out.json", "plainfile is not a directory"}}) {
    auto r3 = d.Mms({"predict", "rec", "--input", d.dir() + "/in.safetensors", "--output", bad});
    CHECK(r3.exit_code == 2);
    CHECK_MESSAGE(r3.err.find("--output") != std::string::npos, r3.err);
    CHECK_MESSAGE(r3.err.find(says) != std::string::npos, r3.err);
  }
  CHECK(served() == before + 1);  // the status call itself, no predict
  struct stat devnull;
  REQUIRE(::stat("/dev/null", &devnull) == 0);
  CHECK(S_ISCHR(devnull.st_mode));  // not replaced by a file (as root it would have been)
  // Output that cannot be written (a full device) is exit 1, not lost silently.
  if (std::filesystem::exists("/dev/full")) {
    auto full = Run({"/bin/sh", "-c", MmsBin() + " --socket " + d.socket() + " --data-dir " + d.data_dir() + " model list > /dev/full"});
    CHECK(full.exit_code == 1);
    CHECK(full.err.find("cannot write the output") != std::string::npos);
  }
  // An --output the prediction could not be written to (here a file size
  // limit): the outputs and the request id are not lost — feedback needs the
  // id — they go to standard output, and the command exits 1.
  for (const char* mode : {"text", "json"}) {
    const std::string cmd = "trap '' XFSZ; ulimit -f 0; exec " + MmsBin() + " --socket " + d.socket() + " --data-dir " +
                            d.data_dir() + (std::string(mode) == "json" ? " --json" : "") + " predict rec --input " +
                            d.dir() + "/in.safetensors --output " + d.dir() + "/limited.json";
    auto lim = Run({"/bin/sh", "-c", cmd});
    INFO(mode << ": " << lim.out << lim.err);
    CHECK(lim.exit_code == 1);
    if (std::string(mode) == "json") {
      json lj = json::parse(lim.out);
      CHECK(lj["request_id"].is_string());
      CHECK(lj["outputs"]["output"]["shape"] == json::array({2, 10}));
      CHECK(lj["error"]["message"].get<std::string>().find("cannot write " + d.dir() + "/limited.json") !=
            std::string::npos);
      CHECK(lj["error"]["exit_code"] == 1);
    } else {
      CHECK(json::parse(lim.out)["output"]["shape"] == json::array({2, 10}));
      CHECK(lim.err.find("(request ") != std::string::npos);
      CHECK(lim.err.find("its outputs went to standard output") != std::string::npos);
      CHECK(lim.err.find(".tmp") == std::string::npos);  // names the file asked for, not its temporary
    }
  }

  Register(d, "tup", "1", Data("tuple_out.pt"));
  Register(d, "dict", "1", Data("dict_out.pt"));
  json t = Predict(d, "tup", Data("tiny_input.json"));
  CHECK(t["outputs"].contains("output_0"));
  CHECK(t["outputs"].contains("output_1"));
  json dd = Predict(d, "dict", Data("tiny_input.json"));
  CHECK(dd["outputs"]["top"]["dtype"] == "int64");
  CHECK(dd["outputs"]["scores"]["shape"] == json::array({2, 2}));
}

TEST_CASE("a version registered while the daemon runs is servable at once") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "tiny", "1", Data("tiny.pt"));
  json a = Predict(d, "tiny", Data("tiny_input.json"));
  CHECK(a["version"] == "1");
  Register(d, "tiny", "2", Data("tiny_v2.pt"));
  json b = Predict(d, "tiny", Data("tiny_input.json"));  // highest version now
  CHECK(b["version"] == "2");
  CHECK(b["outputs"] != a["outputs"]);
  REQUIRE(d.Mms({"model", "stage", "tiny:1", "production"}).exit_code == 0);
  CHECK(Predict(d, "tiny", Data("tiny_input.json"))["version"] == "1");
  REQUIRE(d.Mms({"model", "alias", "set", "tiny", "champion", "2"}).exit_code == 0);
  CHECK(Predict(d, "tiny@champion", Data("tiny_input.json"))["version"] == "2");
}

TEST_CASE("a version registered behind the daemon's back is served by the request that finds it unknown, inputs intact") {
  // Registered with no daemon told (a CI job writing the registry itself),
  // and the daemon's poll an hour away: the predict itself reads the
  // registry again. Handed to a handler thread first (not on nng's
  // receiving thread), the request once lost its inputs there when that
  // hand-off did not happen (a handler thread already, or inline_handlers
  // = 0): "missing: x" for the first call, a review found.
  for (const char* inline_cap : {"1", "0"}) {
    INFO("inline_handlers = " << inline_cap);
    Daemon d(std::string("[daemon]\ninline_handlers = ") + inline_cap + "\n[registry]\npoll_interval = \"60s\"\n");
    REQUIRE(d.ok());
    Register(d, "tiny", "1", Data("tiny.pt"));
    CHECK(Predict(d, "tiny", Data("tiny_input.json"))["version"] == "1");  // the daemon's view is current
    auto r = Run({MmsBin(), "--socket", d.dir() + "/nobody.sock", "--data-dir", d.data_dir(), "-q", "model",
                  "register", "later", "--version", "1", "--path", Data("tiny.pt")});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    auto p = d.Mms({"--json", "predict", "later", "--input", Data("tiny_input.json")});
    CHECK_MESSAGE(p.exit_code == 0, p.err);
    if (p.exit_code == 0) CHECK(json::parse(p.out)["version"] == "1");
    CHECK(d.Mms({"predict", "never", "--input", Data("tiny_input.json")}).exit_code == 4);
  }
}

TEST_CASE("bad input: each refused clearly while the daemon and other models keep serving") {
  Daemon d("[daemon]\nmax_message_bytes = \"64KiB\"\n[pool]\nload_retry_backoff = \"30s\"\n");
  REQUIRE(d.ok());
  Register(d, "tiny", "1", Data("tiny.pt"), {"--sample-input", Data("tiny_input.json")});
  Register(d, "thrower", "1", Data("throws.pt"));
  Register(d, "manydims", "1", Data("many_dims.pt"));
  // Corrupt and truncated artifacts: register good copies, then damage them.
  for (const char* name : {"corrupt", "trunc", "flipped", "modchanged", "gone"}) {
    std::filesystem::copy_file(Data("rec.pt"), d.dir() + "/" + name + ".pt");
    Register(d, name, "1", d.dir() + "/" + name + ".pt");
  }
  // Same-size damage: one byte of a weight, one byte of the weight-less module.
  json reg = json::parse(d.Mms({"--json", "model", "list"}).out);
  for (const auto& v : reg) {
    std::string packed = d.data_dir() + "/artifacts/" + v["model"].get<std::string>();
    for (const auto& e : std::filesystem::directory_iterator(packed)) {
      std::string w = e.path().string() + "/weights.safetensors";
      if (v["model"] == "corrupt") {
        std::fstream f(w, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(0);
        f << "garbage!garbage!garbage!";
      }
      if (v["model"] == "trunc") std::filesystem::resize_file(w, 500);
      if (v["model"] == "flipped") FlipLastByte(w);
      if (v["model"] == "modchanged") FlipLastByte(e.path().string() + "/module.pt");
      if (v["model"] == "gone") std::filesystem::remove_all(e.path());  // not loaded from the original instead
    }
  }
  std::filesystem::remove(d.dir() + "/gone.pt");  // and its original too: nothing to repack from
  std::ofstream(d.dir() + "/neg.json") << R"({"x": {"dtype": "float32", "shape": [1, 4], "data": [-1, 2, 3, 4]}})";
  std::ofstream(d.dir() + "/ragged.json") << R"({"x": {"dtype": "float32", "shape": [2, 2], "data": [[1, 2, 3], [4]]}})";
  std::ofstream(d.dir() + "/range.json") << R"({"x": {"dtype": "float32", "shape": [1, 4], "data": [1e39, 2, 3, 4]}})";
  std::ofstream(d.dir() + "/dims.json")
      << R"({"x": {"dtype": "float32", "shape": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1], "data": [1]}})";
  {
    std::ofstream big(d.dir() + "/big.json");
    big << R"({"x": {"dtype": "float32", "shape": [20000, 4], "data": [)";
    for (int i = 0; i < 80000; ++i) big << (i ? ",1" : "1");
    big << "]}}";
  }
  {  // just over the cap: "64.0 KiB, over the daemon's 64.0 KiB cap" read as equal
    std::ofstream edge(d.dir() + "/edge.json");
    edge << R"({"x": {"dtype": "float32", "shape": [4092, 4], "data": [)";
    for (int i = 0; i < 4092 * 4; ++i) edge << (i ? ",1" : "1");
    edge << "]}}";
  }
  struct Case {
    std::string ref, input;
    int code;
    std::string says;
  };
  std::vector<Case> cases{
      {"corrupt", Data("rec_input.json"), 1, "the stored artifact of corrupt:1 is damaged"},
      {"corrupt", Data("rec_input.json"), 1, "mms model repack corrupt:1 writes it anew from the original artifact"},
      {"trunc", Data("rec_input.json"), 1, "truncated"},
      {"flipped", Data("rec_input.json"), 1, "weights.safetensors does not match the checksum it was written with"},
      {"modchanged", Data("rec_input.json"), 1, "module.pt does not match the checksum it was written with"},
      {"gone", Data("rec_input.json"), 1, "the stored artifact of gone:1 is damaged: no such file"},
      {"thrower", d.dir() + "/neg.json", 1, "negative feature values are not supported"},
      {"tiny", Data("tiny_missing.json"), 2, "takes inputs (x); missing: x; unexpected: y"},
      {"tiny", Data("tiny_extra.json"), 2, "unexpected: z"},
      {"tiny", Data("tiny_bad_dtype.json"), 2, "must be float32, got int64"},
      {"tiny", Data("tiny_bad_shape.json"), 2, "must have shape [batch, 4], got [2, 5]"},
      {"tiny", d.dir() + "/big.json", 2, "over the daemon's 64.0 KiB cap"},
      {"tiny", d.dir() + "/edge.json", 2, " bytes, over the daemon's 65536 bytes cap"},
      {"tiny", d.dir() + "/ragged.json", 2, "data is neither flat (4 values) nor nested as shape [2, 2]"},
      {"tiny", d.dir() + "/range.json", 2, "out of range for float32"},
      {"tiny", d.dir() + "/dims.json", 2, "has 17 dimensions; the protocol allows 16"},
      {"manydims", Data("tiny_input.json"), 1, "the reply cannot be sent"},
      {"nosuch", Data("tiny_input.json"), 4, "unknown model 'nosuch'"},
      {"tiny:7", Data("tiny_input.json"), 4, "unknown version tiny:7"},
      {"tiny", d.dir() + "/missing.json", 2, "no such file"},
      // A device never ends: read up to 16x the daemon's cap (it grew without bound).
      {"tiny", "/dev/zero", 2, "/dev/zero holds more than 1.00 MiB, the limit for it"},
  };
  for (const auto& c : cases) {
    auto r = d.Mms({"predict", c.ref, "--input", c.input});
    INFO(c.ref << " " << c.input << " → " << r.err);
    CHECK(r.exit_code == c.code);
    CHECK(r.err.find(c.says) != std::string::npos);
    CHECK(Predict(d, "tiny", Data("tiny_input.json"))["version"] == "1");  // still serving
  }
  {  // A name with an escape sequence (or a NUL) is quoted as \xNN, never sent to the terminal as is.
    std::ofstream(d.dir() + "/esc.json") << R"({"a\u001b[31mX\u0000": {"dtype": "float32", "shape": [1], "data": [1]}})";
    auto esc = d.Mms({"predict", "tiny", "--input", d.dir() + "/esc.json"});
    CHECK(esc.exit_code == 2);
    CHECK_MESSAGE(esc.err.find("a\\x1b[31mX\\x00") != std::string::npos, esc.err);
    CHECK(esc.err.find('\x1b') == std::string::npos);
    CHECK(esc.err.find('\0') == std::string::npos);
  }
  // A CLI without the daemon's config (so with the default cap): an input
  // over the daemon's cap is refused (exit 2) before it is sent — one over
  // twice the cap costs the connection, and used to be reported as an
  // unreachable daemon (exit 3) or to hang until --timeout: the CLI asks
  // the daemon's cap first for any request that large.
  {
    std::ofstream mid(d.dir() + "/mid.json");
    mid << R"({"x": {"dtype": "float32", "shape": [5000, 4], "data": [)";
    for (int i = 0; i < 20000; ++i) mid << (i ? ",1" : "1");
    mid << "]}}";
  }
  for (const std::string& f : {d.dir() + "/mid.json", d.dir() + "/big.json"}) {
    auto r = Run({MmsBin(), "--socket", d.socket(), "--data-dir", d.data_dir(), "predict", "tiny", "--input", f});
    INFO(f << " → " << r.err);
    CHECK(r.exit_code == 2);
    CHECK(r.err.find("max_message_bytes") != std::string::npos);
    CHECK(r.err.find("lost connection") == std::string::npos);
  }
  CHECK(Predict(d, "tiny", Data("tiny_input.json"))["version"] == "1");
  // A model raising on its input is in the log (it was only in the caller's
  // reply), once a minute per version however often it happens.
  for (int i = 0; i < 5; ++i) CHECK(d.Mms({"predict", "thrower", "--input", d.dir() + "/neg.json"}).exit_code == 1);
  CHECK(Count(d.log(), "model_error") == 1);
  CHECK_MESSAGE(d.log().find("warn model_error code=MODEL_ERROR error=\"") != std::string::npos, d.log());
  CHECK(d.log().find("negative feature values are not supported") != std::string::npos);
  CHECK(d.log().find("model=thrower:1") != std::string::npos);
  // A failed load is remembered (backoff), visible in mms health, and not retried per request.
  auto h = d.Mms({"--json", "health", "corrupt"});
  CHECK(h.exit_code == 1);
  json hj = json::parse(h.out)["models"][0];
  CHECK(hj["healthy"] == false);
  CHECK(hj["failures"] == 1);
  CHECK(hj["error"].get<std::string>().find("is damaged") != std::string::npos);
  auto again = d.Mms({"predict", "corrupt", "--input", Data("rec_input.json")});
  CHECK(again.err.find("unhealthy") != std::string::npos);
  CHECK(again.err.find("next retry in") != std::string::npos);
  CHECK(json::parse(d.Mms({"--json", "health", "corrupt"}).out)["models"][0]["failures"] == 1);
  // The failure replayed at once for a version whose files are gone reads
  // the registry again (on a handler thread: not on nng's receiving thread,
  // where the replay is answered): still registered, so the same failure.
  auto gone = d.Mms({"predict", "gone", "--input", Data("rec_input.json")});
  CHECK(gone.exit_code == 1);
  CHECK_MESSAGE(gone.err.find("gone:1 is unhealthy: the stored artifact of gone:1 is damaged") != std::string::npos,
                gone.err);
  // Its original gone too: repack cannot help, and the message does not send the user there.
  CHECK_MESSAGE(gone.err.find("is not there either, so it cannot be repacked: register the model's files again") !=
                    std::string::npos,
                gone.err);
  CHECK(gone.err.find("mms model repack gone:1 writes") == std::string::npos);
  CHECK(d.Mms({"health", "tiny"}).exit_code == 0);
  // mms model verify names the changed file of each.
  auto v = d.Mms({"model", "verify", "modchanged"});
  CHECK(v.exit_code == 1);
  CHECK_MESSAGE(v.out.find("packed module.pt changed since registration") != std::string::npos, v.out);
  v = d.Mms({"model", "verify", "flipped"});
  CHECK(v.exit_code == 1);
  CHECK_MESSAGE(v.out.find("packed weights.safetensors changed since registration") != std::string::npos, v.out);
}

TEST_CASE("a version removed while a request waits for its load is NOT_FOUND (exit 4), not damaged") {
  // The load then found its files gone and said "damaged ... mms model repack",
  // exit 1, for a version that no longer existed (a review, racing rm --force).
  Daemon d;
  REQUIRE(d.ok());
  // `dir_left`: the load fails while rm is still deleting the files one by
  // one, its directory still there (a review saw CORRUPT then, 2 in 40).
  for (bool dir_left : {false, true}) {
    INFO("directory left: " << dir_left);
    REQUIRE(d.Mms({"model", "register", "gone", "--version", "1", "--path", Data("tiny.pt"), "-q"}).exit_code == 0);
    const std::string weights = mms::testing::PackedWeights(d.data_dir(), "gone", "1");
    mms::testing::BlockedFile blocked(weights);  // the load waits in open()
    REQUIRE(blocked.ok());
    const std::string outside = d.dir() + "/fifo";  // a name for the FIFO that outlives its directory
    ::unlink(outside.c_str());
    REQUIRE(::link(weights.c_str(), outside.c_str()) == 0);
    ProcResult r;
    std::thread t([&] { r = d.Mms({"predict", "gone", "--input", Data("tiny_input.json")}, 60); });
    REQUIRE(WaitFor([&] { return json::parse(d.Mms({"--json", "status"}).out)["in_flight"].get<int>() >= 1; }, 20));
    REQUIRE(d.Mms({"model", "rm", "gone:1", "--force", "-q"}).exit_code == 0);  // its files go with it
    if (dir_left) std::filesystem::create_directories(std::filesystem::path(weights).parent_path());
    int fd = -1;  // the waiting load reads an empty file
    REQUIRE(WaitFor([&] { return (fd = ::open(outside.c_str(), O_WRONLY | O_NONBLOCK)) >= 0; }, 10));
    ::close(fd);
    t.join();
    CHECK_MESSAGE(r.exit_code == 4, r.err);
    CHECK_MESSAGE(r.err.find("gone:1 was removed from the registry while this request waited for its load") !=
                      std::string::npos,
                  r.err);
    std::filesystem::remove_all(std::filesystem::path(weights).parent_path());
  }
}

TEST_CASE("mms model repack repairs damaged packed files and keeps the version's stage, alias and pin") {
  Daemon d("[pool]\nload_retry_backoff = \"1h\"\n");
  REQUIRE(d.ok());
  std::filesystem::copy_file(Data("deep.pt"), d.dir() + "/deep.pt");
  Register(d, "deep", "1", d.dir() + "/deep.pt");
  REQUIRE(d.Mms({"model", "stage", "deep:1", "production", "-q"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "alias", "set", "deep", "champion", "1"}).exit_code == 0);
  std::string old_dir = json::parse(d.Mms({"--json", "model", "show", "deep:1"}).out)["packed_dir"];
  FlipLastByte(old_dir + "/weights.safetensors");
  CHECK(d.Mms({"predict", "deep", "--input", Data("deep_input.json"), "-q"}).exit_code == 1);
  auto v = d.Mms({"model", "verify", "deep:1"});
  CHECK(v.exit_code == 1);
  CHECK_MESSAGE(v.out.find("mms model repack deep:1") != std::string::npos, v.out);
  auto r = d.Mms({"--json", "model", "repack", "deep:1"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  json j = json::parse(r.out);
  CHECK(j["previous_packed_dir"] == old_dir);
  CHECK(j["packed_dir"] != old_dir);
  CHECK(j["stage"] == "production");
  // Served at once (not after the hour's backoff), by the same id, stage and alias.
  CHECK(d.Mms({"predict", "deep@champion", "--input", Data("deep_input.json"), "-q"}).exit_code == 0);
  CHECK(d.Mms({"pin", "deep"}).exit_code == 0);
  CHECK(d.Mms({"model", "verify", "deep:1"}).exit_code == 0);
  // The old directory is left for a load in progress: listed as replaced,
  // not as a problem (verify failed for the hour --prune waits, after a repack that worked).
  auto all = d.Mms({"model", "verify"});
  CHECK_MESSAGE(all.exit_code == 0, all.out);
  CHECK(all.out.find("replaced by mms model repack") != std::string::npos);
  CHECK(d.Mms({"--json", "model", "history", "deep"}).out.find("\"repack\"") != std::string::npos);
  // Its packed directory deleted: repacked under a new name, served at once.
  REQUIRE(d.Mms({"unpin", "deep"}).exit_code == 0);
  REQUIRE(d.Mms({"evict", "deep"}).exit_code == 0);
  REQUIRE(d.Mms({"evict", "deep"}).exit_code == 0);  // host → disk
  std::filesystem::remove_all(json::parse(d.Mms({"--json", "model", "show", "deep:1"}).out)["packed_dir"].get<std::string>());
  CHECK(d.Mms({"predict", "deep", "--input", Data("deep_input.json"), "-q"}).exit_code == 1);
  auto again = d.Mms({"model", "repack", "deep:1"});
  REQUIRE_MESSAGE(again.exit_code == 0, again.err);
  CHECK(again.out.find("old files are left") == std::string::npos);  // none are
  CHECK(d.Mms({"predict", "deep", "--input", Data("deep_input.json"), "-q"}).exit_code == 0);
  // A sample given to repack records the inputs it shows, as registration
  // does: a wrong dtype is then refused up front (exit 2), not in forward().
  CHECK(json::parse(d.Mms({"--json", "model", "show", "deep:1"}).out)["inputs"][0]["dtype"].is_null());
  auto sampled = d.Mms({"model", "repack", "deep:1", "--sample-input", Data("deep_input.json")});
  REQUIRE_MESSAGE(sampled.exit_code == 0, sampled.err);
  json shown = json::parse(d.Mms({"--json", "model", "show", "deep:1"}).out);
  CHECK(shown["inputs"][0]["dtype"] == "float32");
  std::ofstream(d.dir() + "/ints.json") << R"({"x": {"dtype": "int64", "shape": [1, 8], "data": [1, 2, 3, 4, 5, 6, 7, 8]}})";
  auto wrong = d.Mms({"predict", "deep", "--input", d.dir() + "/ints.json"});
  CHECK(wrong.exit_code == 2);
  CHECK_MESSAGE(wrong.err.find("must be float32") != std::string::npos, wrong.err);
  // An original that changed since registration is no source for a repack (exit 1); nor one gone.
  std::ofstream(d.dir() + "/deep.pt", std::ios::app) << "x";
  auto changed = d.Mms({"model", "repack", "deep:1"});
  CHECK(changed.exit_code == 1);
  CHECK(changed.err.find("changed since registration") != std::string::npos);
  std::filesystem::remove(d.dir() + "/deep.pt");
  auto gone = d.Mms({"model", "repack", "deep:1"});
  CHECK(gone.exit_code == 1);
  CHECK(gone.err.find("is gone") != std::string::npos);
}

TEST_CASE("a version whose warm-up fails is unhealthy and not served") {
  Daemon d;
  REQUIRE(d.ok());
  std::ofstream(d.dir() + "/pos.json") << R"({"x": {"dtype": "float32", "shape": [1, 4], "data": [1, 2, 3, 4]}})";
  Register(d, "thrower", "1", Data("throws.pt"), {"--sample-input", d.dir() + "/pos.json"});
  // Make the stored warm-up input one the model rejects.
  json v = json::parse(d.Mms({"--json", "model", "show", "thrower"}).out);
  std::string packed = d.data_dir() + "/artifacts/thrower";
  for (const auto& e : std::filesystem::directory_iterator(packed))
    std::ofstream(e.path().string() + "/sample.json") << R"({"x": {"dtype": "float32", "shape": [1, 4], "data": [-1, 0, 0, 0]}})";
  auto r = d.Mms({"predict", "thrower", "--input", d.dir() + "/pos.json"});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("warm-up of thrower:1 failed") != std::string::npos);
  auto h = json::parse(d.Mms({"--json", "health"}).out);
  CHECK(h["healthy"] == false);
  CHECK(h["models"][0]["tier"] == "host");
  CHECK(r.err.find("mms model repack thrower:1 --sample-input") != std::string::npos);  // what to do
  // The repair the message names works at once: the host copy that failed
  // its warm-up was kept, and retried with the replaced files' sample.
  REQUIRE(d.Mms({"model", "repack", "thrower:1", "--sample-input", d.dir() + "/pos.json", "-q"}).exit_code == 0);
  auto again = d.Mms({"predict", "thrower", "--input", d.dir() + "/pos.json"});
  CHECK_MESSAGE(again.exit_code == 0, again.err);
  CHECK(json::parse(d.Mms({"--json", "health", "thrower"}).out)["healthy"] == true);
  // Its packed directory removed under the daemon while the weights are in
  // memory: the warm-up at the next promotion says the directory is gone,
  // not "replace the sample".
  const std::string dir = json::parse(d.Mms({"--json", "model", "show", "thrower:1"}).out)["packed_dir"];
  std::filesystem::remove_all(dir);
  REQUIRE(d.Mms({"evict", "thrower"}).exit_code == 0);  // device → host
  auto gone = d.Mms({"predict", "thrower", "--input", d.dir() + "/pos.json"});
  CHECK(gone.exit_code == 1);
  CHECK_MESSAGE(gone.err.find("the directory of its sample input, " + dir + ", is gone") != std::string::npos, gone.err);
  CHECK(gone.err.find("mms model repack thrower:1 --sample-input FILE") != std::string::npos);  // what to do
  REQUIRE(d.Mms({"model", "repack", "thrower:1", "--sample-input", d.dir() + "/pos.json", "-q"}).exit_code == 0);
  CHECK(d.Mms({"predict", "thrower", "--input", d.dir() + "/pos.json"}).exit_code == 0);
}

TEST_CASE("concurrent requests for a cold model cause exactly one load") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "rec", "1", Data("rec.pt"));
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int i = 0; i < 12; ++i)
    ts.emplace_back([&] {
      if (d.Mms({"predict", "rec", "--input", Data("rec_input.json"), "-q"}).exit_code == 0) ++ok;
    });
  for (auto& t : ts) t.join();
  CHECK(ok == 12);
  json m = FindModel(Pool(d), "rec:1");
  CHECK(m["loads"] == 1);
  CHECK(m["hits"].get<int>() + m["misses"].get<int>() == 12);
}

TEST_CASE("load, evict, pin and unpin, pins survive a restart and are preloaded") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "tiny", "1", Data("tiny.pt"));
  Register(d, "rec", "1", Data("rec.pt"));
  auto l = d.Mms({"--json", "load", "rec"});
  REQUIRE(l.exit_code == 0);
  CHECK(json::parse(l.out)["loaded"] == true);
  REQUIRE(d.Mms({"load", "rec"}).exit_code == 0);  // resident already
  json loaded = FindModel(Pool(d), "rec:1");
  CHECK(loaded["tier"] == "device");
  // An operator's load is no traffic: no hit, no miss, no last use.
  CHECK(loaded["hits"] == 0);
  CHECK(loaded["misses"] == 0);
  CHECK(loaded["last_use_ms_ago"].is_null());
  CHECK(json::parse(d.Mms({"--json", "evict", "rec"}).out)["tier"] == "host");
  CHECK(json::parse(d.Mms({"--json", "evict", "rec"}).out)["tier"] == "disk");
  auto none = d.Mms({"evict", "rec"});
  CHECK(none.exit_code == 1);
  CHECK(none.err.find("not loaded") != std::string::npos);
  auto p = d.Mms({"pin", "tiny"});
  REQUIRE(p.exit_code == 0);
  CHECK(p.out.find("pinned tiny:1 (on cpu)") != std::string::npos);
  CHECK(d.Mms({"evict", "tiny"}).exit_code == 6);
  CHECK(FindModel(Pool(d), "tiny:1")["pinned"] == true);
  // Restart: the pin comes back and the model is preloaded without a request.
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(20) == 0);
  REQUIRE(d.Restart());
  REQUIRE(WaitFor([&] { return FindModel(Pool(d), "tiny:1")["tier"] == "device"; }, 20));
  json m = FindModel(Pool(d), "tiny:1");
  CHECK(m["pinned"] == true);
  CHECK(m["hits"] == 0);
  CHECK(m["last_use_ms_ago"].is_null());  // preloaded, not used
  REQUIRE(d.Mms({"pin", "tiny"}).exit_code == 0);  // again, on a resident model: no hit either
  CHECK(FindModel(Pool(d), "tiny:1")["hits"] == 0);
  // The version is pinned through its name: unpin of the version says so.
  auto by_version = d.Mms({"unpin", "tiny:1"});
  CHECK(by_version.exit_code == 4);
  CHECK_MESSAGE(by_version.err.find("is not pinned by mms pin, but by mms pin tiny, which now names tiny:1: mms unpin tiny") !=
                    std::string::npos,
                by_version.err);
  REQUIRE(d.Mms({"unpin", "tiny"}).exit_code == 0);
  CHECK(FindModel(Pool(d), "tiny:1")["pinned"] == false);
  CHECK(d.Mms({"evict", "tiny"}).exit_code == 0);
  // A daemon there but not answering: recorded, nothing loaded, exit 3 (it
  // said "pinned", exit 0, and a script went on to send traffic).
  d.child().Signal(SIGSTOP);
  auto hung = d.Mms({"--timeout", "1", "pin", "tiny"});
  d.child().Signal(SIGCONT);
  CHECK(hung.exit_code == 3);
  CHECK_MESSAGE(hung.err.find("the pin of tiny is recorded") != std::string::npos, hung.err);
  const json pinned = json::parse(d.Mms({"--json", "pin", "tiny"}).out);
  CHECK(pinned["on_device"] == true);
  CHECK(pinned["ref"] == "tiny");  // the pin, as named
  CHECK(pinned["resolved"].get<std::string>().rfind("tiny:", 0) == 0);
  CHECK(pinned["resolved"] == "tiny:" + pinned["version"].get<std::string>());  // "version": the number, as predict has it
  REQUIRE(d.Mms({"unpin", "tiny"}).exit_code == 0);
  // Pinning needs no daemon: it is recorded and applied at the next start.
  d.child().Signal(SIGTERM);
  REQUIRE(d.child().Wait(20) == 0);
  auto offline = d.Mms({"pin", "rec:1"});
  CHECK(offline.exit_code == 0);
  CHECK(offline.out.find("preloads pins when it starts") != std::string::npos);
  CHECK(json::parse(d.Mms({"--json", "pin", "rec:1"}).out)["on_device"] == false);
  REQUIRE(d.Restart());
  CHECK(WaitFor([&] { return FindModel(Pool(d), "rec:1")["tier"] == "device"; }, 20));
  // A pin by name follows the model's versions: the production one removed,
  // it pins the next, and unpinning it succeeds with the daemon running
  // (it used to exit 4 after unpinning, when the name resolved to nothing).
  REQUIRE(d.Mms({"-q", "model", "register", "rec", "--version", "2", "--path", TestDataDir() + "/rec.pt"}).exit_code == 0);
  REQUIRE(d.Mms({"pin", "rec"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "rm", "rec:2", "--force"}).exit_code == 0);
  auto unpin = d.Mms({"--json", "unpin", "rec"});
  CHECK_MESSAGE(unpin.exit_code == 0, unpin.err);
  CHECK(json::parse(unpin.out)["pinned"] == false);
  CHECK(d.Mms({"unpin", "rec"}).exit_code == 4);  // no pin left: not found, as before
  // The model's last version removed: its pin by name goes with it (a model
  // registered later under the name is not pinned by it), audited.
  REQUIRE(d.Mms({"pin", "rec"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "rm", "rec:1", "--force"}).exit_code == 0);
  CHECK(d.Mms({"unpin", "rec"}).exit_code == 4);
  CHECK(d.Mms({"model", "history", "rec"}).out.find("its last version was removed") != std::string::npos);
  REQUIRE(d.Mms({"-q", "model", "register", "rec", "--version", "1", "--path", TestDataDir() + "/rec.pt"}).exit_code == 0);
  CHECK(d.Mms({"unpin", "rec"}).exit_code == 4);  // the new rec is not pinned
}

TEST_CASE("when nothing can be evicted the request fails at once naming what holds the memory") {
  const int port = FreePort();
  Daemon d("[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\n", {"--metrics-address", "127.0.0.1:" + std::to_string(port)});
  REQUIRE(d.ok());
  REQUIRE(Run({BinDir() + "/mms-gen-testdata", d.dir(), "--customers", "3", "--size-kb", "400"}).exit_code == 0);
  for (int i = 0; i < 3; ++i)
    Register(d, "c" + std::to_string(i), "1", d.dir() + "/customer-0" + std::to_string(i) + ".pt");
  REQUIRE(d.Mms({"pin", "c0"}).exit_code == 0);
  REQUIRE(d.Mms({"pin", "c1"}).exit_code == 0);
  auto t0 = std::chrono::steady_clock::now();
  auto r = d.Mms({"predict", "c2", "--input", d.dir() + "/customer_input.json"});
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(r.exit_code == 5);
  CHECK(r.err.find("c0:1") != std::string::npos);
  CHECK(r.err.find("c1:1") != std::string::npos);
  CHECK(r.err.find("pinned") != std::string::npos);
  CHECK(s < 10);
  // A pin that cannot be preloaded is refused the same way and not kept:
  // the registry holds no pin of c2 (unpin finds none), and a restarted
  // daemon would not fail on it at every start.
  auto pin = d.Mms({"pin", "c2"});
  CHECK(pin.exit_code == 5);
  CHECK(pin.err.find("c2 was not pinned") != std::string::npos);
  CHECK(d.Mms({"unpin", "c2"}).exit_code == 4);
  CHECK(d.Mms({"pin", "c1"}).exit_code == 0);  // an existing pin: nothing to preload, nothing undone
  REQUIRE(d.Mms({"unpin", "c1"}).exit_code == 0);
  CHECK(d.Mms({"predict", "c2", "--input", d.dir() + "/customer_input.json", "-q"}).exit_code == 0);
  json pool = Pool(d);
  CHECK(FindModel(pool, "c1:1")["tier"] == "host");
  CHECK(FindModel(pool, "c2:1")["tier"] == "device");
  // A version bigger than the device budget is refused at every request:
  // mms health says so (it listed it as healthy), exit 1.
  REQUIRE(Run({BinDir() + "/mms-gen-testdata", d.dir(), "--customers", "1", "--size-kb", "2048", "--prefix", "big"})
              .exit_code == 0);
  Register(d, "big", "1", d.dir() + "/big-00.pt");
  auto h = d.Mms({"--json", "health", "big"});
  CHECK(h.exit_code == 1);
  json hj = json::parse(h.out);
  CHECK(hj["models"][0]["healthy"] == false);
  CHECK(hj["models"][0]["error"].get<std::string>().find("largest device budget") != std::string::npos);
  CHECK(d.Mms({"health", "c2"}).exit_code == 0);
  // mms pool agrees (it listed it as ok), and a request is exit 1, not 5
  // ("rejected, retry later"): no retry can load it.
  json big = FindModel(Pool(d), "big:1");
  CHECK(big["healthy"] == false);
  CHECK(big["error"].get<std::string>().find("it can never be loaded") != std::string::npos);
  auto p = d.Mms({"predict", "big", "--input", d.dir() + "/customer_input.json"});
  CHECK(p.exit_code == 1);
  CHECK(p.err.find("raise that budget in mmsd's config") != std::string::npos);
  // /metrics agrees: the alert on mms_model_healthy == 0 fires (it read 1).
  const std::string metrics = Run({"/usr/bin/curl", "-s", "http://127.0.0.1:" + std::to_string(port) + "/metrics"}).out;
  CHECK_MESSAGE(metrics.find("mms_model_healthy{model=\"big\",version=\"1\"} 0") != std::string::npos, metrics);
  CHECK(metrics.find("mms_model_healthy{model=\"c2\",version=\"1\"} 1") != std::string::npos);
}

TEST_CASE("pins that do not fit when mmsd starts are shown as such, and preloaded once room frees") {
  Daemon d("[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\n[registry]\npoll_interval = \"200ms\"\n");
  REQUIRE(d.ok());
  REQUIRE(Run({BinDir() + "/mms-gen-testdata", d.dir(), "--customers", "3", "--size-kb", "400"}).exit_code == 0);
  for (int i = 0; i < 3; ++i)
    Register(d, "c" + std::to_string(i), "1", d.dir() + "/customer-0" + std::to_string(i) + ".pt");
  d.child().Signal(SIGKILL);
  d.child().Wait(10);
  for (const char* c : {"c0:1", "c1:1", "c2:1"}) REQUIRE(d.Mms({"pin", c}).exit_code == 0);  // recorded, mmsd down
  REQUIRE(d.Restart());
  // Two fit; the third is pinned but on disk, and says why.
  std::string missing;
  REQUIRE(WaitFor([&] {
    json pool = Pool(d);
    for (const char* c : {"c0:1", "c1:1", "c2:1"}) {
      json m = FindModel(pool, c);
      if (m.contains("pin_error")) missing = c;
    }
    return !missing.empty();
  }, 20));
  json m = FindModel(Pool(d), missing);
  CHECK(m["pinned"] == true);
  CHECK(m["pin_error"].get<std::string>().find("nothing more can be evicted") != std::string::npos);
  CHECK(d.Mms({"pool"}).out.find(missing + " is pinned but not on a device") != std::string::npos);
  auto health = d.Mms({"health", missing});
  CHECK(health.exit_code == 0);  // healthy: it serves (after a load), it is just not held
  CHECK(health.out.find("pinned but not on a device") != std::string::npos);
  CHECK(Count(d.log(), "pin_preload_failed") == 1);  // tried at every poll, logged once
  // Another pin goes: the missing one is preloaded at the next poll.
  std::string other = missing == "c0:1" ? "c1:1" : "c0:1";
  REQUIRE(d.Mms({"unpin", other}).exit_code == 0);
  CHECK(WaitFor([&] { return FindModel(Pool(d), missing)["tier"] == "device"; }, 20));
  CHECK_FALSE(FindModel(Pool(d), missing).contains("pin_error"));
  // A [pool] pinned entry that names no version pins nothing: mms health and
  // mms pool say so (it was only a line in the log), without failing health.
  std::ofstream(d.dir() + "/mms.toml") << "[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\n"
                                           "pinned = [\"c2\", \"nosuchmodel\", \"c1:7\"]\n"
                                           "[registry]\npoll_interval = \"200ms\"\n";
  d.child().Signal(SIGHUP);
  REQUIRE(WaitFor([&] { return Pool(d).contains("unresolved_pins"); }, 10));
  json pins = Pool(d)["unresolved_pins"];
  REQUIRE(pins.size() == 2);
  CHECK(pins[0]["ref"] == "nosuchmodel");
  CHECK(pins[0]["source"] == "[pool] pinned");
  CHECK(pins[1]["ref"] == "c1:7");
  auto h = d.Mms({"health"});
  CHECK(h.exit_code == 0);
  CHECK_MESSAGE(h.err.find("warning: the pin nosuchmodel ([pool] pinned) pins nothing") != std::string::npos, h.err);
  CHECK(d.Mms({"pool"}).err.find("the pin c1:7 ([pool] pinned) pins nothing") != std::string::npos);
  // A CLI that did not read mmsd's config: unpin asks mmsd what pins it.
  REQUIRE(d.Mms({"unpin", "c2:1"}).exit_code == 0);  // its mms pin; [pool] pinned still holds it
  REQUIRE(WaitFor([&] { return FindModel(Pool(d), "c2:1")["pinned"] == true; }, 10));
  auto un = Run({MmsBin(), "--socket", d.socket(), "--data-dir", d.data_dir(), "unpin", "c2:1"});
  CHECK(un.exit_code == 4);
  CHECK_MESSAGE(un.err.find("c2:1 is not pinned by mms pin, but mmsd has it pinned by [pool] pinned (c2)") !=
                    std::string::npos,
                un.err);
}

TEST_CASE("several devices, each with its own budget, placement spreads models") {
  Daemon d("[pool]\ndevices = [\"cpu:0\", \"cpu:1\"]\ndevice_budget = \"1MiB\"\n");
  REQUIRE(d.ok());
  REQUIRE(Run({BinDir() + "/mms-gen-testdata", d.dir(), "--customers", "4", "--size-kb", "300"}).exit_code == 0);
  for (int i = 0; i < 4; ++i) {
    Register(d, "c" + std::to_string(i), "1", d.dir() + "/customer-0" + std::to_string(i) + ".pt");
    REQUIRE(d.Mms({"load", "c" + std::to_string(i)}).exit_code == 0);
  }
  json pool = Pool(d);
  REQUIRE(pool["devices"].size() == 2);
  CHECK(pool["devices"][0]["models"].size() == 2);
  CHECK(pool["devices"][1]["models"].size() == 2);
  CHECK(pool["devices"][0]["budget"] == 1 << 20);
  // Each tier has its own policy: the default, adaptive, with the half-life it ranks by now.
  for (const json& tier : {pool["devices"][0], pool["devices"][1], pool["host"]}) {
    CHECK(tier["policy"] == "adaptive");
    CHECK(tier["policy_half_life"].get<double>() > 0);
  }
  auto table = d.Mms({"pool"});
  CHECK(table.out.find("adaptive (half-life ") != std::string::npos);
  auto st = json::parse(d.Mms({"--json", "status"}).out);
  CHECK(st["devices"][0]["name"] == "cpu:0");
  CHECK(st["pool"]["models_on_device"] == 4);
}

TEST_CASE("SIGTERM lets a running request finish, a slow request blocks nobody else") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "slow", "1", Data("slow.pt"));
  REQUIRE(d.Mms({"load", "slow"}).exit_code == 0);
  ProcResult slow;
  std::atomic<bool> done{false};
  std::thread t([&] {
    slow = d.Mms({"predict", "slow", "--input", Data("slow_input.json"), "-o", d.dir() + "/slow_out.json"});
    done = true;
  });
  // Wait until it is in flight, then check another client is answered meanwhile.
  REQUIRE(WaitFor([&] { return FindModel(Pool(d), "slow:1")["in_flight"] == 1; }, 20));
  auto ping = d.Mms({"--json", "ping"});
  CHECK(ping.exit_code == 0);
  CHECK_FALSE(done.load());
  d.child().Signal(SIGTERM);
  t.join();
  CHECK(slow.exit_code == 0);
  CHECK(d.child().Wait(30) == 0);
  CHECK(std::filesystem::exists(d.dir() + "/slow_out.json"));
}

TEST_CASE("a version removed and registered again starts its serving figures from zero") {
  Daemon d;
  REQUIRE(d.ok());
  Register(d, "tiny", "1", Data("tiny.pt"));
  for (int i = 0; i < 3; ++i)
    REQUIRE(d.Mms({"predict", "tiny", "--input", Data("tiny_input.json"), "-q"}).exit_code == 0);
  REQUIRE(d.Mms({"model", "rm", "tiny:1", "--force", "-q"}).exit_code == 0);
  Register(d, "tiny", "1", Data("tiny_v2.pt"));
  REQUIRE(d.Mms({"predict", "tiny", "--input", Data("tiny_input.json"), "-q"}).exit_code == 0);
  int requests = -1;
  json stats = json::parse(d.Mms({"--json", "stats"}).out);
  for (const auto& m : stats["models"])
    if (m["ref"] == "tiny:1") requests = m["requests"].get<int>();
  CHECK(requests == 1);  // not 4: the removed version's requests are not the new one's
  // Refused bad input counts as a request and an error of its code, but adds no latency.
  for (int i = 0; i < 3; ++i)
    CHECK(d.Mms({"predict", "tiny", "--input", Data("tiny_missing.json"), "-q"}).exit_code == 2);
  json after = json::parse(d.Mms({"--json", "stats"}).out);
  for (const auto& m : after["models"])
    if (m["ref"] == "tiny:1") {
      CHECK(m["requests"] == 4);
      CHECK(m["errors"] == 3);
      CHECK(m["latency"]["count"] == 1);
    }
}

namespace {
// An input that keeps the slow model busy for a second or more.
std::string LongSlowInput(const Daemon& d) {
  std::string path = d.dir() + "/slow_long.json", data;
  for (int i = 0; i < 256 * 256; ++i) data += (i ? ",0." : "0.") + std::to_string(i % 10);
  std::ofstream(path) << R"({"x": {"dtype": "float32", "shape": [256, 256], "data": [)" << data << "]}}";
  return path;
}

// 1 MiB (the least device_budget) holds four 256 KiB slow models: s:3 and
// s:4 pinned, s:1 and s:2 registered for requests, s:5 for the one that
// finds no room.
void SetupFullDevice(const Daemon& d) {
  for (const char* v : {"1", "2", "3", "4", "5"}) Register(d, "s", v, Data("slow.pt"));
  for (const char* pin : {"s:3", "s:4"}) REQUIRE(d.Mms({"pin", pin}).exit_code == 0);
  REQUIRE(WaitFor([&] {
    json pool = Pool(d);
    return FindModel(pool, "s:3").value("tier", "") == "device" && FindModel(pool, "s:4").value("tier", "") == "device";
  }, 30));
}

// Two slow requests in flight on s:1 and s:2, which fill the device with the pins.
struct TwoInFlight {
  std::vector<std::thread> threads;
  std::vector<ProcResult> results{2};
  TwoInFlight(const Daemon& d, const std::string& input) {
    for (int i = 0; i < 2; ++i)
      threads.emplace_back([&d, input, i, this] {
        results[static_cast<size_t>(i)] = d.Mms({"predict", "s:" + std::to_string(i + 1), "--input", input}, 120);
      });
    REQUIRE(WaitFor([&] {
      json pool = Pool(d);
      return FindModel(pool, "s:1").value("in_flight", 0) == 1 && FindModel(pool, "s:2").value("in_flight", 0) == 1;
    }, 60));
  }
  void Join() {
    for (auto& t : threads) t.join();
    for (auto& r : results) CHECK_MESSAGE(r.exit_code == 0, r.err);
  }
};
}  // namespace

TEST_CASE("a request whose room requests in flight hold waits for one to end, then loads: no POOL_FULL") {
  // With every device slot held by a request in flight, the next cold
  // request failed POOL_FULL at once (about 1% of requests at 16 clients on
  // 7 slots): a moment's wait reported as an error.
  const int port = FreePort();
  Daemon d("[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\nroom_wait = \"2m\"\n",
           {"--metrics-address", "127.0.0.1:" + std::to_string(port)});
  REQUIRE(d.ok());
  SetupFullDevice(d);
  const std::string input = LongSlowInput(d);
  TwoInFlight busy(d, input);
  // A deadline shorter than the wait answers first, and says what it waited for.
  auto late = d.Mms({"predict", "s:5", "--input", Data("slow_input.json"), "--deadline-ms", "300"}, 120);
  CHECK(late.exit_code == 5);
  CHECK_MESSAGE(late.err.find("dropped at its deadline (300 ms) while s:5 waited for room on a device") !=
                    std::string::npos, late.err);
  auto r = d.Mms({"--json", "predict", "s:5", "--input", Data("slow_input.json")}, 120);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(json::parse(r.out)["loaded"] == true);
  busy.Join();
  json totals = Pool(d)["totals"];
  CHECK(totals["room_waits"] == 2);
  CHECK(totals["room_wait_timeouts"] == 0);
  CHECK(d.Mms({"pool"}).out.find("2 requests waited for room held by requests in flight; 0 refused") != std::string::npos);
  const std::string metrics = Run({"/usr/bin/curl", "-s", "http://127.0.0.1:" + std::to_string(port) + "/metrics"}).out;
  CHECK_MESSAGE(metrics.find("mms_pool_room_waits_total{pool=\"models\"} 2") != std::string::npos, metrics);
  CHECK(metrics.find("mms_pool_room_wait_timeouts_total{pool=\"models\"} 0") != std::string::npos);
  CHECK(metrics.find("mms_pool_room_waits_total{pool=\"adapters\"} 0") != std::string::npos);
}

TEST_CASE("models kept busy by overlapping requests are drained for a cold request: it is served, and so are theirs") {
  // Each of s:1 and s:2 always had a request in flight (two clients each,
  // back to back), so neither was ever idle when the waiting request was
  // retried: it failed POOL_FULL when room_wait passed.
  Daemon d("[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\nroom_wait = \"4s\"\n");
  REQUIRE(d.ok());
  SetupFullDevice(d);
  const std::string input = LongSlowInput(d);
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<ProcResult> failed;
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i)
    clients.emplace_back([&, i] {
      while (!stop.load()) {
        ProcResult r = d.Mms({"predict", "s:" + std::to_string(1 + i % 2), "--input", input}, 120);
        if (r.exit_code != 0) {
          std::lock_guard lock(mu);
          failed.push_back(r);
        }
      }
    });
  REQUIRE(WaitFor([&] {
    json pool = Pool(d);
    return FindModel(pool, "s:1").value("in_flight", 0) >= 1 && FindModel(pool, "s:2").value("in_flight", 0) >= 1;
  }, 60));
  auto r = d.Mms({"--json", "predict", "s:5", "--input", Data("slow_input.json")}, 120);
  stop = true;
  for (auto& t : clients) t.join();
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  for (const auto& f : failed) CHECK_MESSAGE(f.exit_code == 0, f.err);
  json totals = Pool(d)["totals"];
  CHECK(totals["room_drains"] >= 1);
  CHECK(totals["room_wait_timeouts"] == 0);
  CHECK(d.Mms({"pool"}).out.find("in flight drained for requests still waiting halfway through [pool] room_wait") !=
        std::string::npos);
}

TEST_CASE("SIGTERM past shutdown_grace answers a request still waiting for room: not run, safe to send again") {
  // Its answer came only after the server stopped: a dropped connection.
  Daemon d("[daemon]\nshutdown_grace = \"1s\"\n[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\n"
           "room_wait = \"2m\"\n");
  REQUIRE(d.ok());
  SetupFullDevice(d);
  const std::string input = LongSlowInput(d);
  std::vector<std::thread> threads;
  std::vector<ProcResult> busy(6);  // s:1 and s:2 busy past the grace
  for (size_t i = 0; i < busy.size(); ++i)
    threads.emplace_back([&, i] { busy[i] = d.Mms({"predict", "s:" + std::to_string(1 + i % 2), "--input", input}, 120); });
  REQUIRE(WaitFor([&] {
    json pool = Pool(d);
    return FindModel(pool, "s:1").value("in_flight", 0) >= 1 && FindModel(pool, "s:2").value("in_flight", 0) >= 1;
  }, 60));
  ProcResult waiting;
  std::thread t([&] { waiting = d.Mms({"predict", "s:5", "--input", Data("slow_input.json")}, 120); });
  REQUIRE(WaitFor([&] { return Pool(d)["totals"]["waiting_for_room"] == 1; }, 30));
  d.child().Signal(SIGTERM);
  d.child().Wait(60);
  t.join();
  for (auto& th : threads) th.join();
  CHECK(waiting.exit_code == 3);
  CHECK_MESSAGE(waiting.err.find("not run: mmsd is shutting down") != std::string::npos, waiting.err);
}

TEST_CASE("when room_wait passes with the room still held, POOL_FULL (exit 5) names the holders and the wait") {
  // Held by pins and by loads (their reads blocked): neither is drained.
  Daemon d("[pool]\ndevices = [\"cpu\"]\ndevice_budget = \"1MiB\"\nroom_wait = \"300ms\"\n");
  REQUIRE(d.ok());
  SetupFullDevice(d);
  mms::testing::BlockedFile w1(mms::testing::PackedWeights(d.data_dir(), "s", "1"));
  mms::testing::BlockedFile w2(mms::testing::PackedWeights(d.data_dir(), "s", "2"));
  REQUIRE(w1.ok());
  REQUIRE(w2.ok());
  std::vector<std::thread> loading;
  for (const char* ref : {"s:1", "s:2"})
    loading.emplace_back([&d, ref] { (void)d.Mms({"predict", ref, "--input", Data("slow_input.json")}, 120); });
  REQUIRE(WaitFor([&] {
    json pool = Pool(d);
    return FindModel(pool, "s:1").value("loading", false) && FindModel(pool, "s:2").value("loading", false);
  }, 60));
  auto r = d.Mms({"predict", "s:5", "--input", Data("slow_input.json")}, 120);
  CHECK(r.exit_code == 5);
  CHECK_MESSAGE(r.err.find("no device can take s:5") != std::string::npos, r.err);
  CHECK(r.err.find("pinned") != std::string::npos);
  CHECK(r.err.find(", loading)") != std::string::npos);  // the loads' claimed room, named
  CHECK(r.err.find("fragmented") == std::string::npos);
  CHECK(r.err.find("(this request waited ") != std::string::npos);
  CHECK(r.err.find(" for that room; [pool] room_wait is 300.0 ms)") != std::string::npos);
  CHECK(r.err.find("unpin a model") != std::string::npos);  // two pins hold the rest
  w1.Release();
  w2.Release();
  for (auto& t : loading) t.join();
  CHECK(Pool(d)["totals"]["room_wait_timeouts"] == 1);
  CHECK(Pool(d)["totals"]["room_drains"] == 0);
}
