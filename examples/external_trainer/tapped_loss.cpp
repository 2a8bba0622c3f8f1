// tests/tools/external_trainer_test.sh checks that the README shows exactly the lines between the markers.
#include "tapped_loss.h"

// README-BEGIN tapped
#include "lib/model/alignment_taps.h"  // modalign::attention: find_package(modalign COMPONENTS attention)
#include "losses/loss_composer.h"

// The four attention losses, each configured through its own options type (defaults: `modalign config --defaults`).
modalign::LossComposer four_losses(int64_t num_decoder_layers) {
  modalign::DualChannelOptions dual;      // response->image and image->image mass, balanced target
  modalign::LayerDecayOptions decay;      // no layer's response->image mass below the first tapped layer's
  modalign::SinkSuppressionOptions sink;  // response mass on the first token (an attention sink), pushed down
  modalign::AttentionKlOptions kl;        // response attention over image tokens, pulled towards region_target
  kl.layers = {"second_half"};            // where the answer reads the image (also: all, first_half, "16-31", "3,5")
  return modalign::LossComposer({modalign::LossEntry(dual, 0.5), modalign::LossEntry(decay, 0.5),
                                 modalign::LossEntry(sink, 0.1), modalign::LossEntry(kl, 0.5)},
                                num_decoder_layers);
}

// `forward(taps)` runs your model, each attention layer l returning taps.attend(l, q, k, v) (q (B,T,H,d) after
// RoPE, k and v (B,T,G,d)): blockwise, no T x T map is kept. labels (B,T) int64 aligned with input_ids,
// -100 = not supervised (labels your collator already shifted: set stats.labels_shifted = true); attention_mask,
// visual_mask (B,T) bool or 0/1 (true = real / image token); region_target (B, image tokens): each sample's target
// distribution over its image tokens in their order, a row of zeros = none.
torch::Tensor tapped_training_loss(const modalign::LossComposer& composer,
                                   const std::function<torch::Tensor(modalign::AlignmentTaps&)>& forward,
                                   const torch::Tensor& labels, const torch::Tensor& attention_mask,
                                   const torch::Tensor& visual_mask, const torch::Tensor& region_target,
                                   std::vector<modalign::WeightedTerm>* terms) {
  modalign::AttentionStats stats = modalign::batch_stats(labels, attention_mask, visual_mask);  // checked
  stats.region_target = region_target;
  modalign::AlignmentTaps taps(composer, stats);  // sets stats.layers, the layers the losses read
  torch::Tensor logits = forward(taps);           // (B,T,V); each tapped layer's attention mass lands in stats
  std::vector<modalign::WeightedTerm> all = composer.compute(logits, stats);  // text_ce, then each loss
  if (terms) *terms = all;
  return modalign::LossComposer::total(all);
}
// README-END
