#pragma once

namespace mms {
// argv[0] is "inspect-artifact".
int RunArtifactTool(int argc, char** argv);
}  // namespace mms
