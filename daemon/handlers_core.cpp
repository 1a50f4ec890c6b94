// PING, STATUS, RELOAD, REGISTRY_CHANGED.
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "core/version.h"
#include "daemon.h"
#include "protocol/messages.h"

namespace mms {
namespace {

// MemTotal / MemAvailable from /proc/meminfo, in bytes.
nlohmann::json HostMemory() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  uint64_t total = 0, avail = 0;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::string key;
    uint64_t kb = 0;
    ss >> key >> kb;
    if (key == "MemTotal:") total = kb * 1024;
    if (key == "MemAvailable:") avail = kb * 1024;
  }
  return {{"memory_total", total}, {"memory_available", avail}};
}

}  // namespace

void AddCoreHandlers(Daemon* d, std::map<uint16_t, Handler>* table) {
  (*table)[proto::kPing] = [](proto::Message, Responder r) {
    r.Send(nlohmann::json{{"pid", ::getpid()}, {"version", MMS_VERSION}});
  };

  (*table)[proto::kStatus] = [d](proto::Message, Responder r) {
    const auto& o = d->options();
    nlohmann::json j;
    j["version"] = MMS_VERSION;
    j["protocol"] = proto::kVersion;
    j["pid"] = ::getpid();
    j["uptime_s"] = static_cast<double>(d->clock()->MonoNanos() - d->started_mono_ns()) / 1e9;
    j["socket"] = o.socket_path;
    j["data_dir"] = o.data_dir;
    j["config"] = o.config_path;
    j["cuda_build"] = MMS_WITH_CUDA_BUILD == 1;
    j["requests_served"] = d->server()->requests_served();
    j["in_flight"] = d->server()->in_flight();
    nlohmann::json host = HostMemory();
    host["name"] = "cpu";
    host["kind"] = "host";
    j["devices"] = nlohmann::json::array({host});
    j["pool"] = nlohmann::json::object();
    r.Send(std::move(j));
  };

  (*table)[proto::kReload] = [](proto::Message, Responder r) {
    // Reloading belongs to the main thread (as SIGHUP): signal it.
    ::kill(::getpid(), SIGHUP);
    r.Send(nlohmann::json{{"reload", "requested"}});
  };

  (*table)[proto::kRegistryChanged] = [](proto::Message, Responder r) { r.Send(nlohmann::json::object()); };
}

}  // namespace mms
