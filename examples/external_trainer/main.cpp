// A plain LibTorch training loop with a model of its own (one attention layer over [image features;
// text tokens]) that adds modalign's dual_channel alignment loss to its cross-entropy. Only
// <torch/torch.h> and modalign's loss headers are used.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>

#include "losses/attention_stats.h"
#include "losses/loss_composer.h"
#include "training_loss.h"

namespace {

constexpr int64_t kVocab = 32, kDim = 16, kHeads = 2, kImage = 4, kText = 8;

// Embeds image features and tokens, runs one causal attention layer, predicts the next token.
struct TinyVlmImpl : torch::nn::Module {
  TinyVlmImpl()
      : image_proj(register_module("image_proj", torch::nn::Linear(8, kDim))),
        embed(register_module("embed", torch::nn::Embedding(kVocab, kDim))),
        qkv(register_module("qkv", torch::nn::Linear(kDim, 3 * kDim))),
        head(register_module("head", torch::nn::Linear(kDim, kVocab))) {}

  // image (B, kImage, 8), tokens (B, kText) -> logits (B, T, V) and attention probabilities (B, H, T, T)
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& image, const torch::Tensor& tokens) {
    torch::Tensor x = torch::cat({image_proj(image), embed(tokens)}, 1);  // (B, T, D)
    const int64_t b = x.size(0), t = x.size(1), hd = kDim / kHeads;
    auto parts = qkv(x).view({b, t, 3, kHeads, hd}).permute({2, 0, 3, 1, 4});  // (3, B, H, T, hd)
    torch::Tensor scores = torch::matmul(parts[0], parts[1].transpose(-1, -2)) / std::sqrt(double(hd));
    torch::Tensor causal = torch::ones({t, t}, torch::kBool).tril();
    torch::Tensor p = torch::softmax(scores.masked_fill(~causal, -1e9), -1);  // (B, H, T, T)
    torch::Tensor h = x + torch::matmul(p, parts[2]).transpose(1, 2).reshape({b, t, kDim});
    return {head(h), p};
  }
  torch::nn::Linear image_proj{nullptr};
  torch::nn::Embedding embed{nullptr};
  torch::nn::Linear qkv{nullptr}, head{nullptr};
};
TORCH_MODULE(TinyVlm);

}  // namespace

int main() {
  torch::manual_seed(0);
  TinyVlm model;
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));

  modalign::DualChannelOptions dual;
  dual.target = 0.8;
  modalign::LossComposer composer({modalign::LossEntry(dual, /*weight=*/0.5)}, /*num_layers=*/1);

  const int64_t b = 8, t = kImage + kText;
  torch::Tensor visual = torch::zeros({b, t}, torch::kBool);
  visual.slice(1, 0, kImage).fill_(true);
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    torch::Tensor image = torch::randn({b, kImage, 8});
    torch::Tensor tokens = torch::randint(kVocab, {b, kText});
    torch::Tensor labels = torch::cat({torch::full({b, kImage}, -100, torch::kInt64), tokens}, 1);
    labels.slice(1, kImage, kImage + 4).fill_(-100);  // supervise the last 4 tokens only
    auto [logits, probs] = model->forward(image, tokens);
    modalign::AttentionStats stats = modalign::stats_from_probs({0}, {probs}, labels, torch::ones({b, t}), visual);
    auto terms = composer.compute(logits, stats);
    torch::Tensor loss = modalign::LossComposer::total(terms);
    // The README's function (training_loss.cpp) computes the same loss from the same tensors.
    const double readme = training_loss(logits, {probs}, labels, torch::ones({b, t}), visual, 1).item<double>();
    if (std::abs(readme - loss.item<double>()) > 1e-6 * std::abs(loss.item<double>()))
      return std::fprintf(stderr, "README's training_loss %.8f != %.8f\n", readme, loss.item<double>()), 1;
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    double dual = terms[1].term.mean().item<double>();
    if (step == 0) first = dual;
    last = dual;
    if (!std::isfinite(loss.item<double>())) return std::fprintf(stderr, "non-finite loss\n"), 1;
    if (step % 10 == 0 || step == 29)
      std::printf("step %2d  total %.4f  text_ce %.4f  dual_channel %.4f\n", step, loss.item<double>(),
                  terms[0].term.mean().item<double>(), dual);
  }
  if (!(last < first)) return std::fprintf(stderr, "dual_channel did not decrease (%.4f -> %.4f)\n", first, last), 1;
  std::printf("ok: dual_channel %.4f -> %.4f\n", first, last);
  return 0;
}
