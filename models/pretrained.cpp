#include "models/pretrained.h"

#include <algorithm>

#include "layers/safetensors.h"
#include "tensor/ops.h"

namespace sono::models {

Tensor adapt_input_conv(const Tensor& weight, int64_t in_channels) {
  SONO_CHECK(weight.dim() == 4, "adapt_input_conv: expected a conv weight [out, in, kh, kw], got ",
             shape_str(weight.shape()));
  SONO_CHECK(in_channels >= 1, "adapt_input_conv: in_channels must be positive, got ", in_channels);
  const int64_t base = weight.size(1);
  if (in_channels == base) return weight;
  Tensor w = weight.to(DType::f32);
  if (in_channels == 1) return sum(w, {1}, true);
  std::vector<Tensor> channels;
  for (int64_t i = 0; i < in_channels; ++i) channels.push_back(w.slice(1, i % base, i % base + 1));
  return mul(cat(channels, 1), static_cast<double>(base) / static_cast<double>(in_channels));
}

void load_pretrained(nn::Module& model, nn::StateDict checkpoint, const PretrainedLayout& layout) {
  const nn::StateDict mine = model.state_dict();
  auto input = checkpoint.find(layout.input_conv);
  auto target = mine.find(layout.input_conv);
  if (input != checkpoint.end() && target != mine.end() && input->second.dim() == 4)
    input->second = adapt_input_conv(input->second, target->second.size(1));
  for (const std::string& key : layout.classifier) {
    auto own = mine.find(key);
    auto theirs = checkpoint.find(key);
    if (own == mine.end()) checkpoint.erase(key);
    else if (theirs == checkpoint.end() || theirs->second.shape() != own->second.shape())
      checkpoint[key] = own->second.detach().clone();  // keep the fresh head
  }
  for (const std::string& stage : layout.optional_stages) {
    auto under = [&](const auto& entry) { return entry.first.starts_with(stage); };
    if (std::none_of(mine.begin(), mine.end(), under)) std::erase_if(checkpoint, under);
  }
  model.load_state_dict(checkpoint, true);
}

void load_pretrained(nn::Module& model, const std::string& path, const PretrainedLayout& layout) {
  nn::SafetensorsFile file = nn::load_safetensors(path);
  try {
    load_pretrained(model, std::move(file.tensors), layout);
  } catch (const Error& e) {
    fail(path, ": pretrained weights do not fit the model: ", e.what());
  }
}

}  // namespace sono::models
