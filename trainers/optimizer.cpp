#include "trainers/optimizer.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <cmath>
#include <regex>

#include "trainers/adamw_kernel.h"
#include "trainers/distributed.h"

namespace modalign {
namespace {

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// Norm weights, biases and embeddings take no weight decay.
bool no_decay(const std::string& name, const torch::Tensor& p) {
  return p.dim() < 2 || name.find("norm") != std::string::npos || name.find("embed") != std::string::npos ||
         name.find("class_embedding") != std::string::npos;
}

// The vision tower: LLaVA's `vision_tower`, Qwen's `visual` but its merger; the projector: LLaVA's
// `multi_modal_projector`, Qwen's `visual.merger` (the two-layer MLP that feeds the decoder).
bool in_vision_tower(const std::string& name) {
  return starts_with(name, "vision_tower.") || (starts_with(name, "visual.") && !starts_with(name, "visual.merger."));
}
bool in_projector(const std::string& name) {
  return starts_with(name, "multi_modal_projector.") || starts_with(name, "visual.merger.");
}

}  // namespace

std::vector<std::string> apply_freezing(torch::nn::Module& model, const TrainConfig& c) {
  std::regex freeze(c.freeze_regex.empty() ? "$^" : c.freeze_regex), thaw(c.trainable_regex.empty() ? "$^" : c.trainable_regex);
  std::vector<std::string> trainable;
  for (auto& p : model.named_parameters(true)) {
    const std::string& name = p.key();
    const bool adapter = name.find(".lora_") != std::string::npos;
    // With LoRA the language model's own weights stay fixed; adapters always train.
    bool frozen = (c.freeze_vision_tower && in_vision_tower(name)) || (c.freeze_projector && in_projector(name)) ||
                  ((c.freeze_language_model || c.lora_rank > 0) && starts_with(name, "language_model.")) ||
                  std::regex_search(name, freeze);
    if (adapter || std::regex_search(name, thaw)) frozen = false;
    p.value().set_requires_grad(!frozen);
    if (!frozen) trainable.push_back(name);
  }
  if (trainable.empty()) throw std::invalid_argument("train: every parameter is frozen; nothing would be trained");
  return trainable;
}

double lr_multiplier(const TrainConfig& c, int64_t step, int64_t total) {
  int64_t warmup = c.warmup_steps > 0 ? c.warmup_steps : static_cast<int64_t>(std::ceil(c.warmup_ratio * total));
  if (step < warmup) return static_cast<double>(step) / std::max<int64_t>(1, warmup);
  double progress = static_cast<double>(step - warmup) / std::max<int64_t>(1, total - warmup);
  switch (c.lr_scheduler_type) {
    case LrSchedule::Cosine: return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
    case LrSchedule::Linear: return std::max(0.0, 1.0 - progress);
    case LrSchedule::Constant: return 1.0;
  }
  return 1.0;
}

GroupedAdamW::GroupedAdamW(torch::nn::Module& model, const TrainConfig& c) {
  // Groups: (module lr) x (decay, no decay). Module: vision tower, projector, everything else.
  struct Group {
    double lr, decay;
    std::vector<std::pair<std::string, torch::Tensor>> params;
  };
  std::vector<Group> groups;
  std::map<std::pair<double, double>, size_t> index;
  for (auto& p : model.named_parameters(true)) {
    if (!p.value().requires_grad()) continue;
    const std::string& name = p.key();
    double lr = c.learning_rate;
    if (in_vision_tower(name) && c.vision_lr) lr = *c.vision_lr;
    if (in_projector(name) && c.projector_lr) lr = *c.projector_lr;
    double decay = no_decay(name, p.value()) ? 0.0 : c.weight_decay;
    auto key = std::make_pair(lr, decay);
    if (!index.count(key)) index[key] = groups.size(), groups.push_back({lr, decay, {}});
    groups[index[key]].params.emplace_back(name, p.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (auto& g : groups) {
    std::vector<torch::Tensor> tensors;
    for (auto& named : g.params) {
      tensors.push_back(named.second);
      params_.push_back(named);  // group order: the order the optimizer stores them
    }
    auto options = std::make_unique<torch::optim::AdamWOptions>(g.lr);
    options->betas({c.adam_beta1, c.adam_beta2}).eps(c.adam_epsilon).weight_decay(g.decay);
    param_groups.emplace_back(tensors, std::move(options));
    base_lrs_.push_back(g.lr);
  }
  adamw_ = std::make_unique<torch::optim::AdamW>(param_groups, torch::optim::AdamWOptions(c.learning_rate));
}

namespace {

// One AdamW update of a parameter (torch::optim::AdamW's arithmetic: decoupled decay, bias-corrected
// moments, eps added after the square root), reading each of p, g, m, v once and allocating nothing;
// g is multiplied by grad_scale on the fly (gradient clipping without another pass over the gradients).
template <class T>
void fused_adamw(T* p, const T* g, T* m, T* v, int64_t n, const torch::optim::AdamWOptions& o, int64_t step,
                 double grad_scale) {
  const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
  const AdamWCoefficients<T> c{static_cast<T>(beta1),
                               static_cast<T>(beta2),
                               static_cast<T>(1.0 - o.lr() * o.weight_decay()),
                               static_cast<T>(grad_scale),
                               static_cast<T>(o.lr() / (1.0 - std::pow(beta1, step))),
                               static_cast<T>(std::sqrt(1.0 - std::pow(beta2, step))),
                               static_cast<T>(o.eps())};
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    adamw_update(p + begin, g + begin, m + begin, v + begin, end - begin, c);
  });
}

// The same update with tensor operators (other devices and dtypes), as torch::optim::AdamW computes it.
void adamw_operators(torch::Tensor p, const torch::Tensor& g, torch::Tensor& m, torch::Tensor& v,
                     const torch::optim::AdamWOptions& o, int64_t step, double grad_scale) {
  const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
  torch::Tensor grad = grad_scale == 1.0 ? g : g * grad_scale;
  p.mul_(1.0 - o.lr() * o.weight_decay());
  m.mul_(beta1).add_(grad, 1.0 - beta1);
  v.mul_(beta2).addcmul_(grad, grad, 1.0 - beta2);
  torch::Tensor denom = (v.sqrt() / std::sqrt(1.0 - std::pow(beta2, step))).add_(o.eps());
  p.addcdiv_(m, denom, -o.lr() / (1.0 - std::pow(beta1, step)));
}

bool fusable(const torch::Tensor& p) {
  return p.is_cpu() && p.is_contiguous() && (p.scalar_type() == torch::kFloat32 || p.scalar_type() == torch::kFloat64);
}

// Elements per rank and per round of the all-gather (bounds its buffers at world x 16 MB).
constexpr int64_t kGatherBytes = 16 << 20;

}  // namespace

void GroupedAdamW::step(double multiplier, double grad_scale) {
  torch::NoGradGuard no_grad;
  auto& groups = adamw_->param_groups();
  for (size_t i = 0; i < groups.size(); ++i) groups[i].options().set_lr(base_lrs_[i] * multiplier);
  if (shard_over_) return step_sharded(grad_scale);
  bool all_fusable = true;
  for (const auto& [name, p] : params_) all_fusable = all_fusable && fusable(p);
  if (!all_fusable) {  // other devices and dtypes: LibTorch's AdamW on gradients scaled beforehand
    for (const auto& [name, p] : params_)
      if (p.grad().defined() && grad_scale != 1.0) p.mutable_grad().mul_(grad_scale);
    adamw_->step();
    return;
  }
  auto& states = adamw_->state();
  for (auto& group : groups) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      TORCH_CHECK(!p.grad().is_sparse(), "GroupedAdamW does not support sparse gradients");
      // State kept in torch::optim::AdamW's map and layout, so state()/load_state() and its step() agree.
      const std::string key = c10::guts::to_string(p.unsafeGetTensorImpl());
      if (!states.count(key)) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Contiguous));
        states[key] = std::move(fresh);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*states[key]);
      TORCH_CHECK(s.exp_avg().is_contiguous() && s.exp_avg_sq().is_contiguous(), "AdamW moments must be contiguous");
      s.step(s.step() + 1);
      torch::Tensor grad = p.grad().contiguous();
      AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "adamw_update", [&] {
        fused_adamw<scalar_t>(p.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), s.exp_avg().data_ptr<scalar_t>(),
                              s.exp_avg_sq().data_ptr<scalar_t>(), p.numel(), options, s.step(), grad_scale);
      });
    }
  }
}

void GroupedAdamW::shard(DataParallel& dp) {
  TORCH_CHECK(adamw_->state().empty() && !shard_over_, "shard() comes before the first step and load_state()");
  shard_over_ = &dp;
  int64_t total = 0;
  for (const auto& [name, p] : params_) {
    TORCH_CHECK(p.scalar_type() == params_.front().second.scalar_type() && p.device() == params_.front().second.device(),
                "distributed.shard_optimizer needs every trainable parameter in one dtype and on one device; ", name,
                " is ", p.scalar_type(), " on ", p.device(), ", ", params_.front().first, " ",
                params_.front().second.scalar_type(), " on ", params_.front().second.device());
    TORCH_CHECK(p.is_contiguous(), "distributed.shard_optimizer: parameter ", name, " is not contiguous");
    starts_.push_back(total);
    total += p.numel();
  }
  chunk_ = (total + dp.world_size() - 1) / dp.world_size();
  begin_ = std::min(total, dp.rank() * chunk_), end_ = std::min(total, begin_ + chunk_);
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t lo = std::max(begin_, starts_[i]), hi = std::min(end_, starts_[i] + params_[i].second.numel());
    Slice slice;
    slice.offset = lo - starts_[i], slice.length = std::max<int64_t>(0, hi - lo);
    slices_.push_back(slice);
  }
  starts_.push_back(total);  // one past the last parameter
}

void GroupedAdamW::step_sharded(double grad_scale) {
  size_t k = 0;  // params_ follow the groups' order
  for (auto& group : adamw_->param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    for (auto& p : group.params()) {
      Slice& s = slices_[k++];
      if (!p.grad().defined()) continue;
      ++s.step;  // on every rank, so the gathered state counts as the unsharded one does
      if (s.length == 0) continue;
      if (!s.exp_avg.defined()) s.exp_avg = torch::zeros({s.length}, p.options()), s.exp_avg_sq = torch::zeros({s.length}, p.options());
      torch::Tensor pv = p.view({-1}).slice(0, s.offset, s.offset + s.length);
      torch::Tensor gv = p.grad().contiguous().view({-1}).slice(0, s.offset, s.offset + s.length);
      if (fusable(p)) {
        AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "adamw_update", [&] {
          fused_adamw<scalar_t>(pv.data_ptr<scalar_t>(), gv.data_ptr<scalar_t>(), s.exp_avg.data_ptr<scalar_t>(),
                                s.exp_avg_sq.data_ptr<scalar_t>(), s.length, options, s.step, grad_scale);
        });
      } else {
        adamw_operators(pv, gv, s.exp_avg, s.exp_avg_sq, options, s.step, grad_scale);
      }
    }
  }
  std::vector<torch::Tensor> targets;
  for (const auto& [name, p] : params_) targets.push_back(p);
  all_gather_ranges(targets);
}

void GroupedAdamW::all_gather_ranges(const std::vector<torch::Tensor>& targets) const {
  torch::NoGradGuard no_grad;
  // Copies flat elements [a, a + n) of the targets from (to_flat) or into `flat` (n values).
  auto copy = [&](int64_t a, int64_t n, const torch::Tensor& flat, bool to_flat) {
    for (size_t i = 0; i + 1 < starts_.size(); ++i) {
      const int64_t lo = std::max(a, starts_[i]), hi = std::min(a + n, starts_[i + 1]);
      if (lo >= hi) continue;
      torch::Tensor part = targets[i].view({-1}).slice(0, lo - starts_[i], hi - starts_[i]);
      torch::Tensor window = flat.slice(0, lo - a, hi - a);
      to_flat ? window.copy_(part) : part.copy_(window);
    }
  };
  const torch::Tensor& like = targets.front();
  const int64_t per_round = std::max<int64_t>(1, kGatherBytes / static_cast<int64_t>(like.element_size()));
  for (int64_t done = 0; done < chunk_; done += per_round) {
    const int64_t n = std::min(per_round, chunk_ - done);
    torch::Tensor local = torch::zeros({n}, like.options());
    copy(begin_ + done, std::max<int64_t>(0, std::min(n, end_ - begin_ - done)), local, true);
    std::vector<torch::Tensor> parts = shard_over_->all_gather(local);
    for (size_t r = 0; r < parts.size(); ++r) {
      const int64_t a = static_cast<int64_t>(r) * chunk_ + done;
      copy(a, std::max<int64_t>(0, std::min(n, starts_.back() - a)), parts[r], false);
    }
  }
}

void GroupedAdamW::zero_grad() {
  // Gradients are dropped, not zeroed: the next backward then hands its gradient buffers over instead
  // of adding them to zeros (one pass less per parameter, and no memset).
  for (auto& group : adamw_->param_groups())
    for (auto& p : group.params()) p.mutable_grad() = torch::Tensor();
}

std::pair<double, double> GroupedAdamW::grad_norm_and_clip(double max_norm) const {
  std::vector<torch::Tensor> norms;
  for (const auto& [name, p] : params_)
    if (p.grad().defined()) norms.push_back(p.grad().norm(2));
  const double norm = norms.empty() ? 0.0 : torch::stack(norms).norm(2).item<double>();
  return {norm, max_norm > 0 && norm > 0 ? std::min(1.0, max_norm / (norm + 1e-6)) : 1.0};
}

NamedTensors GroupedAdamW::state() const {
  NamedTensors out;
  if (shard_over_) {  // every rank's slices gathered into full moments
    std::vector<torch::Tensor> avg, sq;
    for (size_t i = 0; i < params_.size(); ++i) {
      avg.push_back(torch::zeros_like(params_[i].second, torch::MemoryFormat::Contiguous));
      sq.push_back(torch::zeros_like(params_[i].second, torch::MemoryFormat::Contiguous));
      const Slice& s = slices_[i];
      if (!s.exp_avg.defined()) continue;
      avg.back().view({-1}).slice(0, s.offset, s.offset + s.length).copy_(s.exp_avg);
      sq.back().view({-1}).slice(0, s.offset, s.offset + s.length).copy_(s.exp_avg_sq);
    }
    all_gather_ranges(avg);
    all_gather_ranges(sq);
    for (size_t i = 0; i < params_.size(); ++i) {
      if (slices_[i].step == 0) continue;  // not stepped yet
      out.emplace_back(params_[i].first + ".exp_avg", avg[i]);
      out.emplace_back(params_[i].first + ".exp_avg_sq", sq[i]);
      out.emplace_back(params_[i].first + ".step", torch::tensor(slices_[i].step, torch::kInt64));
    }
    return out;
  }
  auto& states = adamw_->state();
  for (const auto& [name, p] : params_) {
    auto it = states.find(c10::guts::to_string(p.unsafeGetTensorImpl()));
    if (it == states.end()) continue;  // not stepped yet
    auto& s = static_cast<torch::optim::AdamWParamState&>(*it->second);
    out.emplace_back(name + ".exp_avg", s.exp_avg());
    out.emplace_back(name + ".exp_avg_sq", s.exp_avg_sq());
    out.emplace_back(name + ".step", torch::tensor(s.step(), torch::kInt64));
  }
  return out;
}

void GroupedAdamW::load_state(const NamedTensors& tensors) {
  std::map<std::string, torch::Tensor> by_name(tensors.begin(), tensors.end());
  std::vector<std::string> problems;
  auto& states = adamw_->state();
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& [name, p] = params_[i];
    auto avg = by_name.find(name + ".exp_avg"), sq = by_name.find(name + ".exp_avg_sq"), st = by_name.find(name + ".step");
    if (avg == by_name.end() && sq == by_name.end() && st == by_name.end()) continue;  // never stepped
    if (avg == by_name.end() || sq == by_name.end() || st == by_name.end()) {
      problems.push_back(name + " (incomplete state)");
      continue;
    }
    if (avg->second.sizes() != p.sizes() || sq->second.sizes() != p.sizes()) {
      problems.push_back(name + " (shape)");
      continue;
    }
    if (shard_over_) {  // this rank's slice only
      Slice& s = slices_[i];
      s.step = st->second.item<int64_t>();
      auto part = [&](const torch::Tensor& t) {
        return t.to(p.device(), p.scalar_type()).reshape({-1}).slice(0, s.offset, s.offset + s.length).clone();
      };
      if (s.length > 0) s.exp_avg = part(avg->second), s.exp_avg_sq = part(sq->second);
    } else {
      auto state = std::make_unique<torch::optim::AdamWParamState>();
      state->step(st->second.item<int64_t>());
      state->exp_avg(avg->second.to(p.device(), p.scalar_type()).clone());
      state->exp_avg_sq(sq->second.to(p.device(), p.scalar_type()).clone());
      states[c10::guts::to_string(p.unsafeGetTensorImpl())] = std::move(state);
    }
    by_name.erase(avg);
    by_name.erase(name + ".exp_avg_sq");
    by_name.erase(name + ".step");
  }
  for (const auto& kv : by_name) problems.push_back(kv.first + " (not a trainable parameter now)");
  if (!problems.empty())
    throw std::runtime_error(fmt::format("optimizer state does not match the trainable parameters ({} problems, first: {}); "
                                         "the checkpoint was made with another trainable set",
                                         problems.size(), problems.front()));
}

}  // namespace modalign
