// Fused Gumbel-softmax mixing: op schemas, CPU kernels, and the composite gumbel_mix.
//
// Schemas live here (TORCH_LIBRARY); the CUDA kernels in mix_cuda.cu register against them.
// Autograd and fake (meta) implementations of mix are registered from Python
// (fednas_mpi/kernels/ops.py), so both the CMake library and the JIT build get them.

#include "mix.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace fednas {

namespace {

// A block is the unit of parallel work and of the deterministic reduction: each block
// writes its own partial dot products and the partials are summed in block order, so the
// result does not depend on the number of threads. Inputs are taken in groups of up to
// kGroup streamed side by side (one pass over memory per group; K = 8, DARTS's op count,
// is one group), with the group size a template parameter so the compiler vectorises the
// element loop and keeps the per-input state in registers.
constexpr int64_t kBlock = 16384;
constexpr int64_t kTile = 2048;
constexpr int kGroup = 8;
constexpr int kLanes = 16;

// out[i] (+)= sum_g w[g] * x[g][i], summed in input order like the reference.
template <typename T, int G>
void mix_group(T* __restrict out, const T* const* x, const T* w, int64_t n, bool first) {
  const T* __restrict xs[G];
  T ws[G];
  for (int g = 0; g < G; ++g) {
    xs[g] = x[g];
    ws[g] = w[g];
  }
  for (int64_t i = 0; i < n; ++i) {
    T s = first ? ws[0] * xs[0][i] : out[i] + ws[0] * xs[0][i];
    for (int g = 1; g < G; ++g) s += ws[g] * xs[g][i];
    out[i] = s;
  }
}

// gx = w * g (when kWriteGrad) and returns <g, x>; kLanes independent accumulators let
// the compiler vectorise the reduction without reassociating it.
template <typename T, bool kWriteGrad>
double scale_dot(const T* __restrict g, const T* __restrict x, T* __restrict gx, T w,
                 int64_t n) {
  T lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const T gi = g[i + l];
      if (kWriteGrad) gx[i + l] = w * gi;
      lanes[l] += gi * x[i + l];
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const T gi = g[i];
    if (kWriteGrad) gx[i] = w * gi;
    lanes[l] += gi * x[i];
  }
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

// Calls fn.template operator()<G>() with G = count as a compile-time constant (1..kGroup).
template <typename Fn>
void with_group_size(int count, Fn&& fn) {
  switch (count) {
    case 1: fn.template operator()<1>(); break;
    case 2: fn.template operator()<2>(); break;
    case 3: fn.template operator()<3>(); break;
    case 4: fn.template operator()<4>(); break;
    case 5: fn.template operator()<5>(); break;
    case 6: fn.template operator()<6>(); break;
    case 7: fn.template operator()<7>(); break;
    default: fn.template operator()<8>(); break;
  }
}

template <typename T>
void mix_forward_cpu(const std::vector<const T*>& in, const std::vector<T>& w, T* out,
                     int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t k_count = static_cast<int64_t>(in.size());
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t lo = b0 * kBlock, len = std::min(n, b1 * kBlock) - lo;
    std::vector<const T*> x(in.size());
    for (int64_t k0 = 0; k0 < k_count; k0 += kGroup) {
      const int count = static_cast<int>(std::min<int64_t>(kGroup, k_count - k0));
      for (int c = 0; c < count; ++c) x[c] = in[k0 + c] + lo;
      with_group_size(count, [&]<int G>() {
        mix_group<T, G>(out + lo, x.data(), w.data() + k0, len, k0 == 0);
      });
    }
  });
}

// Backward goes input by input over an L1-sized tile of the gradient: streaming one input
// and one fresh gradient at a time measured faster than K side by side (K fresh output
// streams at once thrash the store buffers and fault pages in K places).
template <typename T>
void mix_backward_cpu(const T* g, const std::vector<const T*>& in, const std::vector<T>& w,
                      const std::vector<T*>& gin, double* dots, int64_t n) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t k_count = static_cast<int64_t>(in.size());
  std::vector<double> partial(static_cast<size_t>(blocks * k_count), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t end = std::min(n, (b + 1) * kBlock);
      double* part = partial.data() + b * k_count;
      for (int64_t t = b * kBlock; t < end; t += kTile) {
        const int64_t len = std::min(kTile, end - t);
        for (int64_t k = 0; k < k_count; ++k) {
          part[k] += gin.empty()
                         ? scale_dot<T, false>(g + t, in[k] + t, nullptr, w[k], len)
                         : scale_dot<T, true>(g + t, in[k] + t, gin[k] + t, w[k], len);
        }
      }
    }
  });
  for (int64_t k = 0; k < k_count; ++k) {
    double s = 0.0;
    for (int64_t b = 0; b < blocks; ++b) s += partial[b * k_count + k];
    dots[k] = s;
  }
}

template <typename T>
std::vector<T> host_weights(const at::Tensor& weights) {
  at::Tensor w = weights.detach().to(at::kCPU, c10::CppTypeToScalarType<T>::value).contiguous();
  return std::vector<T>(w.data_ptr<T>(), w.data_ptr<T>() + w.numel());
}

at::Tensor mix_cpu(at::TensorList outputs, const at::Tensor& weights) {
  check_mix_args(outputs, weights);
  at::Tensor out = at::empty_like(outputs[0]);
  const std::vector<at::Tensor> in = match_layout(outputs, out);
  const int64_t n = out.numel();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "fednas::mix (CPU)", [&] {
    std::vector<const scalar_t*> ptrs;
    for (const auto& t : in) ptrs.push_back(t.const_data_ptr<scalar_t>());
    mix_forward_cpu<scalar_t>(ptrs, host_weights<scalar_t>(weights),
                              out.mutable_data_ptr<scalar_t>(), n);
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mix_backward_cpu_op(
    const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
    bool outputs_grad) {
  BackwardArgs a = prepare_backward(grad, outputs, weights, outputs_grad);
  const at::Tensor& like = a.like;
  const std::vector<at::Tensor>& in = a.in;
  const at::Tensor& g = a.grad;
  std::vector<at::Tensor>& grads = a.grads;
  const int64_t k_count = static_cast<int64_t>(in.size());
  at::Tensor dots = at::empty({k_count}, weights.options().dtype(at::kDouble).device(at::kCPU));
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "fednas::mix_backward (CPU)", [&] {
    std::vector<const scalar_t*> ptrs;
    for (const auto& t : in) ptrs.push_back(t.const_data_ptr<scalar_t>());
    std::vector<scalar_t*> gptrs;
    for (auto& t : grads) gptrs.push_back(t.mutable_data_ptr<scalar_t>());
    mix_backward_cpu<scalar_t>(g.const_data_ptr<scalar_t>(), ptrs,
                               host_weights<scalar_t>(weights), gptrs,
                               dots.mutable_data_ptr<double>(), like.numel());
  });
  return {grads, dots.to(weights.options())};
}

// Eq. 1 then eq. 2 as one op: the weights are a (masked) softmax of (logits + noise) / T
// over K entries, and only the outputs that exist are mixed (an undefined output is the
// zero op or a pruned one: it keeps its share of the normalisation but is never read).
// `hard` is the DSNAS estimator: the forward pass returns exactly the output of the
// Gumbel-max sample s, and the logits receive <grad, o_s> * (onehot(s) - softmax(logits)).
at::Tensor gumbel_mix(const c10::List<std::optional<at::Tensor>>& outputs,
                      const at::Tensor& logits, double temperature,
                      const std::optional<at::Tensor>& noise, at::OptionalIntArrayRef mask,
                      bool hard) {
  const int64_t k_count = static_cast<int64_t>(outputs.size());
  TORCH_CHECK(logits.dim() == 1 && logits.size(0) == k_count,
              "fednas::gumbel_mix: logits must be 1-D with one entry per output (", k_count,
              "), got shape ", logits.sizes());
  TORCH_CHECK(temperature > 0.0 && std::isfinite(temperature),
              "fednas::gumbel_mix: temperature must be positive and finite, got ", temperature);
  TORCH_CHECK(!mask.has_value() || static_cast<int64_t>(mask->size()) == k_count,
              "fednas::gumbel_mix: mask must have one 0/1 entry per output");
  auto kept = [&](int64_t k) { return !mask.has_value() || (*mask)[k] != 0; };
  // The mask is a host list (a static part of the architecture), so masking needs no
  // device-to-host sync and stays traceable: masked logits become -inf entry by entry.
  auto masked = [&](const at::Tensor& x) {
    if (!mask.has_value()) return x;
    std::vector<at::Tensor> parts;
    for (int64_t k = 0; k < k_count; ++k) {
      parts.push_back(kept(k) ? x.select(0, k)
                              : at::full({}, -std::numeric_limits<double>::infinity(),
                                         x.options()));
    }
    return at::stack(parts);
  };
  const at::Tensor z = masked(noise.has_value() ? logits + *noise : logits);
  static auto mix_op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("fednas::mix", "")
                           .typed<at::Tensor(at::TensorList, const at::Tensor&)>();
  if (hard) {
    const int64_t s = z.argmax().item<int64_t>();
    const std::optional<at::Tensor> chosen = outputs.get(s);
    TORCH_CHECK(chosen.has_value() && chosen->defined(),
                "fednas::gumbel_mix(hard=True): the sampled entry ", s,
                " has no output; compute the op that hard_index selects");
    const at::Tensor logp = at::log_softmax(masked(logits), 0).select(0, s);
    const at::Tensor one = at::exp(logp - logp.detach()).reshape({1});  // value exactly 1
    return mix_op.call({*chosen}, one);
  }
  const at::Tensor w = at::softmax(z / temperature, 0);
  // Masked entries weigh 0: their outputs are skipped, never read (a pruned op's stale
  // tensor, even one holding NaN, cannot leak into the mix).
  std::vector<at::Tensor> present;
  std::vector<at::Tensor> present_w;  // selected without a host index tensor: traceable
  for (int64_t k = 0; k < k_count; ++k) {
    const std::optional<at::Tensor> o = outputs.get(k);
    if (kept(k) && o.has_value() && o->defined()) {
      present.push_back(*o);
      present_w.push_back(w.select(0, k));
    }
  }
  TORCH_CHECK(!present.empty(),
              "fednas::gumbel_mix: no output is both defined and unmasked (all pruned)");
  return mix_op.call(present, static_cast<int64_t>(present.size()) == k_count
                                  ? w
                                  : at::stack(present_w));
}

int64_t abi_version() { return kAbiVersion; }

}  // namespace

void check_mix_args(at::TensorList outputs, const at::Tensor& weights) {
  TORCH_CHECK(!outputs.empty(), "fednas::mix: needs at least one output");
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == static_cast<int64_t>(outputs.size()),
              "fednas::mix: weights must be 1-D with one entry per output (", outputs.size(),
              "), got shape ", weights.sizes());
  TORCH_CHECK(weights.is_floating_point(), "fednas::mix: weights must be floating point");
  const at::Tensor& first = outputs[0];
  for (size_t k = 0; k < outputs.size(); ++k) {
    TORCH_CHECK(outputs[k].defined(), "fednas::mix: output ", k, " is undefined");
    TORCH_CHECK(outputs[k].sizes() == first.sizes(), "fednas::mix: output ", k, " has shape ",
                outputs[k].sizes(), ", output 0 has ", first.sizes());
    TORCH_CHECK(outputs[k].scalar_type() == first.scalar_type(), "fednas::mix: output ", k,
                " is ", outputs[k].scalar_type(), ", output 0 is ", first.scalar_type());
    TORCH_CHECK(outputs[k].device() == first.device(), "fednas::mix: output ", k, " is on ",
                outputs[k].device(), ", output 0 on ", first.device());
  }
  TORCH_CHECK(weights.device() == first.device(), "fednas::mix: weights are on ",
              weights.device(), ", the outputs on ", first.device());
}

BackwardArgs prepare_backward(const at::Tensor& grad, at::TensorList outputs,
                              const at::Tensor& weights, bool outputs_grad) {
  check_mix_args(outputs, weights);
  TORCH_CHECK(grad.sizes() == outputs[0].sizes() && grad.dtype() == outputs[0].dtype(),
              "fednas::mix_backward: grad must match the outputs in shape and dtype");
  BackwardArgs a;
  a.like = at::empty_like(outputs[0]);
  a.in = match_layout(outputs, a.like);
  a.grad = match_layout({grad}, a.like)[0];
  if (outputs_grad) {
    for (size_t k = 0; k < a.in.size(); ++k) a.grads.push_back(at::empty_like(a.like));
  }
  return a;
}

std::vector<at::Tensor> match_layout(at::TensorList outputs, const at::Tensor& like) {
  std::vector<at::Tensor> in;
  in.reserve(outputs.size());
  for (const auto& t : outputs) {
    if (t.strides() == like.strides() && t.is_non_overlapping_and_dense()) {
      in.push_back(t);
    } else {
      at::Tensor copy = at::empty_like(like);
      copy.copy_(t);
      in.push_back(copy);
    }
  }
  return in;
}

}  // namespace fednas

TORCH_LIBRARY(fednas, m) {
  m.def("abi_version() -> int", &fednas::abi_version);
  m.def("mix(Tensor[] outputs, Tensor weights) -> Tensor");
  m.def("mix_backward(Tensor grad, Tensor[] outputs, Tensor weights, bool outputs_grad) "
        "-> (Tensor[], Tensor)");
  m.def("gumbel_mix(Tensor?[] outputs, Tensor logits, float temperature, Tensor? noise=None, "
        "int[]? mask=None, bool hard=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fednas, CPU, m) {
  m.impl("mix", &fednas::mix_cpu);
  m.impl("mix_backward", &fednas::mix_backward_cpu_op);
}

TORCH_LIBRARY_IMPL(fednas, CompositeImplicitAutograd, m) {
  m.impl("gumbel_mix", &fednas::gumbel_mix);
}
