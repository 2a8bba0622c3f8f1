#include "lib/model/recompute.h"

#include <ATen/CPUGeneratorImpl.h>

#include "lib/model/precision.h"

namespace modalign {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// What the backward pass needs besides x: the block, the generator and autocast state it ran with, which of
// its outputs were defined (only those are the node's outputs) and which inputs want gradients.
struct Block : torch::CustomClassHolder {
  BlockFn fn;
  torch::Tensor rng_state;
  MixedPrecision precision;
  std::vector<bool> defined;
  std::vector<bool> wants_grad;  // x, then each parameter
};

struct RecomputeFunction : torch::autograd::Function<RecomputeFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& x, torch::TensorList params,
                               c10::intrusive_ptr<Block> block) {
    block->rng_state = at::detail::getDefaultCPUGenerator().get_state();
    block->precision = MixedPrecision::current(x.device().type());
    block->wants_grad.push_back(x.requires_grad());
    for (const auto& p : params) block->wants_grad.push_back(p.requires_grad());
    variable_list outputs;
    for (torch::Tensor& out : block->fn(x)) {
      block->defined.push_back(out.defined());
      if (out.defined()) outputs.push_back(std::move(out));
    }
    ctx->save_for_backward({x});
    ctx->saved_data["block"] = c10::IValue::make_capsule(block);
    ctx->saved_data["params"] = params.vec();
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto block = c10::static_intrusive_pointer_cast<Block>(ctx->saved_data["block"].toCapsule());
    const std::vector<torch::Tensor> params = ctx->saved_data["params"].toTensorVector();
    torch::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(block->wants_grad[0]);
    std::vector<torch::Tensor> outputs;
    {
      torch::AutoGradMode grad(true);
      AutocastScope autocast(block->precision);  // the backward pass runs outside the forward's scope
      at::Generator gen = at::detail::getDefaultCPUGenerator();
      torch::Tensor now = gen.get_state();
      gen.set_state(block->rng_state);
      outputs = block->fn(x);
      gen.set_state(now);
    }
    std::vector<torch::Tensor> roots, root_grads, wrt;
    for (size_t i = 0, j = 0; i < outputs.size(); ++i) {
      if (!block->defined[i]) continue;
      const torch::Tensor& g = grads[j++];
      if (g.defined() && outputs[i].requires_grad()) roots.push_back(outputs[i]), root_grads.push_back(g);
    }
    if (block->wants_grad[0]) wrt.push_back(x);
    for (size_t i = 0; i < params.size(); ++i)
      if (block->wants_grad[i + 1]) wrt.push_back(params[i]);
    variable_list found = roots.empty() ? variable_list(wrt.size())
                                        : torch::autograd::grad(roots, wrt, root_grads, /*retain_graph=*/false,
                                                                /*create_graph=*/false, /*allow_unused=*/true);
    variable_list out;  // one per forward argument: x, each parameter, the block
    size_t k = 0;
    out.push_back(block->wants_grad[0] ? found[k++] : torch::Tensor());
    for (size_t i = 0; i < params.size(); ++i) out.push_back(block->wants_grad[i + 1] ? found[k++] : torch::Tensor());
    out.emplace_back();
    return out;
  }
};

}  // namespace

std::vector<torch::Tensor> recompute_in_backward(const BlockFn& fn, const torch::Tensor& x,
                                                 const std::vector<torch::Tensor>& params) {
  bool any = x.requires_grad();
  for (const auto& p : params) any = any || p.requires_grad();
  if (!torch::GradMode::is_enabled() || !any) return fn(x);
  auto block = c10::make_intrusive<Block>();
  block->fn = fn;
  variable_list outputs = RecomputeFunction::apply(x, torch::TensorList(params), block);  // params: one input each
  std::vector<torch::Tensor> all;  // back in fn's layout, undefined where fn gave nothing
  for (size_t i = 0, j = 0; i < block->defined.size(); ++i) all.push_back(block->defined[i] ? outputs[j++] : torch::Tensor());
  return all;
}

torch::Tensor run_block(bool recompute, const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                        const torch::Tensor& x, const torch::nn::Module& module) {
  if (!recompute) return fn(x);
  return recompute_in_backward([fn](const torch::Tensor& in) { return std::vector<torch::Tensor>{fn(in)}; }, x,
                               module.parameters())[0];
}

}  // namespace modalign
