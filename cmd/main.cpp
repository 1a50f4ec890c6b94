// mms: the command line of the mms serving system. Parses with CLI11, hands
// each command to its cmd_*.cpp, and exits with the documented codes.
// Does not link libtorch (checked by a test: `ldd mms`).
#include <exception>
#include <iostream>
#include <cstdlib>
#include <cstring>
#include <cerrno>
#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "cli.h"
#include "core/units.h"
#include "core/version.h"

namespace {

const char* kExitCodes = R"(Exit codes:
  0   ok
  1   error
  2   usage error or invalid argument
  3   daemon unreachable (start it with: mms serve --detach)
  4   not found (model, version, alias, experiment, request id)
  5   rejected: rate limited, pool full, overloaded, deadline exceeded
  6   conflict: already exists, in use, changed or ended meanwhile, or the registry locked by another writer
  10  canary start --wait, canary wait: rolled back automatically
  11  canary start --wait, canary wait: aborted by hand
  12  canary start --wait, canary wait: --timeout reached (the canary carries on)
)";

}  // namespace

// The commands under `at` a user may type (not the internal "__complete").
static std::vector<CLI::App*> Commands(CLI::App* at) {
  return at->get_subcommands([](CLI::App* sub) { return sub->get_name().rfind("__", 0) != 0; });  // keeps where true
}

static std::string Join(const std::vector<CLI::App*>& apps) {
  std::string list;
  for (CLI::App* a : apps) list += (list.empty() ? "" : ", ") + a->get_name();
  return list;
}

// CLI11 says "A subcommand is required" for a mistyped command: name the word
// it did not know, and the closest command at that level.
// "unknown option '--inptu'; did you mean '--input'?" for the first option
// the parse left over, among the options of the command given; "" if none.
static std::string UnknownOption(CLI::App& app) {
  std::string bad;
  for (const std::string& a : app.remaining(true))
    if (a.size() > 1 && a[0] == '-') {
      bad = a.substr(0, a.find('='));
      break;
    }
  if (bad.empty()) return "";
  CLI::App* at = &app;
  std::string path = "mms";
  while (!at->get_subcommands().empty()) {
    at = at->get_subcommands().front();
    path += " " + at->get_name();
  }
  std::vector<std::string> names;
  for (CLI::App* a = at; a; a = a->get_parent())
    for (const CLI::Option* o : a->get_options())
      for (const std::string& l : o->get_lnames()) names.push_back("--" + l);
  std::string hint = mms::ClosestMatch(bad, names);
  return "unknown option '" + bad + "' for '" + path + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?");
}

static std::string UsageError(CLI::App& app, int argc, char** argv, const std::string& what) {
  if (what.find("subcommand is required") == std::string::npos) return what;
  static const std::set<std::string> kValued = {"--socket", "--data-dir", "--config", "--timeout"};
  CLI::App* at = &app;
  std::string path = "mms";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (kValued.count(a)) {
      ++i;
      continue;
    }
    if (a.empty() || a[0] == '-') continue;
    std::vector<CLI::App*> commands = Commands(at);
    auto next = std::find_if(commands.begin(), commands.end(), [&](CLI::App* c) { return c->check_name(a); });
    if (next == commands.end()) {
      // A word that starts exactly one command ("stat" → status) before the nearest by edits.
      std::vector<std::string> names, prefixed;
      for (CLI::App* c : commands) {
        names.push_back(c->get_name());
        if (c->get_name().rfind(a, 0) == 0) prefixed.push_back(c->get_name());
      }
      std::string hint = prefixed.size() == 1 ? prefixed[0] : mms::ClosestMatch(a, names);
      return "unknown command '" + path + " " + a + "'" +
             (hint.empty() ? " (" + path + " has: " + Join(commands) + ")" : "; did you mean '" + path + " " + hint + "'?");
    }
    at = *next;
    path += " " + a;
  }
  return "'" + path + "' needs a command: " + Join(Commands(at));
}

int main(int argc, char** argv) {
  using namespace mms::cli;
  Cli cli;
  CLI::App app{"mms: register, serve, experiment with and roll out models on the mmsd daemon"};
  app.set_version_flag("--version", std::string("mms ") + MMS_VERSION);
  app.footer(kExitCodes);
  app.require_subcommand(1);
  app.fallthrough();  // globals may also follow the subcommand
  app.add_option("--socket", cli.g.socket,
                 "daemon socket (default: $XDG_RUNTIME_DIR/mms/mms.sock, else <data dir>/mms.sock)");
  app.add_option("--data-dir", cli.g.data_dir, "data directory (default: $XDG_DATA_HOME/mms)");
  app.add_option("--config", cli.g.config, "mms.toml (default: $MMS_CONFIG, ~/.config/mms/mms.toml)");
  app.add_flag("--json", cli.g.json, "machine-readable output");
  app.add_flag("--quiet,-q", cli.g.quiet, "no progress or notes on stderr");
  auto* timeout_opt =
      app.add_option("--timeout", cli.g.timeout_s, "seconds (or a duration: 90s, 2m) to wait for the daemon's reply (default 60)");
  timeout_opt
      ->transform(CLI::Validator(  // (a transform: a check's changes to the text are not kept)
          [](std::string& v) -> std::string {
            std::optional<double> s = ParseDecimal(v);
            if (!s || !(*s > 0))
              if (auto ns = mms::ParseDurationNanos(v); ns.ok() && *ns > 0)  // as the canary's --timeout takes it
                s = static_cast<double>(*ns) / 1e9;
            if (!s || !(*s > 0))
              return "expected seconds above 0 (such as 5 or 0.5) or a duration (such as 90s or 2m), got '" + v + "'";
            // Under a millisecond nothing can reach mmsd (it said exit 2, 3 or
            // 5 by chance); past kMaxTimeoutSeconds the wait is that long.
            if (*s < 0.001) return "--timeout " + v + " is under 1 ms, too short to reach mmsd: give at least 1ms";
            char text[32];
            std::snprintf(text, sizeof text, "%.17g", std::min(*s, kMaxTimeoutSeconds));
            v = text;
            return "";
          },
          "SECONDS"))
      // Commands run inside app.parse(): known here, not after it returns.
      ->each([&cli](const std::string&) { cli.g.timeout_given = true; });

  AddDaemonCommands(app, cli);
  AddModelCommands(app, cli);
  AddPoolCommands(app, cli);
  AddExperimentCommands(app, cli);
  AddRolloutCommands(app, cli);
  AddLimitCommands(app, cli);
  AddAdapterCommands(app, cli);
  AddBackupCommands(app, cli);
  AddCompletionCommands(app, cli);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    // With --json (before or after it), as JSON like every other answer.
    for (int i = 1; i < argc; ++i)
      if (std::string(argv[i]) == "--json") {
        std::cout << nlohmann::json{{"version", MMS_VERSION}}.dump() << std::endl;
        return 0;
      }
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // As JSON when --json was given (the flag itself may not have been parsed).
    for (int i = 1; i < argc; ++i) cli.g.json = cli.g.json || std::string(argv[i]) == "--json";
    std::string what = UsageError(app, argc, argv, e.what());
    // CLI11 checks required options before it reports extras: a mistyped
    // "--inptu" read as "--input is required". The typo is the error.
    if (dynamic_cast<const CLI::RequiredError*>(&e) || dynamic_cast<const CLI::ExtrasError*>(&e))
      if (std::string unknown = UnknownOption(app); !unknown.empty()) what = unknown;
    return cli.Fail(mms::InvalidArgument(what +
                                         (cli.g.json ? "" : "\nRun 'mms --help' (or 'mms COMMAND --help') for usage.")));
  } catch (const std::exception& e) {
    // A command threw instead of returning a Status (a bug): report it, as
    // JSON with --json, and exit 1 rather than aborting.
    return cli.Fail(mms::Internal(std::string("unexpected error: ") + e.what() +
                                  " (a bug in mms; please report it with the command that caused it)"));
  }
  // Output lost to a full disk or a closed pipe is an error, not a success.
  std::cout.flush();
  if (!std::cout) {
    std::cerr << "mms: cannot write the output to standard output: " << std::strerror(errno) << "\n";
    return cli.exit_code ? cli.exit_code : 1;
  }
  return cli.exit_code;
}
