// Hugging Face folders as servables: a decoder-only transformer
// (models/transformer.h) split into stage_size pipeline stages by layer, each
// stage tensor-parallel over rank_size / stage_size ranks.
//
// The wire (KServe v2):
//   input  input_ids       INT64 [batch, seq]   used exactly as given (no token added)
//   input  attention_mask  INT64 [batch, seq]   optional (all ones); nonzero: attend.
//                                               It masks keys; positions are 0..seq-1
//                                               in every row, as Hugging Face's forward
//                                               without position_ids.
//   output logits          FP32  [batch, seq, vocab_size]
// Requests of different seq run in different batches (rows are stacked only
// when their extents agree).
//
// Inside: each request's inputs are packed into one engine input "tokens"
// i64 [rows, 2, seq] (ids, then the mask); stage 0 embeds; between stages
// travel the hidden states [rows, seq, hidden] in the compute dtype and the
// mask i64 [rows, seq]; the last stage returns the logits.
#pragma once

#include "device/device.h"
#include "serving/model_config.h"
#include "serving/servable.h"

namespace meshrt::serving {

// The servable of a Hugging Face folder (config.format == kHuggingFace). Reads
// and checks config.json, the weights' headers (each tensor's presence, shape
// and dtype: when a stage is built) and the fit of rank_size / stage_size to
// the heads and of stage_size to the layers; errors name the file and field.
// Compute dtype: meshrt.json's, else bf16 when device is a GPU and f32 on the cpu.
ServableDefinition servable_from_hf(const ModelConfig& config, const Device& device);

}  // namespace meshrt::serving
