// A plain LibTorch training loop with a model of its own (two attention layers over [bos; image features;
// text tokens]) that adds modalign's attention losses to its cross-entropy: first the README's dense-map route
// (training_loss.cpp: dual_channel from attention probabilities it keeps), checked against the blockwise route
// (tapped_loss.cpp: AlignmentTaps, no T x T map), then training with all four losses on the blockwise route.
// Only LibTorch and the installed modalign::losses and modalign::attention are used.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <map>

#include "tapped_loss.h"
#include "training_loss.h"

namespace {

// Tokens: 0 padding, 1 bos, 2 filler, 10-17 answers, 20-23 "which image patch?" questions.
constexpr int64_t kVocab = 32, kDim = 32, kHeads = 2, kImage = 4, kFeatures = 8, kLayers = 2, kTokens = 10;

// One attention layer: dense probabilities it keeps (probs != nullptr), or modalign's blockwise attention.
struct AttentionImpl : torch::nn::Module {
  AttentionImpl() : qkv(register_module("qkv", torch::nn::Linear(kDim, 3 * kDim))),
                    out(register_module("out", torch::nn::Linear(kDim, kDim))) {}
  // x (B, T, D), real (B, T) bool -> (B, T, D)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& real, int64_t layer, modalign::AlignmentTaps* taps,
                        std::vector<torch::Tensor>* probs) {
    const int64_t b = x.size(0), t = x.size(1), hd = kDim / kHeads;
    auto parts = qkv(x).view({b, t, 3, kHeads, hd}).unbind(2);  // 3 x (B, T, H, d)
    torch::Tensor o;
    if (taps) {
      o = taps->attend(layer, parts[0], parts[1], parts[2]);  // (B, T, H, d)
    } else {
      torch::Tensor q = parts[0].transpose(1, 2), k = parts[1].transpose(1, 2), v = parts[2].transpose(1, 2);
      torch::Tensor allowed = torch::ones({t, t}, torch::kBool).tril() & real.view({b, 1, 1, t});  // (B, 1, T, T)
      torch::Tensor p = torch::softmax((torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(hd)))
                                           .masked_fill(~allowed, -1e9), -1);  // (B, H, T, T)
      probs->push_back(p);
      o = torch::matmul(p, v).transpose(1, 2);  // (B, T, H, d)
    }
    return x + out(o.reshape({b, t, kDim}));
  }
  torch::nn::Linear qkv{nullptr}, out{nullptr};
};
TORCH_MODULE(Attention);

struct TinyVlmImpl : torch::nn::Module {
  TinyVlmImpl()
      : image_proj(register_module("image_proj", torch::nn::Linear(kFeatures, kDim))),
        embed(register_module("embed", torch::nn::Embedding(kVocab, kDim))),
        position(register_parameter("position", 0.1 * torch::randn({kTokens, kDim}))),
        head(register_module("head", torch::nn::Linear(kDim, kVocab))) {
    for (int64_t l = 0; l < kLayers; ++l) layers.push_back(register_module("layer" + std::to_string(l), Attention()));
  }
  // image (B, kImage, kFeatures), tokens (B, T) with the image at 1..kImage, real (B, T) -> logits (B, T, V)
  torch::Tensor forward(const torch::Tensor& image, const torch::Tensor& tokens, const torch::Tensor& real,
                        modalign::AlignmentTaps* taps, std::vector<torch::Tensor>* probs = nullptr) {
    torch::Tensor x = torch::cat({embed(tokens.slice(1, 0, 1)), image_proj(image), embed(tokens.slice(1, 1 + kImage))},
                                 1) + position;  // (B, T, D)
    for (int64_t l = 0; l < kLayers; ++l) x = layers[static_cast<size_t>(l)]->forward(x, real, l, taps, probs);
    return head(x);
  }
  torch::nn::Linear image_proj{nullptr};
  torch::nn::Embedding embed{nullptr};
  torch::Tensor position;
  std::vector<Attention> layers;
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(TinyVlm);

// A batch in the conventions of Hugging Face trainers: [bos, image x4, question, filler..., answer] right-padded,
// attention_mask and visual_mask int64 0/1, labels aligned with input_ids (-100 but at the answer). The answer
// names the largest feature of the image patch the question asks about; region_target is that patch.
struct Batch {
  torch::Tensor image, tokens, labels, attention_mask, visual_mask, region_target;
};
Batch make_batch(int64_t b) {
  Batch x;
  x.image = torch::randn({b, kImage, kFeatures});
  torch::Tensor patch = torch::randint(kImage, {b}, torch::kInt64);
  x.tokens = torch::zeros({b, kTokens}, torch::kInt64);
  x.labels = torch::full({b, kTokens}, -100, torch::kInt64);
  x.attention_mask = torch::zeros({b, kTokens}, torch::kInt64);
  x.visual_mask = torch::zeros({b, kTokens}, torch::kInt64);
  x.visual_mask.slice(1, 1, 1 + kImage).fill_(1);
  x.region_target = torch::one_hot(patch, kImage).to(torch::kFloat32);  // (B, kImage)
  for (int64_t i = 0; i < b; ++i) {
    const int64_t p = patch[i].item<int64_t>(), length = i % 2 ? kTokens - 2 : kTokens;  // odd samples padded
    const int64_t answer = 10 + x.image[i][p].argmax().item<int64_t>();
    x.tokens[i][0] = 1, x.tokens[i][1 + kImage] = 20 + p;
    x.tokens[i].slice(0, 2 + kImage, length - 1).fill_(2);
    x.tokens[i][length - 1] = answer, x.labels[i][length - 1] = answer;
    x.attention_mask[i].slice(0, 0, length).fill_(1);
  }
  return x;
}

}  // namespace

int main() {
  torch::manual_seed(0);
  TinyVlm model;

  // 1. The same dual_channel loss through both routes: dense maps (training_loss.cpp) and blockwise taps.
  {
    const Batch x = make_batch(8);
    std::vector<torch::Tensor> probs;
    torch::Tensor logits = model->forward(x.image, x.tokens, x.attention_mask.to(torch::kBool), nullptr, &probs);
    const double dense = training_loss(logits, probs, x.labels, x.attention_mask, x.visual_mask, kLayers).item<double>();
    modalign::DualChannelOptions dual;
    dual.target = 0.8;
    modalign::LossComposer composer({modalign::LossEntry(dual, 0.5)}, kLayers);
    auto forward = [&](modalign::AlignmentTaps& taps) {
      return model->forward(x.image, x.tokens, x.attention_mask.to(torch::kBool), &taps);
    };
    const double tapped = tapped_training_loss(composer, forward, x.labels, x.attention_mask, x.visual_mask, {})
                              .item<double>();
    std::printf("text_ce + 0.5 dual_channel: dense maps %.6f, blockwise taps %.6f\n", dense, tapped);
    if (!(std::abs(dense - tapped) <= 1e-5 * std::abs(dense)))
      return std::fprintf(stderr, "the dense and blockwise routes differ\n"), 1;
  }

  // 2. Training with all four losses on the blockwise route.
  const modalign::LossComposer composer = four_losses(kLayers);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));
  std::map<std::string, std::pair<double, double>> first_last;  // term -> (first, last) unweighted value
  const int steps = 150;
  for (int step = 0; step < steps; ++step) {
    const Batch x = make_batch(16);
    auto forward = [&](modalign::AlignmentTaps& taps) {
      return model->forward(x.image, x.tokens, x.attention_mask.to(torch::kBool), &taps);
    };
    std::vector<modalign::WeightedTerm> terms;
    torch::Tensor loss = tapped_training_loss(composer, forward, x.labels, x.attention_mask, x.visual_mask,
                                              x.region_target, &terms);
    if (!std::isfinite(loss.item<double>())) return std::fprintf(stderr, "non-finite loss at step %d\n", step), 1;
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    std::string line;
    for (const auto& t : terms) {
      const double value = t.term.mean().item<double>();
      if (step == 0) first_last[t.name].first = value;
      first_last[t.name].second = value;
      line += " " + t.name + " " + std::to_string(value).substr(0, 6);
    }
    if (step % 30 == 0 || step == steps - 1) std::printf("step %2d  total %.4f %s\n", step, loss.item<double>(), line.c_str());
  }
  for (const char* name : {"text_ce", "dual_channel", "attention_kl"}) {
    const auto [first, last] = first_last.at(name);
    if (!(last < first)) return std::fprintf(stderr, "%s did not decrease (%.4f -> %.4f)\n", name, first, last), 1;
  }
  std::printf("ok: text_ce, dual_channel and attention_kl decreased with all four losses on\n");
  return 0;
}
