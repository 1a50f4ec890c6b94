// `mmsd inspect-artifact`: the registration-time check run by `mms model
// register` (the mms CLI does not link libtorch, so it asks mmsd). Loads the
// TorchScript archive, describes its forward() inputs and weights, runs the
// sample input when given, and writes the packed form when --pack-dir is set.
// Prints one JSON object on stdout. Exit: 0 ok, 2 not a usable artifact, 1 other.
#include <iostream>

#include <CLI/CLI.hpp>

#include "artifact_tool.h"
#include "pool/torch_artifact.h"

namespace mms {

int RunArtifactTool(int argc, char** argv) {
  CLI::App app{"mmsd inspect-artifact: check (and pack) a TorchScript artifact"};
  std::string path, pack_dir, sample;
  app.add_option("--path", path, "the TorchScript file")->required();
  app.add_option("--pack-dir", pack_dir, "write weights.safetensors and module.pt here");
  app.add_option("--sample-input", sample, "a tensor file (JSON or safetensors) to run once");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  auto info = PackTorchScript(path, pack_dir, sample);
  if (!info.ok()) {
    std::cerr << info.status().message() << "\n";
    return info.status().code() == Code::kInvalidArgument || info.status().code() == Code::kNotFound ||
                   info.status().code() == Code::kCorrupt
               ? 2
               : 1;
  }
  std::cout << info->ToJson().dump() << "\n";
  return 0;
}

}  // namespace mms
