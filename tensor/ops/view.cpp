// Views share storage and only change shape/strides/offset; their backward maps the gradient
// back to the input's shape.
#include <algorithm>
#include <numeric>

#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

namespace {

Tensor make_view(const Tensor& base, Shape shape, Shape strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.impl().storage;
  impl->shape = std::move(shape);
  impl->strides = std::move(strides);
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

Shape infer_shape(const Shape& requested, int64_t numel) {
  Shape s = requested;
  int64_t known = 1, infer_at = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      SONO_CHECK(infer_at < 0, "reshape: only one dimension can be -1");
      infer_at = static_cast<int64_t>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer_at >= 0) {
    SONO_CHECK(known > 0 && numel % known == 0, "reshape: cannot infer ", shape_str(requested),
               " from ", numel, " elements");
    s[infer_at] = numel / known;
  }
  SONO_CHECK(shape_numel(s) == numel, "reshape: shape ", shape_str(requested), " does not fit ",
             numel, " elements");
  return s;
}

}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  Tensor out = Tensor::empty(shape(), dtype(), device());
  backend_of(*this).copy(*this, out);
  return autograd::record("contiguous", out, {*this},
                          [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::clone() const {
  Tensor out = Tensor::empty(shape(), dtype(), device());
  backend_of(*this).copy(*this, out);
  return autograd::record("clone", out, {*this}, [](const Tensor& g) { return std::vector<Tensor>{g}; });
}

Tensor Tensor::reshape(const Shape& requested) const {
  Shape s = infer_shape(requested, numel());
  Tensor src = contiguous();
  Tensor out = make_view(src, s, contiguous_strides(s), src.offset());
  return autograd::record("reshape", out, {src}, [old = shape()](const Tensor& g) {
    return std::vector<Tensor>{g.reshape(old)};
  });
}

Tensor Tensor::permute(const std::vector<int64_t>& dims) const {
  SONO_CHECK(static_cast<int64_t>(dims.size()) == dim(), "permute: ", dims.size(),
             " dims for a tensor of rank ", dim());
  Shape s(dims.size()), st(dims.size());
  std::vector<int64_t> inverse(dims.size(), -1);
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], dim());
    SONO_CHECK(inverse[d] < 0, "permute: dimension ", d, " repeated");
    inverse[d] = static_cast<int64_t>(i);
    s[i] = shape()[d];
    st[i] = strides()[d];
  }
  Tensor out = make_view(*this, s, st, offset());
  return autograd::record("permute", out, {*this}, [inverse](const Tensor& g) {
    return std::vector<Tensor>{g.permute(inverse)};
  });
}

Tensor Tensor::transpose(int64_t a, int64_t b) const {
  std::vector<int64_t> dims(dim());
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim(a, dim())], dims[wrap_dim(b, dim())]);
  return permute(dims);
}

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d, dim());
  int64_t n = shape()[d];
  if (start < 0) start += n;
  if (end < 0) end += n;
  end = std::min(end, n);
  SONO_CHECK(start >= 0 && start <= end, "slice: range [", start, ", ", end, ") invalid for size ", n);
  Shape s = shape();
  s[d] = end - start;
  Tensor out = make_view(*this, s, strides(), offset() + start * strides()[d]);
  return autograd::record("slice", out, {*this}, [full = shape(), d, start](const Tensor& g) {
    Tensor gx = Tensor::zeros(full, g.dtype(), g.device());
    backend_of(g).copy(g, gx.slice(d, start, start + g.size(d)));
    return std::vector<Tensor>{gx};
  });
}

Tensor Tensor::unsqueeze(int64_t d) const {
  d = d < 0 ? d + dim() + 1 : d;
  SONO_CHECK(d >= 0 && d <= dim(), "unsqueeze: dimension out of range");
  Shape s = shape();
  s.insert(s.begin() + d, 1);
  return reshape(s);
}

Tensor Tensor::squeeze(int64_t d) const {
  d = wrap_dim(d, dim());
  SONO_CHECK(shape()[d] == 1, "squeeze: dimension ", d, " has size ", shape()[d]);
  Shape s = shape();
  s.erase(s.begin() + d);
  return reshape(s);
}

Tensor Tensor::expand(const Shape& target) const {
  SONO_CHECK(static_cast<int64_t>(target.size()) >= dim(), "expand: ", shape_str(shape()),
             " to fewer dims ", shape_str(target));
  size_t lead = target.size() - shape().size();
  Shape st(target.size(), 0);
  for (size_t i = 0; i < shape().size(); ++i) {
    int64_t have = shape()[i], want = target[lead + i];
    SONO_CHECK(have == want || have == 1, "cannot broadcast ", shape_str(shape()), " to ",
               shape_str(target));
    st[lead + i] = have == want ? strides()[i] : 0;
  }
  Tensor out = make_view(*this, target, st, offset());
  return autograd::record("expand", out, {*this}, [s = shape()](const Tensor& g) {
    return std::vector<Tensor>{sum_to(g, s)};
  });
}

// bfloat16 tensors (autocast's activations) concatenate as they are; with float32 ones, as float32.
Tensor cat(const std::vector<Tensor>& xs_in, int64_t dim) {
  SONO_CHECK(!xs_in.empty(), "cat: no tensors");
  std::vector<Tensor> xs = xs_in;
  const bool mixed = std::any_of(xs.begin(), xs.end(),
                                 [&](const Tensor& x) { return x.dtype() != xs[0].dtype(); });
  if (mixed)
    for (Tensor& x : xs) x = autocast_input(AutocastOp::concat, x);
  const Tensor& first = xs[0];
  dim = wrap_dim(dim, first.dim());
  Shape s = first.shape();
  s[dim] = 0;
  for (const Tensor& x : xs) {
    SONO_CHECK(x.dim() == first.dim() && x.dtype() == first.dtype() && x.device() == first.device(),
               "cat: tensors differ in rank, dtype or device");
    for (int64_t i = 0; i < x.dim(); ++i)
      SONO_CHECK(i == dim || x.shape()[i] == first.shape()[i], "cat: shapes ",
                 shape_str(first.shape()), " and ", shape_str(x.shape()), " differ off dim ", dim);
    s[dim] += x.shape()[dim];
  }
  Tensor out = Tensor::empty(s, first.dtype(), first.device());
  std::vector<int64_t> starts;
  int64_t at = 0;
  for (const Tensor& x : xs) {
    starts.push_back(at);
    backend_of(x).copy(x, out.slice(dim, at, at + x.shape()[dim]));
    at += x.shape()[dim];
  }
  return autograd::record("cat", out, xs, [dim, starts, xs_shapes = [&] {
    std::vector<int64_t> sizes;
    for (const Tensor& x : xs) sizes.push_back(x.shape()[dim]);
    return sizes;
  }()](const Tensor& g) {
    std::vector<Tensor> grads;
    for (size_t i = 0; i < starts.size(); ++i)
      grads.push_back(g.slice(dim, starts[i], starts[i] + xs_shapes[i]).contiguous());
    return grads;
  });
}

Tensor pad(const Tensor& x_in, const std::vector<int64_t>& pads) {
  const Tensor x = autocast_input(AutocastOp::pad, x_in);
  SONO_CHECK(pads.size() % 2 == 0 && static_cast<int64_t>(pads.size()) / 2 <= x.dim(),
             "pad: needs pairs of pads for at most ", x.dim(), " dims");
  Shape s = x.shape();
  std::vector<std::pair<int64_t, int64_t>> ranges;  // (dim, lo)
  for (size_t i = 0; i < pads.size() / 2; ++i) {
    int64_t d = x.dim() - 1 - static_cast<int64_t>(i);
    SONO_CHECK(pads[2 * i] >= 0 && pads[2 * i + 1] >= 0, "pad: negative padding");
    s[d] += pads[2 * i] + pads[2 * i + 1];
    ranges.push_back({d, pads[2 * i]});
  }
  Tensor out = Tensor::zeros(s, x.dtype(), x.device());
  Tensor window = out;
  for (auto [d, lo] : ranges) window = window.slice(d, lo, lo + x.shape()[d]);
  backend_of(x).copy(x, window);
  return autograd::record("pad", out, {x}, [ranges, xs = x.shape()](const Tensor& g) {
    Tensor gw = g;
    for (auto [d, lo] : ranges) gw = gw.slice(d, lo, lo + xs[d]);
    return std::vector<Tensor>{gw.contiguous()};
  });
}

}  // namespace sono
