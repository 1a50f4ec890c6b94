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
  uint64_t batch_size = 0;  // as written (Triton skips a warm-up of 0, the default; 1 without batching)
  std::vector<TritonWarmupInput> inputs;
  // What is wrong with it as written ("" when nothing): a warm-up's faults
  // matter only when it is the one used (TritonWarmupSample).
  std::string problem;
};

struct TritonConfig {
  int max_batch_size = 0;          // > 0: every input and output has a batch dim first
  bool dynamic_batching = false;   // a top-level dynamic_batching block
  uint64_t max_queue_delay_us = 0; // dynamic_batching's max_queue_delay_microseconds (Triton's default 0)
  std::vector<TritonInput> inputs; // in the order written
  // sequence_batching's control_input names and state input_names: forward
  // takes them too, after the inputs.
  std::vector<std::string> sequence_inputs;
  std::vector<TritonWarmup> warmups;  // model_warmup, in the order written
};

// Parses a config.pbtxt (`source` names it in messages). INVALID_ARGUMENT
// "SOURCE:LINE:COLUMN: ..." for text that is not protobuf text format, and,
// in the fields mms reads, what protobuf or Triton refuses: a singular field
// given twice (but over its default) or two members of a oneof, a value of
// the wrong kind (a string for a number, a scalar for a block), a
// max_batch_size out of 0 to 2^31-1 or not an integer, a
// max_queue_delay_microseconds out of 0 to 2^64-1, an input without a name
// or dims, a dim of 0 or under -1. A model_warmup's faults are kept in its
// `problem` instead. Fields mms does not read are not checked.
Result<TritonConfig> ParseTritonConfig(std::string_view text, const std::string& source);

// The variable dims ("NAME:DIM", as --variable-dim takes them) that the
// config gives forward's inputs `specs` (as recorded from a sample input;
// inputs without a recorded shape are skipped: nothing is checked for them).
// A config input (then sequence batching's, see sequence_inputs) is
// forward's argument of the same name when every one names one, the
// argument at INDEX when every name is NAME__INDEX (split at the first
// "__"), and otherwise the argument in the config's order (the PyTorch
// backend's rules). INVALID_ARGUMENT, naming `source` (and the line) and
// the fix: not one config input per argument, an input mapping to no
// argument, or the sample disagreeing with the config (another rank, or
// another size where the config fixes one).
Result<std::vector<std::string>> TritonVariableDims(const TritonConfig& config, const std::vector<InputSpec>& specs,
                                                    const std::string& source);

// The model_warmup Triton runs first: the first with a batch_size of 1 or
// more (Triton skips those of 0), or null.
const TritonWarmup* UsableWarmup(const TritonConfig& config);

// UsableWarmup's sample as a sample input for forward's inputs `specs`
// (names, from the TorchScript schema), each input named for its argument
// as TritonVariableDims maps them: its dims after batch_size rows (when
// max_batch_size > 0; one row's dims are the whole shape otherwise); zeros
// for zero_data; for random_data, values in [0, 1) in float inputs and
// zeros in integer and bool ones (ids must stay inside the model's tables);
// for input_data_file, the first row's bytes of a file under
// `model_dir`/warmup/ (native byte order, as Triton reads it), repeated
// batch_size times. NOT_FOUND when there is no usable warm-up.
// INVALID_ARGUMENT, naming `source`'s line: the warm-up's `problem`, a data
// type mms does not serve (TYPE_STRING, unsigned above 8 bits), a -1 dim,
// an input naming no config input or forward argument, forward's inputs not
// all given, no data kind, a data file outside warmup/, missing, shorter
// than a row or (TYPE_BOOL) holding bytes other than 0 and 1, a batch_size
// over 1 without batching or over 65536, a sample over 64 MiB (refused
// before anything is allocated).
Result<std::vector<Tensor>> TritonWarmupSample(const TritonConfig& config, const std::vector<InputSpec>& specs,
                                               const std::string& model_dir, const std::string& source);

}  // namespace mms
