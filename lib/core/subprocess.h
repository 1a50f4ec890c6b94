// Running a child program to completion and capturing its output (the CLI
// asks mmsd to check artifacts; tests run the real binaries).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace mms {

struct ProcResult {
  int exit_code = -1;  // 128+signal when killed by a signal; 127 when it could not start
  std::string out;
  std::string err;
  bool timed_out = false;
};

// Runs argv[0] (a path, or a name looked up in PATH) with `env` added to the
// environment; kills it after `timeout_s`. The child is killed if this
// process dies first (PR_SET_PDEATHSIG).
ProcResult RunProcess(const std::vector<std::string>& argv, double timeout_s = 600,
                      const std::map<std::string, std::string>& env = {}, const std::string& stdin_data = "");

}  // namespace mms
