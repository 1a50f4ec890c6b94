#include "stats/prometheus.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace mms {

std::string PromWriter::Escape(const std::string& v) {
  std::string o;
  for (char c : v) {
    if (c == '\\') o += "\\\\";
    else if (c == '"') o += "\\\"";
    else if (c == '\n') o += "\\n";
    else o += c;
  }
  return o;
}

void PromWriter::Family(const std::string& name, const std::string& type, const std::string& help) {
  if (index_.count(name)) return;
  index_[name] = fams_.size();
  fams_.push_back({"# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n", ""});
}

PromWriter::Fam& PromWriter::Find(const std::string& sample_name) {
  auto it = index_.find(sample_name);
  if (it == index_.end())
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      std::string s(suffix);
      if (sample_name.size() > s.size() && sample_name.compare(sample_name.size() - s.size(), s.size(), s) == 0) {
        it = index_.find(sample_name.substr(0, sample_name.size() - s.size()));
        if (it != index_.end()) break;
      }
    }
  if (it == index_.end()) {  // undeclared: its own untyped family
    index_[sample_name] = fams_.size();
    fams_.push_back({"", ""});
    return fams_.back();
  }
  return fams_[it->second];
}

std::string PromWriter::str() const {
  std::string out;
  for (const auto& f : fams_) out += f.header + f.body;
  return out;
}

static std::string Fmt(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  // The shortest text that reads back as the same double: byte gauges of
  // ~1e11 (an H200's budget) and large counters keep every digit.
  char b[64];
  auto r = std::to_chars(b, b + sizeof b, v);
  return std::string(b, r.ptr);
}

// A bucket bound as the Go client writes it, so that a query's le="0.0001"
// matches ("1e-04", the shortest text, did not): Go's strconv 'g' writes
// plain digits for exponents from -4 to 5, which holds every bound below.
static std::string BoundText(double v) {
  char b[64];
  auto r = std::to_chars(b, b + sizeof b, v, std::chars_format::fixed);
  return std::string(b, r.ptr);
}

static std::string LabelText(const Labels& labels) {
  if (labels.empty()) return "";
  std::string s = "{";
  for (size_t i = 0; i < labels.size(); ++i)
    s += (i ? "," : "") + labels[i].first + "=\"" + PromWriter::Escape(labels[i].second) + "\"";
  return s + "}";
}

void PromWriter::Sample(const std::string& name, const Labels& labels, double value) {
  Find(name).body += name + LabelText(labels) + " " + Fmt(value) + "\n";
}

void PromWriter::Histogram(const std::string& name, const Labels& labels, const LatencyHistogram& h) {
  static const double kBounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                   0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,    10};
  uint64_t n = h.count();
  for (double b : kBounds) {
    Labels l = labels;
    l.emplace_back("le", BoundText(b));
    Sample(name + "_bucket", l, static_cast<double>(h.CountAtMost(static_cast<int64_t>(std::llround(b * 1e9)))));
  }
  Labels inf = labels;
  inf.emplace_back("le", "+Inf");
  Sample(name + "_bucket", inf, static_cast<double>(n));
  Sample(name + "_sum", labels, h.mean() * static_cast<double>(n) / 1e9);
  Sample(name + "_count", labels, static_cast<double>(n));
}

}  // namespace mms
