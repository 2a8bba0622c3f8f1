// tests/tools/external_trainer_test.sh checks that the README shows exactly the lines between the markers.
#include "training_loss.h"

// README-BEGIN dense
#include "losses/attention_stats.h"
#include "losses/loss_composer.h"

// logits (B,T,V); labels (B,T) int64 aligned with input_ids, -100 = not supervised (labels your collator already
// shifted: set stats.labels_shifted = true); attention_mask, visual_mask (B,T) bool or 0/1;
// probs_of_layer[l]: your attention probabilities (B,H,T,T) of decoder layer l, rows summing to 1.
torch::Tensor training_loss(const torch::Tensor& logits, const std::vector<torch::Tensor>& probs_of_layer,
                            const torch::Tensor& labels, const torch::Tensor& attention_mask,
                            const torch::Tensor& visual_mask, int64_t num_decoder_layers) {
  modalign::DualChannelOptions dual;  // each loss has its own options type, checked as the YAML reader checks
  dual.target = 0.8;                  // a fixed target mass; default: balanced
  modalign::LossComposer composer({modalign::LossEntry(dual, /*weight=*/0.5)}, num_decoder_layers);
  const std::vector<int64_t> layers = composer.needs().layers;  // the layers the losses read, ascending
  std::vector<torch::Tensor> probs;                              // one map per entry of `layers`, in order
  for (int64_t l : layers) probs.push_back(probs_of_layer[static_cast<size_t>(l)]);
  modalign::AttentionStats stats = modalign::stats_from_probs(layers, probs, labels, attention_mask, visual_mask);
  std::vector<modalign::WeightedTerm> terms = composer.compute(logits, stats);  // text_ce, then each alignment term
  return modalign::LossComposer::total(terms);  // or total(terms, global_counts) across ranks
}
// README-END
