// Writing the Prometheus text exposition format (version 0.0.4): families
// with HELP and TYPE, samples with escaped labels, and latency histograms
// as cumulative seconds buckets derived from LatencyHistogram. Samples are
// grouped under their family however they were added, as the format requires.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "stats/histogram.h"

namespace mms {

using Labels = std::vector<std::pair<std::string, std::string>>;

class PromWriter {
 public:
  // Declares a family once (later calls with the same name are ignored).
  void Family(const std::string& name, const std::string& type, const std::string& help);
  void Sample(const std::string& name, const Labels& labels, double value);
  // name_bucket{le=...}, name_sum, name_count in seconds.
  void Histogram(const std::string& name, const Labels& labels, const LatencyHistogram& h);
  std::string str() const;

  static std::string Escape(const std::string& v);

 private:
  struct Fam {
    std::string header, body;
  };
  Fam& Find(const std::string& sample_name);
  std::vector<Fam> fams_;
  std::map<std::string, size_t> index_;  // family name → fams_ position
};

}  // namespace mms
