// Winograd F(4x4, 3x3) on NHWC float32 (see winograd.h). With the interpolation points 0, +-1,
// +-2 and infinity, a 1-D output of 4 from 6 inputs and a 3-tap filter is
//   y = A^T [(G g) . (B^T d)],
// and the 2-D transform applies each matrix along both axes. Every transform works on 16
// channels at once (channels are innermost in NHWC and in the transformed tensors), so the loops
// over `kLanes` become vector instructions.
#include "tensor/cpu/winograd.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>
#include <omp.h>

#include "tensor/cpu/gemm.h"
#include "tensor/cpu/thread_buffer.h"

namespace sono::cpu {

namespace {

constexpr int64_t kOut = 4, kIn = 6, kPoints = kIn * kIn, kLanes = 16;
// Bounds a chunk's transformed input and products to about 2^22 floats each (chunk_tiles).
constexpr int64_t kChunkFloats = int64_t(1) << 22;

using Lanes = float[kLanes];

// A whole vector of lanes is copied inline; std::copy_n of a run length known only at run time
// is a call to memmove for 64 bytes.
inline void copy_lanes(const float* src, int64_t lanes, float* dst) {
  if (lanes == kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) dst[l] = src[l];
  } else {
    std::copy_n(src, lanes, dst);
  }
}

// B^T d along one axis: six lane vectors in (stride `si`), six out (stride `so`).
inline void input_transform_1d(const float* d, int64_t si, float* t, int64_t so) {
  for (int64_t l = 0; l < kLanes; ++l) {
    const float d0 = d[0 * si + l], d1 = d[1 * si + l], d2 = d[2 * si + l];
    const float d3 = d[3 * si + l], d4 = d[4 * si + l], d5 = d[5 * si + l];
    t[0 * so + l] = 4 * d0 - 5 * d2 + d4;
    t[1 * so + l] = -4 * (d1 + d2) + d3 + d4;
    t[2 * so + l] = 4 * (d1 - d2) - d3 + d4;
    t[3 * so + l] = 2 * (d3 - d1) - d2 + d4;
    t[4 * so + l] = 2 * (d1 - d3) - d2 + d4;
    t[5 * so + l] = 4 * d1 - 5 * d3 + d5;
  }
}

// G g along one axis: three lane vectors in, six out. Multiplied by reciprocals: a division is
// several times slower than a multiply, and the weights are transformed on every call.
inline void weight_transform_1d(const float* g, int64_t si, float* u, int64_t so) {
  constexpr float kSixth = 1.0f / 6, kTwelfth = 1.0f / 12, kTwentyFourth = 1.0f / 24;
  for (int64_t l = 0; l < kLanes; ++l) {
    const float g0 = g[0 * si + l], g1 = g[1 * si + l], g2 = g[2 * si + l];
    const float outer = g0 * kTwentyFourth + g2 * kSixth, centre = g1 * kTwelfth;
    u[0 * so + l] = g0 * 0.25f;
    u[1 * so + l] = -(g0 + g1 + g2) * kSixth;
    u[2 * so + l] = -(g0 - g1 + g2) * kSixth;
    u[3 * so + l] = outer + centre;
    u[4 * so + l] = outer - centre;
    u[5 * so + l] = g2;
  }
}

// A^T m along one axis: six lane vectors in, four out.
inline void output_transform_1d(const float* m, int64_t si, float* y, int64_t so) {
  for (int64_t l = 0; l < kLanes; ++l) {
    const float m0 = m[0 * si + l], m1 = m[1 * si + l], m2 = m[2 * si + l];
    const float m3 = m[3 * si + l], m4 = m[4 * si + l], m5 = m[5 * si + l];
    const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    y[0 * so + l] = m0 + s12 + s34;
    y[1 * so + l] = d12 + 2 * d34;
    y[2 * so + l] = s12 + 4 * s34;
    y[3 * so + l] = d12 + 8 * d34 + m5;
  }
}

// A transform's input tile, lane vector (i, j) at data + i * row + j * col: a tile of lanes of
// its own (tile_of), or read in place in x or M, the strides stepping over pixels or points,
// which saves copying it into a tile first.
struct LaneTile {
  const float* data;
  int64_t row, col;
};

template <int64_t N>
LaneTile tile_of(const Lanes (&lanes)[N * N]) {
  return {lanes[0], N * kLanes, kLanes};
}

// Applies `rows` (a 1-D transform, n_in -> n_out) along both axes of an n_in x n_in tile: first
// down its columns into a tile [n_out][n_in], then along that one's rows into `out` [n_out][n_out].
template <int64_t NIn, int64_t NOut, typename Transform1d>
void transform_2d(LaneTile in, Lanes* out, Transform1d&& rows) {
  Lanes mid[NOut * NIn];
  for (int64_t j = 0; j < NIn; ++j) rows(in.data + j * in.col, in.row, mid[j], NIn * kLanes);
  for (int64_t i = 0; i < NOut; ++i) rows(mid[i * NIn], kLanes, out[i * NOut], kLanes);
}

// One image's tiles: rows x cols of 4x4 output blocks, the last row and column overhanging the
// output where its size is not a multiple of 4.
struct TileGrid {
  int64_t rows, cols;
  int64_t per_image() const { return rows * cols; }
};

TileGrid tile_grid(const Conv2dGeometry& g) { return {(g.oh + kOut - 1) / kOut, (g.ow + kOut - 1) / kOut}; }

// U [36][Cout][Cin] = G g G^T for every filter g = w[co][ci] (PyTorch layout [Cout, Cin, 3, 3]).
void transform_weights(const Conv2dGeometry& g, const float* w, float* u) {
  const int64_t blocks = (g.cin + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static) if (g.cout * g.cin >= 4096)
  for (int64_t job = 0; job < g.cout * blocks; ++job) {
    const int64_t co = job / blocks, c0 = job % blocks * kLanes, lanes = std::min(kLanes, g.cin - c0);
    Lanes taps[9] = {}, out[kPoints];
    for (int64_t l = 0; l < lanes; ++l)
      for (int64_t k = 0; k < 9; ++k) taps[k][l] = w[((co * g.cin) + c0 + l) * 9 + k];
    transform_2d<3, kIn>(tile_of<3>(taps), out, weight_transform_1d);
    for (int64_t p = 0; p < kPoints; ++p) copy_lanes(out[p], lanes, u + (p * g.cout + co) * g.cin + c0);
  }
}

// One tile's run of up to 16 channels: tile t of the chunk, image n, its output block's top-left
// pixel (y0, x0), channels [c0, c0 + lanes).
struct TileLanes {
  int64_t t, n, y0, x0, c0, lanes;
};

// Calls body(TileLanes) for every tile [t0, t1) of the batch (image by image, row by row) and
// run of 16 of `channels`, threaded; TileLanes::t counts from t0.
template <typename Body>
void for_each_tile_lanes(const TileGrid& grid, int64_t t0, int64_t t1, int64_t channels, Body&& body) {
  const int64_t blocks = (channels + kLanes - 1) / kLanes;
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < (t1 - t0) * blocks; ++job) {
    const int64_t t = job / blocks, c0 = job % blocks * kLanes, tile = t0 + t, in_image = tile % grid.per_image();
    body(TileLanes{t, tile / grid.per_image(), in_image / grid.cols * kOut, in_image % grid.cols * kOut, c0,
                   std::min(kLanes, channels - c0)});
  }
}

// V [36][tiles][Cin] = B^T d B for the 6x6 input tile d of the 4x4 output block of each tile
// [t0, t1); reads outside the image are the zero padding. A tile inside the image with 16
// channels is read in place; V is written from a tile of lanes, since strided stores inside the
// arithmetic are slower than a copy after it.
void transform_input(const Conv2dGeometry& g, const TileGrid& grid, const float* x, int64_t t0, int64_t t1, float* v) {
  const int64_t point_stride = (t1 - t0) * g.cin;
  for_each_tile_lanes(grid, t0, t1, g.cin, [&](const TileLanes& b) {
    const int64_t top = b.y0 - g.padding, left = b.x0 - g.padding;
    const bool inside = b.lanes == kLanes && top >= 0 && left >= 0 && top + kIn <= g.h && left + kIn <= g.w;
    Lanes d[kPoints], out[kPoints];
    if (!inside) {
      // Zeroing every tile cost ~2% of a folder prediction; a tile inside the image reads all of it.
      std::fill_n(&d[0][0], kPoints * kLanes, 0.0f);
      for (int64_t i = 0; i < kIn; ++i) {
        const int64_t iy = top + i;
        if (iy < 0 || iy >= g.h) continue;
        for (int64_t j = 0; j < kIn; ++j) {
          const int64_t ix = left + j;
          if (ix >= 0 && ix < g.w) copy_lanes(x + ((b.n * g.h + iy) * g.w + ix) * g.cin + b.c0, b.lanes, d[i * kIn + j]);
        }
      }
    }
    const LaneTile in = inside ? LaneTile{x + ((b.n * g.h + top) * g.w + left) * g.cin + b.c0, g.w * g.cin, g.cin}
                               : tile_of<kIn>(d);
    float* points = v + b.t * g.cin + b.c0;  // this tile's point p at points + p * point_stride
    transform_2d<kIn, kIn>(in, out, input_transform_1d);
    for (int64_t p = 0; p < kPoints; ++p) copy_lanes(out[p], b.lanes, points + p * point_stride);
  });
}

// y + bias, then ReLU where asked, on a block's lanes: conv2d_bias_relu's epilogue while the
// block is in cache rather than in another pass over the output (the same floats).
void finish_block(const Epilogue<float>& e, int64_t c0, int64_t lanes, Lanes (&y)[kOut * kOut]) {
  if (e.bias) {
    Lanes bias = {};
    std::copy_n(e.bias + c0, lanes, bias);
    for (Lanes& v : y)
      for (int64_t l = 0; l < kLanes; ++l) v[l] += bias[l];
  }
  if (e.relu)
    for (Lanes& v : y)
      for (int64_t l = 0; l < kLanes; ++l) v[l] = v[l] > 0.0f ? v[l] : 0.0f;
}

// The output blocks A^T m A of tiles [t0, t1) from the products M [36][tiles][Cout], cropped
// to the output where the last row or column of tiles overhangs it, with the epilogue applied.
void transform_output(const Conv2dGeometry& g, const TileGrid& grid, const float* m, int64_t t0, int64_t t1,
                      const Epilogue<float>& e, float* out) {
  const int64_t point_stride = (t1 - t0) * g.cout;
  for_each_tile_lanes(grid, t0, t1, g.cout, [&](const TileLanes& b) {
    Lanes prod[kPoints], y[kOut * kOut];
    const float* products = m + b.t * g.cout + b.c0;  // point p at products + p * point_stride
    const bool full = b.lanes == kLanes;
    if (!full) {
      std::fill_n(&prod[0][0], kPoints * kLanes, 0.0f);  // the lanes past the channels
      for (int64_t p = 0; p < kPoints; ++p) copy_lanes(products + p * point_stride, b.lanes, prod[p]);
    }
    const LaneTile in = full ? LaneTile{products, kIn * point_stride, point_stride} : tile_of<kIn>(prod);
    transform_2d<kIn, kOut>(in, y, output_transform_1d);
    finish_block(e, b.c0, b.lanes, y);
    for (int64_t i = 0; i < kOut && b.y0 + i < g.oh; ++i)
      for (int64_t j = 0; j < kOut && b.x0 + j < g.ow; ++j)
        copy_lanes(y[i * kOut + j], b.lanes, out + ((b.n * g.oh + b.y0 + i) * g.ow + b.x0 + j) * g.cout + b.c0);
  });
}

struct TransformedWeights {};
struct TransformedInput {};
struct Products {};

// A conv's weights as the 36 products read them: U [36][Cout][Cin], or, for weights that never
// change, each point's U packed once as sgemm's B (packed on every call, all 36 are copied per
// forward: a large share of the work where a layer's maps have few tiles to multiply).
struct PointWeights {
  AlignedBuffer<float> u;
  std::vector<std::shared_ptr<const PackedB>> packed;  // one per point where packed, else none
};

// Point p's product M[p] [tiles, Cout] = V[p] [tiles, Cin] x U[p]^T.
GemmProblem<float> point_problem(const Conv2dGeometry& g, int64_t tiles, const float* v, const float* u, float* m) {
  return {v, u, m, nullptr, 1, tiles, g.cout, g.cin, false, true, false, false, 1.0f, 0.0f};
}

// U of w packed for each point into `points` (where sgemm runs; else left as U).
void transform_and_pack(const Conv2dGeometry& g, const float* w, PointWeights& points) {
  points.packed.clear();
  if constexpr (kHaveSgemm) {
    float* u = thread_buffer<TransformedWeights, float>().reserve(kPoints * g.cout * g.cin);
    transform_weights(g, w, u);
    for (int64_t p = 0; p < kPoints; ++p)
      points.packed.push_back(pack_b(point_problem(g, 1, nullptr, u + p * g.cout * g.cin, nullptr)));
  } else {
    transform_weights(g, w, points.u.reserve(kPoints * g.cout * g.cin));
  }
}

// M [36][tiles][Cout] from V [36][tiles][Cin] and U (points.packed, else u), a point a thread.
void multiply_points(const Conv2dGeometry& g, int64_t tiles, const float* v, const float* u,
                     const std::vector<std::shared_ptr<const PackedB>>& packed, float* m) {
  if (packed.empty()) {
    GemmProblem<float> p = point_problem(g, tiles, v, u, m);
    p.batch = kPoints;
    return gemm_rows<float>(p);
  }
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < kPoints; ++p) {
    GemmProblem<float> q = point_problem(g, tiles, v + p * tiles * g.cin, nullptr, m + p * tiles * g.cout);
    q.packed_b = packed[p].get();
    gemm_rows(q);
  }
}

// The transformed weights of the convs run lately. A model's weights stay the same from one
// batch to the next, and transforming them (4x the weights written, on every call) was ~5% of a
// folder prediction. An entry is used only while its copy of the weights equals the weights
// byte for byte, so weights changed in place (an optimizer step) or a new tensor at a freed
// one's address are transformed afresh, and a hit gives the floats a fresh transform would.
class TransformedWeightCache {
 public:
  // The weights w of a conv of geometry g as its products read them; the entry stays alive
  // while it is held. An entry made from a frozen storage serves that storage unchecked while
  // it lives, packed; any other is checked against w, which training changes in place.
  std::shared_ptr<const PointWeights> get(const Conv2dGeometry& g, const float* w,
                                          const std::shared_ptr<Storage>& frozen) {
    const size_t bytes = static_cast<size_t>(g.cout * g.cin * 9) * sizeof(float);
    std::unique_lock lock(mutex_);
    Entry* entry = find(w, g.cin, g.cout);
    if (entry && ((frozen && entry->frozen.lock() == frozen) ||
                  std::memcmp(entry->weights.data(), w, bytes) == 0)) {
      entry->last_use = ++clock_;
      return entry->points;
    }
    if (!entry) entry = insert(w, g.cin, g.cout);
    entry->last_use = ++clock_;
    entry->frozen = frozen;
    // Weights still held by a caller on another thread are left to it; this call makes new ones.
    if (entry->points.use_count() > 1) entry->points = std::make_shared<PointWeights>();
    std::shared_ptr<PointWeights> points = entry->points;
    entry->weights.assign(w, w + g.cout * g.cin * 9);
    if (frozen) {
      transform_and_pack(g, w, *points);
    } else {
      points->packed.clear();
      transform_weights(g, w, points->u.reserve(kPoints * g.cout * g.cin));
    }
    return points;
  }

 private:
  // Five times the weights per conv (the copy and U): ResNet-18's layers 1-3 take ~55 MB, all
  // four ~210 MB. Past the budget the entries used longest ago go.
  static constexpr size_t kMaxBytes = size_t(256) << 20;

  static size_t entry_bytes(int64_t cin, int64_t cout) {
    return static_cast<size_t>(cin * cout * (9 + kPoints)) * sizeof(float);
  }

  struct Entry {
    const float* key = nullptr;
    int64_t cin = 0, cout = 0;
    std::vector<float> weights;
    std::weak_ptr<Storage> frozen;  // the frozen storage the weights came from, if any
    std::shared_ptr<PointWeights> points = std::make_shared<PointWeights>();
    uint64_t last_use = 0;
  };

  Entry* find(const float* w, int64_t cin, int64_t cout) {
    for (Entry& e : entries_)
      if (e.key == w && e.cin == cin && e.cout == cout) return &e;
    return nullptr;
  }

  Entry* insert(const float* w, int64_t cin, int64_t cout) {
    while (!entries_.empty() && bytes_ + entry_bytes(cin, cout) > kMaxBytes) {
      auto oldest = std::min_element(entries_.begin(), entries_.end(),
                                     [](const Entry& a, const Entry& b) { return a.last_use < b.last_use; });
      bytes_ -= entry_bytes(oldest->cin, oldest->cout);
      entries_.erase(oldest);
    }
    bytes_ += entry_bytes(cin, cout);
    Entry& entry = entries_.emplace_back();
    entry.key = w, entry.cin = cin, entry.cout = cout;
    return &entry;
  }

  std::mutex mutex_;
  std::vector<Entry> entries_;
  size_t bytes_ = 0;
  uint64_t clock_ = 0;
};

TransformedWeightCache& transformed_weight_cache() {
  static TransformedWeightCache cache;
  return cache;
}

// Tiles transformed, multiplied and transformed back at a time. With each point's weights packed
// once, a few of sgemm's row tiles: the chunk's transformed input and products then stay in
// cache from one pass to the next, where whole batches (up to kChunkFloats) go through memory.
// Weights packed on every call are packed once per chunk, so there chunks stay large.
int64_t chunk_tiles(const Conv2dGeometry& g, int64_t all_tiles, bool packed) {
  const int64_t tiles = packed ? (16 + kSgemmRowTile - 1) / kSgemmRowTile * kSgemmRowTile
                               : kChunkFloats / (kPoints * std::max(g.cin, g.cout));
  return std::clamp<int64_t>(tiles, 1, all_tiles);
}

// out from x and the transformed weights (u [36][Cout][Cin], or packed), a chunk of tiles at a time.
void winograd_forward_transformed(const Conv2dGeometry& g, const float* x, const float* u,
                                  const std::vector<std::shared_ptr<const PackedB>>& packed,
                                  const Epilogue<float>& e, float* out) {
  const TileGrid grid = tile_grid(g);
  const int64_t all_tiles = g.n * grid.per_image(), chunk = chunk_tiles(g, all_tiles, !packed.empty());
  float* v = thread_buffer<TransformedInput, float>().reserve(chunk * kPoints * g.cin);
  float* m = thread_buffer<Products, float>().reserve(chunk * kPoints * g.cout);
  for (int64_t t0 = 0; t0 < all_tiles; t0 += chunk) {
    const int64_t t1 = std::min(all_tiles, t0 + chunk);
    transform_input(g, grid, x, t0, t1, v);
    multiply_points(g, t1 - t0, v, u, packed, m);
    transform_output(g, grid, m, t0, t1, e, out);
  }
}

}  // namespace

bool winograd_applies(const Conv2dGeometry& g) {
  return g.kh == 3 && g.kw == 3 && g.stride == 1 && g.dilation == 1 && g.groups == 1 &&
         g.precision == Precision::f32 && g.cin >= 16 && g.cout >= 16 && g.oh * g.ow >= 64;
}

void winograd_conv_forward_once(const Conv2dGeometry& g, const float* x, const float* w, float* out) {
  float* u = thread_buffer<TransformedWeights, float>().reserve(kPoints * g.cout * g.cin);
  transform_weights(g, w, u);
  winograd_forward_transformed(g, x, u, {}, {}, out);
}

void winograd_conv_forward(const Conv2dGeometry& g, const float* x, const float* w, float* out,
                           const std::shared_ptr<Storage>& frozen, const Epilogue<float>& e) {
  const auto points = transformed_weight_cache().get(g, w, frozen);
  winograd_forward_transformed(g, x, points->u.data(), points->packed, e, out);
}

}  // namespace sono::cpu
