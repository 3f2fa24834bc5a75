// CUDA kernels of fednas::mix and fednas::mix_backward.
//
// Forward: one grid-stride pass; each thread reads its element of every input once and
// writes the result once, accumulating in float (double for double inputs). Up to
// kMaxInputs inputs per launch; a node with more is mixed in chunks that accumulate into
// the result.
// Backward: inputs in groups of kGroup; per element the thread reads grad once per group,
// writes w_k * grad for each input and accumulates grad * input_k in registers; each block
// reduces its accumulators (warp shuffles, then shared memory) into one partial per input,
// and a second kernel sums the partials in block order. No atomics: the result is
// deterministic for a given shape. Everything runs on the current stream.

#include "mix.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace fednas {

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 1024;  // fixed cap: the reduction order never depends on the GPU
constexpr int kMaxInputs = 32;
constexpr int kGroup = 8;

template <typename T, int N>
struct Pointers {
  T* p[N];
};

int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

template <typename T>
__global__ void mix_forward_kernel(Pointers<const T, kMaxInputs> in,
                                   const at::opmath_type<T>* __restrict__ w, int count,
                                   T* __restrict__ out, int64_t n, bool accumulate) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t ws[kMaxInputs];
  if (threadIdx.x < count) ws[threadIdx.x] = w[threadIdx.x];
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    acc_t acc = accumulate ? static_cast<acc_t>(out[i]) : acc_t(0);
#pragma unroll 4
    for (int k = 0; k < count; ++k) acc += ws[k] * static_cast<acc_t>(in.p[k][i]);
    out[i] = static_cast<T>(acc);
  }
}

template <typename T, bool kWriteGrad>
__global__ void mix_backward_kernel(const T* __restrict__ g, Pointers<const T, kGroup> in,
                                    Pointers<T, kGroup> gin,
                                    const at::opmath_type<T>* __restrict__ w, int count,
                                    int64_t n, at::opmath_type<T>* __restrict__ partial) {
  using acc_t = at::opmath_type<T>;
  acc_t acc[kGroup];
  acc_t wk[kGroup];
#pragma unroll
  for (int k = 0; k < kGroup; ++k) {
    acc[k] = acc_t(0);
    wk[k] = k < count ? w[k] : acc_t(0);
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const acc_t gi = static_cast<acc_t>(g[i]);
#pragma unroll
    for (int k = 0; k < kGroup; ++k) {
      if (k < count) {
        if (kWriteGrad) gin.p[k][i] = static_cast<T>(wk[k] * gi);
        acc[k] += gi * static_cast<acc_t>(in.p[k][i]);
      }
    }
  }
  // Block reduction: shuffle within warps, then the warps' sums through shared memory.
  __shared__ acc_t warp_sums[kGroup][kThreads / 32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < kGroup; ++k) {
    acc_t v = acc[k];
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (lane == 0) warp_sums[k][warp] = v;
  }
  __syncthreads();
  if (threadIdx.x < count) {
    acc_t s = acc_t(0);
    for (int j = 0; j < kThreads / 32; ++j) s += warp_sums[threadIdx.x][j];
    partial[static_cast<int64_t>(blockIdx.x) * count + threadIdx.x] = s;
  }
}

template <typename A>
__global__ void sum_partials_kernel(const A* __restrict__ partial, int blocks, int count,
                                    A* __restrict__ dots) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= count) return;
  A s = A(0);
  for (int b = 0; b < blocks; ++b) s += partial[static_cast<int64_t>(b) * count + k];
  dots[k] = s;
}

}  // namespace

at::Tensor mix_cuda(at::TensorList outputs, const at::Tensor& weights) {
  check_mix_args(outputs, weights);
  const c10::cuda::CUDAGuard guard(outputs[0].device());
  at::Tensor out = at::empty_like(outputs[0]);
  const std::vector<at::Tensor> in = match_layout(outputs, out);
  const int64_t n = out.numel();
  const int64_t k_count = static_cast<int64_t>(in.size());
  if (n == 0) return out;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(),
                                  "fednas::mix (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor w = weights.detach().to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    for (int64_t lo = 0; lo < k_count; lo += kMaxInputs) {
      const int count = static_cast<int>(std::min<int64_t>(kMaxInputs, k_count - lo));
      Pointers<const scalar_t, kMaxInputs> ptrs{};
      for (int k = 0; k < count; ++k) ptrs.p[k] = in[lo + k].const_data_ptr<scalar_t>();
      mix_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(
          ptrs, w.const_data_ptr<acc_t>() + lo, count, out.mutable_data_ptr<scalar_t>(), n,
          lo > 0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> mix_backward_cuda(
    const at::Tensor& grad, at::TensorList outputs, const at::Tensor& weights,
    bool outputs_grad) {
  const c10::cuda::CUDAGuard guard(outputs[0].device());
  BackwardArgs a = prepare_backward(grad, outputs, weights, outputs_grad);
  const at::Tensor& like = a.like;
  const std::vector<at::Tensor>& in = a.in;
  const at::Tensor& g = a.grad;
  std::vector<at::Tensor>& grads = a.grads;
  const int64_t n = like.numel();
  const int64_t k_count = static_cast<int64_t>(in.size());
  at::Tensor dots;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, like.scalar_type(),
                                  "fednas::mix_backward (CUDA)", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor w = weights.detach().to(acc_type).contiguous();
    dots = at::zeros({k_count}, like.options().dtype(acc_type));
    if (n == 0) return;
    const int blocks = blocks_for(n);
    at::Tensor partial = at::empty({blocks, kGroup}, like.options().dtype(acc_type));
    for (int64_t lo = 0; lo < k_count; lo += kGroup) {
      const int count = static_cast<int>(std::min<int64_t>(kGroup, k_count - lo));
      Pointers<const scalar_t, kGroup> ptrs{};
      Pointers<scalar_t, kGroup> gptrs{};
      for (int k = 0; k < count; ++k) {
        ptrs.p[k] = in[lo + k].const_data_ptr<scalar_t>();
        if (outputs_grad) gptrs.p[k] = grads[lo + k].mutable_data_ptr<scalar_t>();
      }
      if (outputs_grad) {
        mix_backward_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), ptrs, gptrs, w.const_data_ptr<acc_t>() + lo, count,
            n, partial.mutable_data_ptr<acc_t>());
      } else {
        mix_backward_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(
            g.const_data_ptr<scalar_t>(), ptrs, gptrs, w.const_data_ptr<acc_t>() + lo, count,
            n, partial.mutable_data_ptr<acc_t>());
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sum_partials_kernel<acc_t><<<1, kGroup, 0, stream>>>(
          partial.const_data_ptr<acc_t>(), blocks, count, dots.mutable_data_ptr<acc_t>() + lo);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grads, dots.to(weights.scalar_type())};
}

}  // namespace fednas

TORCH_LIBRARY_IMPL(fednas, CUDA, m) {
  m.impl("mix", &fednas::mix_cuda);
  m.impl("mix_backward", &fednas::mix_backward_cuda);
}
