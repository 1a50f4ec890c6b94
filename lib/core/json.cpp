#include "core/json.h"

#include <string>
#include <unordered_set>
#include <vector>

namespace mms {

Result<nlohmann::json> ParseJsonStrict(std::string_view text, size_t max_depth) {
  struct TooDeep {};
  std::vector<std::unordered_set<std::string>> keys;  // per open object (a header may hold many thousands)
  std::string twice;
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if ((ev == E::object_start || ev == E::array_start) && static_cast<size_t>(depth) >= max_depth) throw TooDeep{};
    if (ev == E::object_start) keys.emplace_back();
    else if (ev == E::object_end && !keys.empty()) keys.pop_back();
    else if (ev == E::key && !keys.empty() && !keys.back().insert(parsed.get<std::string>()).second && twice.empty())
      twice = parsed.get<std::string>();
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), cb);
  } catch (const TooDeep&) {
    return InvalidArgument("nested deeper than " + std::to_string(max_depth) + " levels, the most mms reads");
  } catch (const nlohmann::json::exception& e) {  // a parse error, or a number out of range
    std::string what = e.what();
    if (auto at = what.find("] "); at != std::string::npos) what = what.substr(at + 2);
    return InvalidArgument("not valid JSON: " + what);
  }
  if (!twice.empty()) return InvalidArgument("the key '" + twice + "' appears twice in one object");
  return j;
}

}  // namespace mms
