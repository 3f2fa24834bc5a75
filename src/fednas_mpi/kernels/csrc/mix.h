// Shared declarations of the fused Gumbel-softmax mixing ops (namespace fednas).
//
//   mix(outputs[K], weights[K])            = sum_k weights[k] * outputs[k]
//   mix_backward(grad, outputs, weights)   = ([weights[k] * grad]_k, [<grad, outputs[k]>]_k)
//
// Every output is read once per pass; no stacked copy and no per-term temporaries.
// All K outputs are brought to the memory layout of the result (empty_like(outputs[0])),
// which is dense, so the kernels walk storage linearly whatever that layout is.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace fednas {

// Bumped whenever a schema or a semantic changes; the Python loader refuses a prebuilt
// library whose number differs from its own (it would rather rebuild than run stale code).
constexpr int64_t kAbiVersion = 1;

// Checks shapes/dtypes/devices and returns the K outputs in the layout of `like`
// (copies only those whose strides differ).
std::vector<at::Tensor> match_layout(at::TensorList outputs, const at::Tensor& like);
void check_mix_args(at::TensorList outputs, const at::Tensor& weights);

// What both backward kernels start from: the checked arguments in one dense layout and,
// when asked for, one fresh gradient tensor per output in that layout.
struct BackwardArgs {
  at::Tensor like;                 // an empty tensor with the common layout
  std::vector<at::Tensor> in;      // the outputs, in that layout
  at::Tensor grad;                 // the upstream gradient, in that layout
  std::vector<at::Tensor> grads;   // empty unless outputs_grad
};
BackwardArgs prepare_backward(const at::Tensor& grad, at::TensorList outputs,
                              const at::Tensor& weights, bool outputs_grad);


}  // namespace fednas
