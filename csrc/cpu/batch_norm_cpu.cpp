// Fused CPU batch norm.
//
// Pass structure (see shared/design/cpu-anchors.md):
// - NCS (contiguous): a channel is split into pieces of kPiece elements. When the channels can
//   be spread evenly over the threads, each thread owns whole channels and, per channel, computes
//   the statistics piece by piece (exact two-pass inside a piece, which is then L2-resident) and
//   normalizes the channel right away, while it is still in cache. Otherwise (few channels, or
//   channels that do not divide among the threads) the pieces of all channels are spread over
//   the threads, merged per channel, then normalized in a second parallel pass.
// - NSC (channels_last): bands of rows; per band, per-channel sums in a contiguous array (the
//   inner loop runs along C and vectorizes); band moments merged per channel; normalize pass.
// Partial results are always merged in the same fixed order (pieces and bands have sizes that
// do not depend on the thread count), so results are identical run to run and across paths.
#include "cpu/batch_norm_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <array>
#include <vector>

#include "kernels/bn_math.h"

namespace fastbn::cpu {
namespace {

// Independent float lanes so that the sum vectorizes; a block of lanes is folded into double
// before float accumulation could lose the digits of data far from zero.
constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 256;
// Elements of one channel per piece (NCS): 128 KiB of float, re-read from L2.
constexpr int64_t kPiece = int64_t(1) << 15;
// Rows per band (NSC): about kBandBytes of input, at most kMaxBandRows rows so that the
// per-band float sums stay accurate.
constexpr int64_t kBandBytes = 96 * 1024;
constexpr int64_t kMaxBandRows = 256;

// Σ f(i) for i in [0, n), K sums at once.
template <typename A, int K, typename F>
std::array<double, K> lane_sums(int64_t n, const F& f) {
  std::array<double, K> total{};
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    A lane[K][kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) {
        const std::array<A, K> v = f(i + l);
        for (int k = 0; k < K; ++k) lane[k][l] += v[k];
      }
    }
    A block[K] = {};
    for (; i < e; ++i) {
      const std::array<A, K> v = f(i);
      for (int k = 0; k < K; ++k) block[k] += v[k];
    }
    for (int k = 0; k < K; ++k) {
      for (int64_t l = 0; l < kLanes; ++l) block[k] += lane[k][l];
      total[k] += block[k];
    }
  }
  return total;
}

// NCS: the elements of channel c with flat index j in [j0, j1) of its N·S elements, as
// contiguous runs f(offset, length).
template <typename F>
void for_each_run(const Layout& L, int64_t c, int64_t j0, int64_t j1, const F& f) {
  while (j0 < j1) {
    const int64_t n = j0 / L.S, s = j0 - n * L.S;
    const int64_t len = std::min(L.S - s, j1 - j0);
    f((n * L.C + c) * L.S + s, len);
    j0 += len;
  }
}

int64_t num_pieces(const Layout& L) { return std::max<int64_t>(1, (L.per_channel() + kPiece - 1) / kPiece); }

// Whole channels per thread when they spread evenly; else pieces across threads.
bool whole_channels_per_thread(const Layout& L) {
  const int64_t threads = at::get_num_threads();
  return threads == 1 || L.C % threads == 0 || L.C >= 8 * threads;
}

template <typename T>
int64_t band_rows(const Layout& L) {
  return std::clamp<int64_t>(kBandBytes / (L.C * int64_t(sizeof(T))), 1, kMaxBandRows);
}

// Runs `body(c, j0, j1)` over every piece of every NCS channel in parallel.
template <typename F>
void parallel_pieces(const Layout& L, const F& body) {
  const int64_t pieces = num_pieces(L), M = L.per_channel();
  at::parallel_for(0, L.C * pieces, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t / pieces, p = t % pieces;
      body(c, p, p * kPiece, std::min(M, (p + 1) * kPiece));
    }
  });
}

// Exact two-pass moments of one cache-sized piece of an NCS channel.
template <typename T>
Moments<double> piece_moments(const T* x, const Layout& L, int64_t c, int64_t j0, int64_t j1) {
  using A = acc_t<T>;
  double sum = 0;
  for_each_run(L, c, j0, j1, [&](int64_t off, int64_t len) {
    const T* p = x + off;
    sum += lane_sums<A, 1>(len, [p](int64_t i) { return std::array<A, 1>{A(p[i])}; })[0];
  });
  const double count = double(j1 - j0), mean = sum / count;
  const A center = A(mean);
  double m2 = 0;
  for_each_run(L, c, j0, j1, [&](int64_t off, int64_t len) {
    const T* p = x + off;
    m2 += lane_sums<A, 1>(len, [p, center](int64_t i) {
      const A d = A(p[i]) - center;
      return std::array<A, 1>{d * d};
    })[0];
  });
  // Σ(x − center)² = M2 + count·(mean − center)²: undo the rounding of the center.
  const double shift = mean - double(center);
  return {count, mean, std::max(0.0, m2 - count * shift * shift)};
}

// Applies y = f(x, c) to the whole tensor (NCS runs or NSC rows), in parallel.
template <typename F>
void parallel_elementwise(const Layout& L, const F& f) {
  if (L.channels_last) {
    at::parallel_for(0, L.N * L.S, std::max<int64_t>(1, 16384 / std::max<int64_t>(L.C, 1)),
                     [&](int64_t r0, int64_t r1) {
                       for (int64_t r = r0; r < r1; ++r)
                         for (int64_t c = 0; c < L.C; ++c) f(r * L.C + c, c);
                     });
  } else {
    at::parallel_for(0, L.N * L.C, std::max<int64_t>(1, 16384 / std::max<int64_t>(L.S, 1)),
                     [&](int64_t k0, int64_t k1) {
                       for (int64_t k = k0; k < k1; ++k) {
                         const int64_t c = k % L.C;
                         for (int64_t i = k * L.S, e = i + L.S; i < e; ++i) f(i, c);
                       }
                     });
  }
}

// Parameters of one call as typed pointers (contiguous copies of strided per-channel tensors).
template <typename P>
const P* ptr_or_null(const std::optional<at::Tensor>& t, std::vector<at::Tensor>& keep) {
  if (!t.has_value() || !t->defined()) return nullptr;
  keep.push_back(t->contiguous());
  return keep.back().data_ptr<P>();
}

// A running-stat buffer written in place; a strided one is updated through a contiguous copy.
template <typename P>
struct InPlace {
  std::optional<at::Tensor> target;
  at::Tensor work;
  explicit InPlace(const std::optional<at::Tensor>& t) {
    if (t.has_value() && t->defined()) {
      target = t;
      work = t->is_contiguous() ? *t : t->contiguous();
    }
  }
  P* data() { return work.defined() ? work.data_ptr<P>() : nullptr; }
  ~InPlace() {
    if (work.defined() && !target->is_same(work)) target->copy_(work);
  }
};

// ---------------------------------------------------------------- training forward

template <typename T, typename P>
void forward_train_impl(const TrainForwardArgs& a) {
  using A = acc_t<T>;
  const Layout& L = a.layout;
  std::vector<at::Tensor> keep;
  const P* weight = ptr_or_null<P>(a.weight, keep);
  const P* bias = ptr_or_null<P>(a.bias, keep);
  InPlace<P> running_mean(a.running_mean), running_var(a.running_var);
  A* save_mean = a.save_mean.data_ptr<A>();
  A* save_invstd = a.save_invstd.data_ptr<A>();
  const T* x = a.input.data_ptr<T>();
  T* y = a.output.data_ptr<T>();
  if (L.per_channel() == 0) {  // empty batch: nothing to normalize, running stats untouched
    a.save_mean.zero_();
    a.save_invstd.zero_();
    return;
  }
  const double factor = running_factor<double>(
      a.cumulative, a.momentum,
      a.num_batches_tracked ? a.num_batches_tracked->data_ptr<int64_t>() : nullptr);

  // Statistics → saved stats, running stats, transform. Per channel, so threads own channels.
  auto finish = [&](int64_t c, const Moments<double>& m) {
    const double var = m.m2 / m.count, invstd = invstd_from_var(var, a.eps);
    save_mean[c] = A(m.mean);
    save_invstd[c] = A(invstd);
    update_running_stats<double>(running_mean.data(), running_var.data(), c, m.mean, var, m.count,
                                 factor);
    return channel_affine<A>(A(m.mean), A(invstd), weight, bias, c);
  };
  auto normalize = [&](int64_t i, const ChannelAffine<A>& t) {
    y[i] = T((A(x[i]) - t.center) * t.scale + t.shift);
  };

  if (L.channels_last) {
    const int64_t R = L.per_channel(), rows = band_rows<T>(L), bands = (R + rows - 1) / rows;
    std::vector<Moments<double>> parts(bands * L.C);
    at::parallel_for(0, bands, 1, [&](int64_t b0, int64_t b1) {
      std::vector<A> sum(L.C), center(L.C);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * rows, r1 = std::min(R, r0 + rows);
        const double count = double(r1 - r0);
        std::fill(sum.begin(), sum.end(), A(0));
        for (int64_t r = r0; r < r1; ++r) {
          const T* row = x + r * L.C;
          for (int64_t c = 0; c < L.C; ++c) sum[c] += A(row[c]);
        }
        for (int64_t c = 0; c < L.C; ++c) center[c] = A(double(sum[c]) / count);
        std::fill(sum.begin(), sum.end(), A(0));
        for (int64_t r = r0; r < r1; ++r) {
          const T* row = x + r * L.C;
          for (int64_t c = 0; c < L.C; ++c) {
            const A d = A(row[c]) - center[c];
            sum[c] += d * d;
          }
        }
        for (int64_t c = 0; c < L.C; ++c) parts[b * L.C + c] = {count, double(center[c]), double(sum[c])};
      }
    });
    std::vector<ChannelAffine<A>> affine(L.C);
    at::parallel_for(0, L.C, 16, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        Moments<double> m{0, 0, 0};
        for (int64_t b = 0; b < bands; ++b) m = chan_merge(m, parts[b * L.C + c]);
        affine[c] = finish(c, m);
      }
    });
    parallel_elementwise(L, [&](int64_t i, int64_t c) { normalize(i, affine[c]); });
    return;
  }

  const int64_t pieces = num_pieces(L), M = L.per_channel();
  if (whole_channels_per_thread(L)) {
    at::parallel_for(0, L.C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        Moments<double> m{0, 0, 0};
        for (int64_t p = 0; p < pieces; ++p)
          m = chan_merge(m, piece_moments(x, L, c, p * kPiece, std::min(M, (p + 1) * kPiece)));
        const ChannelAffine<A> t = finish(c, m);
        for_each_run(L, c, 0, M, [&](int64_t off, int64_t len) {
          for (int64_t i = off; i < off + len; ++i) normalize(i, t);
        });
      }
    });
    return;
  }
  std::vector<Moments<double>> parts(L.C * pieces);
  parallel_pieces(L, [&](int64_t c, int64_t p, int64_t j0, int64_t j1) {
    parts[c * pieces + p] = piece_moments(x, L, c, j0, j1);
  });
  std::vector<ChannelAffine<A>> affine(L.C);
  for (int64_t c = 0; c < L.C; ++c) {
    Moments<double> m{0, 0, 0};
    for (int64_t p = 0; p < pieces; ++p) m = chan_merge(m, parts[c * pieces + p]);
    affine[c] = finish(c, m);
  }
  parallel_pieces(L, [&](int64_t c, int64_t, int64_t j0, int64_t j1) {
    for_each_run(L, c, j0, j1, [&](int64_t off, int64_t len) {
      for (int64_t i = off; i < off + len; ++i) normalize(i, affine[c]);
    });
  });
}

// ---------------------------------------------------------------- eval forward

template <typename T, typename P>
void forward_eval_impl(const EvalForwardArgs& a) {
  using A = acc_t<T>;
  const Layout& L = a.layout;
  std::vector<at::Tensor> keep;
  const P* weight = ptr_or_null<P>(a.weight, keep);
  const P* bias = ptr_or_null<P>(a.bias, keep);
  const P* mean = ptr_or_null<P>(a.running_mean, keep);
  const P* var = ptr_or_null<P>(a.running_var, keep);
  std::vector<ChannelAffine<A>> affine(L.C);
  for (int64_t c = 0; c < L.C; ++c) {
    const double invstd = invstd_from_var(double(var[c]), a.eps);
    affine[c] = channel_affine<A>(A(mean[c]), A(invstd), weight, bias, c);
  }
  const T* x = a.input.data_ptr<T>();
  T* y = a.output.data_ptr<T>();
  parallel_elementwise(L, [&](int64_t i, int64_t c) {
    const ChannelAffine<A>& t = affine[c];
    y[i] = T((A(x[i]) - t.center) * t.scale + t.shift);
  });
}

// ---------------------------------------------------------------- backward

template <typename T, typename P>
void backward_impl(const BackwardArgs& a) {
  using A = acc_t<T>;
  const Layout& L = a.layout;
  std::vector<at::Tensor> keep;
  const P* weight = ptr_or_null<P>(a.weight, keep);
  const A* mean = ptr_or_null<A>(a.mean, keep);
  const A* invstd = ptr_or_null<A>(a.invstd, keep);
  const T* x = a.input.data_ptr<T>();
  const T* dy = a.grad_output.data_ptr<T>();
  T* dx = a.grad_input.defined() ? a.grad_input.data_ptr<T>() : nullptr;
  const bool want_sums = (a.training && dx) || a.grad_weight.defined() || a.grad_bias.defined();
  const double count = double(L.per_channel());

  // (Σdy, Σdy·(x − mean)) → dweight, dbias and the per-channel dx coefficients.
  auto finish = [&](int64_t c, double sum_dy, double sum_dy_xmu) {
    const A w = weight ? A(weight[c]) : A(1);
    if (a.grad_weight.defined()) a.grad_weight.data_ptr<P>()[c] = P(sum_dy_xmu * double(invstd[c]));
    if (a.grad_bias.defined()) a.grad_bias.data_ptr<P>()[c] = P(sum_dy);
    if (!a.training) return BackwardCoefs<A>{w * invstd[c], A(0), A(0)};
    if (count == 0) return BackwardCoefs<A>{A(0), A(0), A(0)};
    return train_backward_coefs<A>(w, invstd[c], A(sum_dy), A(sum_dy_xmu), A(count));
  };
  auto grad_input = [&](int64_t i, int64_t c, const BackwardCoefs<A>& k) {
    dx[i] = T(A(dy[i]) * k.dy_scale + (A(x[i]) - mean[c]) * k.xmu_scale + k.shift);
  };
  auto piece_sums = [&](int64_t c, int64_t j0, int64_t j1) {
    std::array<double, 2> s{};
    const A m = mean[c];
    for_each_run(L, c, j0, j1, [&](int64_t off, int64_t len) {
      const T *px = x + off, *pdy = dy + off;
      const auto r = lane_sums<A, 2>(len, [=](int64_t i) {
        const A g = A(pdy[i]);
        return std::array<A, 2>{g, g * (A(px[i]) - m)};
      });
      s[0] += r[0];
      s[1] += r[1];
    });
    return s;
  };

  std::vector<BackwardCoefs<A>> coefs(L.C);
  if (!want_sums) {
    for (int64_t c = 0; c < L.C; ++c) coefs[c] = finish(c, 0, 0);
  } else if (L.channels_last) {
    const int64_t R = L.per_channel(), rows = band_rows<T>(L), bands = std::max<int64_t>(1, (R + rows - 1) / rows);
    std::vector<double> parts(bands * L.C * 2, 0.0);
    at::parallel_for(0, bands, 1, [&](int64_t b0, int64_t b1) {
      std::vector<A> sdy(L.C), sdyx(L.C);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(sdy.begin(), sdy.end(), A(0));
        std::fill(sdyx.begin(), sdyx.end(), A(0));
        for (int64_t r = b * rows, r1 = std::min(R, r + rows); r < r1; ++r) {
          const T *row_x = x + r * L.C, *row_dy = dy + r * L.C;
          for (int64_t c = 0; c < L.C; ++c) {
            const A g = A(row_dy[c]);
            sdy[c] += g;
            sdyx[c] += g * (A(row_x[c]) - mean[c]);
          }
        }
        for (int64_t c = 0; c < L.C; ++c) {
          parts[(b * L.C + c) * 2] = sdy[c];
          parts[(b * L.C + c) * 2 + 1] = sdyx[c];
        }
      }
    });
    for (int64_t c = 0; c < L.C; ++c) {
      double s0 = 0, s1 = 0;
      for (int64_t b = 0; b < bands; ++b) {
        s0 += parts[(b * L.C + c) * 2];
        s1 += parts[(b * L.C + c) * 2 + 1];
      }
      coefs[c] = finish(c, s0, s1);
    }
  } else if (whole_channels_per_thread(L)) {
    // Reductions then dx per channel, while the channel is still in cache.
    const int64_t pieces = num_pieces(L), M = L.per_channel();
    at::parallel_for(0, L.C, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double s0 = 0, s1 = 0;
        for (int64_t p = 0; p < pieces; ++p) {
          const auto s = piece_sums(c, p * kPiece, std::min(M, (p + 1) * kPiece));
          s0 += s[0];
          s1 += s[1];
        }
        coefs[c] = finish(c, s0, s1);
        if (dx) for_each_run(L, c, 0, M, [&](int64_t off, int64_t len) {
          for (int64_t i = off; i < off + len; ++i) grad_input(i, c, coefs[c]);
        });
      }
    });
    return;
  } else {
    const int64_t pieces = num_pieces(L);
    std::vector<std::array<double, 2>> parts(L.C * pieces);
    parallel_pieces(L, [&](int64_t c, int64_t p, int64_t j0, int64_t j1) {
      parts[c * pieces + p] = piece_sums(c, j0, j1);
    });
    for (int64_t c = 0; c < L.C; ++c) {
      double s0 = 0, s1 = 0;
      for (int64_t p = 0; p < pieces; ++p) {
        s0 += parts[c * pieces + p][0];
        s1 += parts[c * pieces + p][1];
      }
      coefs[c] = finish(c, s0, s1);
    }
  }
  if (dx) parallel_elementwise(L, [&](int64_t i, int64_t c) { grad_input(i, c, coefs[c]); });
}

// Calls f.template operator()<T, P>() for the input dtype T and parameter dtype P (T itself, or
// float for half input with float32 parameters).
template <typename F>
void dispatch(const at::Tensor& input, const std::optional<at::ScalarType>& param_dtype, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastbn_cpu", [&] {
    if constexpr (std::is_same_v<scalar_t, at::Half> || std::is_same_v<scalar_t, at::BFloat16>) {
      if (param_dtype == at::kFloat) return f.template operator()<scalar_t, float>();
    }
    f.template operator()<scalar_t, scalar_t>();
  });
}

std::optional<at::ScalarType> dtype_of(std::initializer_list<const std::optional<at::Tensor>*> ts) {
  for (const auto* t : ts)
    if (t->has_value() && (*t)->defined()) return (*t)->scalar_type();
  return std::nullopt;
}

}  // namespace

void forward_train(const TrainForwardArgs& a) {
  dispatch(a.input, dtype_of({&a.weight, &a.bias, &a.running_mean, &a.running_var}),
           [&]<typename T, typename P>() { forward_train_impl<T, P>(a); });
}

void forward_eval(const EvalForwardArgs& a) {
  dispatch(a.input, a.running_mean.scalar_type(),
           [&]<typename T, typename P>() { forward_eval_impl<T, P>(a); });
}

void backward(const BackwardArgs& a) {
  dispatch(a.input, dtype_of({&a.weight}),
           [&]<typename T, typename P>() { backward_impl<T, P>(a); });
}

}  // namespace fastbn::cpu
