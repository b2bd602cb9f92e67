#include "tools/app/inference.h"

#include "autograd/node.h"
#include "tensor/ops.h"
#include "tools/data/model_input.h"

namespace sono::app {

data::Mask segment(LoadedModel& seg, const data::Image& image, int height, int width, Device device) {
  autograd::NoGradGuard no_grad;
  Tensor x = data::model_input(image, data::Mask(image.height, image.width),
                               static_cast<int>(seg.card.img_size), data::InputKind::rgb, seg.card.normalisation);
  return data::mask_from_logits((*seg.model)(x.to(device)), height, width);
}

std::vector<double> classify(LoadedModel& cls, const data::Image& image, const data::Mask& mask, Device device) {
  autograd::NoGradGuard no_grad;
  SONO_CHECK(cls.card.in_channels == 4, "classification checkpoint (", cls.card.arch, ") takes ",
             cls.card.in_channels, " channels; expected image + mask (4)");
  Tensor x = data::model_input(image, mask, static_cast<int>(cls.card.img_size), data::InputKind::rgb_mask,
                               cls.card.normalisation);
  return softmax((*cls.model)(x.to(device)), -1).to_vector();
}

}  // namespace sono::app
