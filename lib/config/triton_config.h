// What mms takes from a Triton model configuration (config.pbtxt) when
// `mms model import` registers a Triton model repository: the batching and
// the inputs' variable dims, as Triton's model_configuration.md defines them.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "protocol/input_spec.h"
#include "protocol/tensor.h"

namespace mms {

struct TritonInput {
  std::string name;
  int line = 0;  // in config.pbtxt, for messages
  // The shape the model sees, without the batch dim when max_batch_size > 0:
  // `reshape { shape }` when given, else `dims`; -1 for a variable size.
  std::vector<int64_t> dims;
  bool has_dims = false;  // either was given
};

// One input of a model_warmup sample (its `inputs` map's entry).
struct TritonWarmupInput {
  std::string name;  // the key: a config input's name
  int line = 0;
  std::string data_type;      // as written: "TYPE_FP32"
  std::vector<int64_t> dims;  // without the batch dim
  enum class Data { kNone, kZero, kRandom, kFile } data = Data::kNone;
  std::string file;  // kFile: input_data_file, raw row-major bytes under the model's warmup/
};

struct TritonWarmup {
  std::string name;
  int line = 0;
  uint64_t batch_size = 0;  // as written (Triton: at least 1; 1 for a model without batching)
  std::vector<TritonWarmupInput> inputs;
};

struct TritonConfig {
  int max_batch_size = 0;          // > 0: every input and output has a batch dim first
  bool dynamic_batching = false;   // a top-level dynamic_batching block
  uint64_t max_queue_delay_us = 0; // dynamic_batching's max_queue_delay_microseconds (Triton's default 0)
  std::vector<TritonInput> inputs; // in the order written
  std::vector<TritonWarmup> warmups;  // model_warmup, in the order written
};

// Parses a config.pbtxt (`source` names it in messages). INVALID_ARGUMENT
// "SOURCE:LINE:COLUMN: ..." for text protobuf refuses, a max_batch_size out
// of Triton's range (0 to 2^31-1) or a max_queue_delay_microseconds out of
// its (0 to 2^64-1), a dims value that is not an integer of -1 or more, an
// input without a name.
Result<TritonConfig> ParseTritonConfig(std::string_view text, const std::string& source);

// The variable dims ("NAME:DIM", as --variable-dim takes them) that the
// config gives forward's inputs `specs` (as recorded from a sample input;
// inputs without a recorded shape are skipped: nothing is checked for them).
// A config input is forward's argument of the same name when every config
// input names one, the argument at INDEX when every name is NAME__INDEX, and
// otherwise the argument in the config's order (the PyTorch backend's rules).
// INVALID_ARGUMENT, naming `source`'s line and the fix, when an input maps to
// no argument, or the sample disagrees with the config: another rank, or
// another size where the config fixes one.
// (With no config inputs, and for the warm-up below, the same rules apply to
// the names given.)
Result<std::vector<std::string>> TritonVariableDims(const TritonConfig& config, const std::vector<InputSpec>& specs,
                                                    const std::string& source);

// The config's first model_warmup sample as a sample input for forward's
// inputs `specs` (names, from the TorchScript schema): each input's dims
// after `batch_size` rows (when max_batch_size > 0; one row's dims are the
// whole shape otherwise), zeros for zero_data, for random_data uniform
// values in [0, 1) in float inputs and zeros in integer and bool ones (ids
// must stay inside the model's tables), or input_data_file's bytes read from
// `model_dir`/warmup/, one row repeated batch_size times as Triton does.
// INVALID_ARGUMENT, naming `source`'s line: a data type mms does not serve
// (TYPE_STRING, unsigned above 8 bits), a -1 dim, an input naming no config
// input or forward argument, forward's inputs not all given, no data kind,
// a data file outside warmup/, missing or not the input's size, a
// batch_size over 1 without batching or over 65536.
Result<std::vector<Tensor>> TritonWarmupSample(const TritonConfig& config, const std::vector<InputSpec>& specs,
                                               const std::string& model_dir, const std::string& source);

}  // namespace mms
