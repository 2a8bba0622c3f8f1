#include "lib/data/hf_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <tuple>
#include <unordered_map>

#include "lib/data/tokenizer.h"
#include "lib/io/files.h"

namespace modalign {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// ---- UTF-8 ----------------------------------------------------------------------------------------

std::string utf8(int32_t cp) {
  utf8proc_uint8_t buf[4];
  return std::string(reinterpret_cast<char*>(buf), static_cast<size_t>(utf8proc_encode_char(cp, buf)));
}

// Bytes of the well-formed sequence starting at `i`, or 0 (and in `bad` the length of the longest
// prefix of a valid sequence there, at least 1: what Rust's from_utf8_lossy replaces by one U+FFFD).
size_t sequence_length(const std::string& s, size_t i, size_t& bad) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t need = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
  bad = 1;
  if (need == 0) return 0;
  for (size_t k = 1; k < need; ++k) {
    if (i + k >= s.size()) return 0;
    const unsigned char d = b(i + k);
    unsigned char lo = 0x80, hi = 0xBF;
    if (k == 1 && c == 0xE0) lo = 0xA0;
    if (k == 1 && c == 0xED) hi = 0x9F;
    if (k == 1 && c == 0xF0) lo = 0x90;
    if (k == 1 && c == 0xF4) hi = 0x8F;
    if (d < lo || d > hi) return 0;
    bad = k + 1;
  }
  return need;
}

bool valid_utf8(const std::string& s) {
  size_t bad = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t n = sequence_length(s, i, bad);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

// Invalid sequences -> U+FFFD, one per maximal invalid prefix.
std::string lossy_utf8(const std::string& s) {
  std::string out;
  size_t bad = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t n = sequence_length(s, i, bad);
    if (n) out.append(s, i, n), i += n;
    else out += "\xEF\xBF\xBD", i += bad;
  }
  return out;
}

int32_t code_point_at(const std::string& s, size_t i, size_t& length) {
  utf8proc_int32_t cp = -1;
  const auto n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                  static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
  length = n > 0 ? static_cast<size_t>(n) : 1;
  return cp;
}

std::vector<std::string> chars_of(const std::string& s) {
  std::vector<std::string> out;
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += n) {
    code_point_at(s, i, n);
    out.push_back(s.substr(i, n));
  }
  return out;
}

bool is_space(int32_t cp) {
  if ((cp >= 9 && cp <= 13) || cp == 0x85) return true;
  const auto cat = utf8proc_category(cp);
  return cat == UTF8PROC_CATEGORY_ZS || cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP;
}

bool is_word_char(int32_t cp) {
  const auto cat = utf8proc_category(cp);
  return cp == '_' || (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) ||
         (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO);
}

// The code point ending just before byte `i` (valid UTF-8), -1 at the start.
int32_t code_point_before(const std::string& s, size_t i) {
  if (i == 0) return -1;
  size_t j = i - 1;
  while (j > 0 && (static_cast<unsigned char>(s[j]) & 0xC0) == 0x80) --j;
  size_t n = 0;
  return code_point_at(s, j, n);
}

// GPT-2's byte <-> character table: printable bytes stand for themselves, the rest for 256 + k.
struct ByteTable {
  std::array<std::string, 256> to_char;
  std::unordered_map<int32_t, unsigned char> to_byte;
  ByteTable() {
    int32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
      const int32_t cp = printable ? b : next++;
      to_char[static_cast<size_t>(b)] = utf8(cp);
      to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

// ---- Regex (PCRE2, UTF + Unicode properties, JIT) ----------------------------------------------------

class Regex {
 public:
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    int err = 0;
    PCRE2_SIZE offset = 0;
    const uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &err, &offset, nullptr);
    if (!code_) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(err, message, sizeof message);
      throw TokenizerError(where + ": regex /" + pattern + "/ does not compile at offset " + std::to_string(offset) +
                           ": " + reinterpret_cast<char*>(message));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // falls back to the interpreter when JIT is unavailable
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // [begin, end) of every non-empty match in `s` (valid UTF-8), left to right.
  std::vector<std::pair<size_t, size_t>> find_all(const std::string& s) const {
    std::vector<std::pair<size_t, size_t>> out;
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(code_, nullptr);
    size_t at = 0, step = 0;
    while (at <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), at, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc < 0) {
        pcre2_match_data_free(md);
        if (rc == PCRE2_ERROR_NOMATCH) return out;
        throw TokenizerError("regex match failed with PCRE2 error " + std::to_string(rc));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      if (ov[1] > ov[0]) {
        out.emplace_back(ov[0], ov[1]);
        at = ov[1];
      } else {  // an empty match: move on one character
        if (ov[0] >= s.size()) break;
        code_point_at(s, ov[0], step);
        at = ov[0] + step;
      }
    }
    pcre2_match_data_free(md);
    return out;
  }

 private:
  pcre2_code* code_ = nullptr;
};

// `pattern: {"Regex": "..."}` or `{"String": "..."}` (a literal).
std::unique_ptr<Regex> pattern_of(const json& j, const std::string& where) {
  const json& p = j.at("pattern");
  if (p.contains("Regex")) return std::make_unique<Regex>(p["Regex"].get<std::string>(), false, where);
  if (p.contains("String")) return std::make_unique<Regex>(p["String"].get<std::string>(), true, where);
  throw TokenizerError(where + ": pattern is neither {\"Regex\": ...} nor {\"String\": ...}");
}

std::string replace_all(const Regex& re, const std::string& s, const std::string& with) {
  std::string out;
  size_t last = 0;
  for (auto [b, e] : re.find_all(s)) out.append(s, last, b - last).append(with), last = e;
  return out.append(s, last, std::string::npos);
}

// ---- Splitting with Hugging Face's SplitDelimiterBehavior ------------------------------------------

enum class Behavior { Isolated, Removed, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior behavior_of(const std::string& name, const std::string& where) {
  if (name == "Isolated") return Behavior::Isolated;
  if (name == "Removed") return Behavior::Removed;
  if (name == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (name == "MergedWithNext") return Behavior::MergedWithNext;
  if (name == "Contiguous") return Behavior::Contiguous;
  throw TokenizerError(where + ": unsupported split behavior '" + name + "'");
}

// The non-empty pieces of `s` cut at `matches`, as Hugging Face's NormalizedString::split does.
std::vector<std::pair<size_t, size_t>> split_at(const std::string& s, const std::vector<std::pair<size_t, size_t>>& matches,
                                                Behavior behavior, bool invert) {
  struct Region {
    size_t b, e;
    bool match;
  };
  std::vector<Region> regions;
  size_t last = 0;
  for (auto [b, e] : matches) {
    if (b > last) regions.push_back({last, b, invert});
    regions.push_back({b, e, !invert});
    last = e;
  }
  if (last < s.size()) regions.push_back({last, s.size(), invert});
  std::vector<Region> out;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::Isolated:
      out = regions;
      break;
    case Behavior::Removed:
      for (const auto& r : regions)
        if (!r.match) out.push_back(r);
      break;
    case Behavior::MergedWithPrevious:
      for (const auto& r : regions) {
        if (r.match && !previous_match && !out.empty()) out.back().e = r.e;
        else out.push_back(r);
        previous_match = r.match;
      }
      break;
    case Behavior::MergedWithNext:
      for (auto it = regions.rbegin(); it != regions.rend(); ++it) {
        if (it->match && !previous_match && !out.empty()) out.back().b = it->b;
        else out.push_back(*it);
        previous_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case Behavior::Contiguous:
      for (const auto& r : regions) {
        if (r.match == previous_match && !out.empty()) out.back().e = r.e;
        else out.push_back(r);
        previous_match = r.match;
      }
      break;
  }
  std::vector<std::pair<size_t, size_t>> pieces;
  for (const auto& r : out)
    if (r.e > r.b) pieces.emplace_back(r.b, r.e);
  return pieces;
}

const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class PrependScheme { Always, First, Never };

PrependScheme prepend_scheme_of(const json& j, const std::string& where) {
  if (j.contains("prepend_scheme")) {
    const std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return PrependScheme::Always;
    if (s == "first") return PrependScheme::First;
    if (s == "never") return PrependScheme::Never;
    throw TokenizerError(where + ": unknown prepend_scheme '" + s + "'");
  }
  return j.value("add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;  // older files
}

std::string replacement_of(const json& j) {
  if (j.contains("replacement")) return j["replacement"].get<std::string>();
  return j.value("str_rep", std::string("\xE2\x96\x81"));  // "▁"
}

// ---- Components ------------------------------------------------------------------------------------

struct Normalizer {
  enum class Kind { Nfc, Nfd, Nfkc, Nfkd, Replace, Prepend } kind;
  std::unique_ptr<Regex> pattern;  // Replace
  std::string text;                // Replace: the replacement; Prepend: the prefix
};

struct PreTokenizer {
  enum class Kind { Split, ByteLevel, Metaspace } kind;
  std::unique_ptr<Regex> regex;  // Split; ByteLevel with use_regex; Metaspace: the replacement
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
  std::string replacement;        // Metaspace
  PrependScheme prepend = PrependScheme::Always;
  bool split = true;
};

struct DecodeStep {
  enum class Kind { ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip } kind;
  std::unique_ptr<Regex> pattern;  // Replace
  std::string text;                // Replace: the replacement; Metaspace: the replacement char; Strip: content
  PrependScheme prepend = PrependScheme::Always;
  size_t start = 0, stop = 0;  // Strip
};

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
};

// A piece of the input on its way to the model: text, or an added token's id; `at_start` when it
// begins the input (Metaspace's prepend_scheme "first").
struct Chunk {
  std::string text;
  int32_t id = -1;
  bool at_start = false;
};

template <class T>
T field(const json& j, const char* key, T fallback) {
  return j.contains(key) && !j[key].is_null() ? j[key].get<T>() : fallback;
}

}  // namespace

struct HfTokenizer::Impl {
  std::string path;
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pre_tokenizers;
  std::vector<DecodeStep> decoders;
  std::vector<AddedToken> added;
  std::vector<int32_t> template_before, template_after;  // post-processor ids around the sequence

  std::unordered_map<std::string, int32_t> vocab;        // the model's vocabulary
  std::unordered_map<std::string, int32_t> added_ids;    // added tokens' content -> id
  std::array<std::array<bool, 256>, 2> added_first{};    // [normalized][byte]: some added token starts so
  std::vector<std::string> tokens;                 // id -> string
  std::vector<bool> special;                       // id -> a special added token
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, merged id)
  std::array<int32_t, 256> byte_ids{};  // byte_fallback's <0xXX> ids, -1 where absent
  bool byte_fallback = false, ignore_merges = false, fuse_unk = false;
  int32_t unk = -1, bos = -1, eos = -1, pad = -1;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;  // pre-tokenised word -> ids

  [[noreturn]] void fail(const std::string& what) const { throw TokenizerError(path + ": " + what); }

  // A JSON integer in [lo, hi]; anything else (a float, a string, out of range) names `what`. nlohmann's
  // get<int>() on a float too large for int is undefined behaviour (found by tests/fuzz/tokenizer_fuzz).
  // `what` + `quoted` ("model: the id of" + "'z'") is put together only for the message.
  int32_t integer(const json& j, const char* what, const std::string& quoted = "", int64_t lo = 0, int64_t hi = INT32_MAX) const {
    if (!j.is_number_integer() || (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(hi)) ||
        j.get<int64_t>() < lo || j.get<int64_t>() > hi)
      fail(std::string(what) + (quoted.empty() ? "" : " '" + quoted + "'") + " must be an integer in [" + std::to_string(lo) +
           ", " + std::to_string(hi) + "], not " + j.dump());
    return static_cast<int32_t>(j.get<int64_t>());
  }

  void load_normalizer(const json& j) {
    if (j.is_null()) return;
    const std::string type = j.at("type").get<std::string>(), where = path + ": normalizer " + type;
    if (type == "Sequence") {
      for (const json& n : j.at("normalizers")) load_normalizer(n);
    } else if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      normalizers.push_back({type == "NFC" ? Normalizer::Kind::Nfc : type == "NFD" ? Normalizer::Kind::Nfd
                             : type == "NFKC" ? Normalizer::Kind::Nfkc : Normalizer::Kind::Nfkd, nullptr, ""});
    } else if (type == "Replace") {
      normalizers.push_back({Normalizer::Kind::Replace, pattern_of(j, where), j.at("content").get<std::string>()});
    } else if (type == "Prepend") {
      normalizers.push_back({Normalizer::Kind::Prepend, nullptr, j.at("prepend").get<std::string>()});
    } else {
      fail("unsupported normalizer '" + type + "' (supported: NFC, NFD, NFKC, NFKD, Replace, Prepend, Sequence)");
    }
  }

  void load_pre_tokenizer(const json& j) {
    if (j.is_null()) return;
    const std::string type = j.at("type").get<std::string>(), where = path + ": pre_tokenizer " + type;
    PreTokenizer p;
    if (type == "Sequence") {
      for (const json& n : j.at("pretokenizers")) load_pre_tokenizer(n);
      return;
    } else if (type == "Split") {
      p.kind = PreTokenizer::Kind::Split;
      p.regex = pattern_of(j, where);
      p.behavior = behavior_of(j.at("behavior").get<std::string>(), where);
      p.invert = field(j, "invert", false);
    } else if (type == "ByteLevel") {
      p.kind = PreTokenizer::Kind::ByteLevel;
      p.add_prefix_space = field(j, "add_prefix_space", true);
      if (field(j, "use_regex", true)) p.regex = std::make_unique<Regex>(kGpt2Pattern, false, where);
    } else if (type == "Metaspace") {
      p.kind = PreTokenizer::Kind::Metaspace;
      p.replacement = replacement_of(j);
      p.prepend = prepend_scheme_of(j, where);
      p.split = field(j, "split", true);
      p.regex = std::make_unique<Regex>(p.replacement, true, where);
    } else {
      fail("unsupported pre_tokenizer '" + type + "' (supported: Split, ByteLevel, Metaspace, Sequence)");
    }
    pre_tokenizers.push_back(std::move(p));
  }

  void load_decoder(const json& j) {
    if (j.is_null()) return;
    const std::string type = j.at("type").get<std::string>(), where = path + ": decoder " + type;
    DecodeStep d;
    if (type == "Sequence") {
      for (const json& n : j.at("decoders")) load_decoder(n);
      return;
    } else if (type == "ByteLevel") {
      d.kind = DecodeStep::Kind::ByteLevel;
    } else if (type == "Metaspace") {
      d.kind = DecodeStep::Kind::Metaspace;
      d.text = replacement_of(j);
      d.prepend = prepend_scheme_of(j, where);
    } else if (type == "Replace") {
      d.kind = DecodeStep::Kind::Replace;
      d.pattern = pattern_of(j, where);
      d.text = j.at("content").get<std::string>();
    } else if (type == "ByteFallback") {
      d.kind = DecodeStep::Kind::ByteFallback;
    } else if (type == "Fuse") {
      d.kind = DecodeStep::Kind::Fuse;
    } else if (type == "Strip") {
      d.kind = DecodeStep::Kind::Strip;
      d.text = j.at("content").get<std::string>();
      d.start = static_cast<size_t>(integer(j.at("start"), "decoder Strip: start"));
      d.stop = static_cast<size_t>(integer(j.at("stop"), "decoder Strip: stop"));
    } else {
      fail("unsupported decoder '" + type + "' (supported: ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence)");
    }
    decoders.push_back(std::move(d));
  }

  void load_post_processor(const json& j) {
    if (j.is_null()) return;
    const std::string type = j.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const json& n : j.at("processors")) load_post_processor(n);
    } else if (type == "TemplateProcessing") {
      bool after = false;
      for (const json& item : j.at("single")) {
        if (item.contains("Sequence")) {
          if (after) fail("post_processor TemplateProcessing: more than one sequence in `single`");
          after = true;
          continue;
        }
        const std::string name = item.at("SpecialToken").at("id").get<std::string>();
        for (const json& id : j.at("special_tokens").at(name).at("ids")) {
          const int32_t value = integer(id, "post_processor: the id of", name);
          if (static_cast<size_t>(value) >= tokens.size() || tokens[static_cast<size_t>(value)].empty())
            fail("post_processor: " + name + " has id " + std::to_string(value) + ", which names no token");
          (after ? template_after : template_before).push_back(value);
        }
      }
    } else if (type != "ByteLevel") {  // ByteLevel only trims offsets
      fail("unsupported post_processor '" + type + "' (supported: TemplateProcessing, ByteLevel, Sequence)");
    }
  }

  void set_token(int32_t id, const std::string& text) {
    constexpr int32_t kMaxId = 1 << 22;  // real vocabularies stay below 300k; the table is indexed by id
    if (id < 0 || id >= kMaxId) fail("token id " + std::to_string(id) + " of '" + text + "' is outside [0, 2^22)");
    if (static_cast<size_t>(id) >= tokens.size()) tokens.resize(static_cast<size_t>(id) + 1), special.resize(tokens.size());
    tokens[static_cast<size_t>(id)] = text;
  }

  void load_model(const json& m) {
    const std::string type = m.value("type", std::string("BPE"));
    if (type != "BPE") fail("unsupported model '" + type + "' (supported: BPE)");
    if (!field<std::string>(m, "continuing_subword_prefix", "").empty() || !field<std::string>(m, "end_of_word_suffix", "").empty())
      fail("model: continuing_subword_prefix / end_of_word_suffix are not supported");
    if (field(m, "dropout", 0.0) != 0.0) fail("model: BPE dropout is a training-time option and is not supported");
    byte_fallback = field(m, "byte_fallback", false);
    ignore_merges = field(m, "ignore_merges", false);
    fuse_unk = field(m, "fuse_unk", false);
    const json& entries = m.at("vocab");
    vocab.reserve(entries.size());
    for (auto it = entries.begin(); it != entries.end(); ++it) {
      const int32_t id = integer(it.value(), "model: the id of", it.key());
      vocab.emplace(it.key(), id);
      set_token(id, it.key());
    }
    const std::string unk_token = field<std::string>(m, "unk_token", "");
    if (!unk_token.empty()) {
      auto it = vocab.find(unk_token);
      if (it == vocab.end()) fail("model: unk_token '" + unk_token + "' is not in the vocabulary");
      unk = it->second;
    }
    byte_ids.fill(-1);
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      auto it = vocab.find(name);
      if (it != vocab.end()) byte_ids[static_cast<size_t>(b)] = it->second;
    }
    int32_t rank = 0;
    merges.reserve(m.at("merges").size());
    for (const json& merge : m.at("merges")) {
      std::string left, right;
      if (merge.is_array()) {
        left = merge.at(0).get<std::string>(), right = merge.at(1).get<std::string>();
      } else {
        const std::string s = merge.get<std::string>();
        const size_t space = s.find(' ', 1);
        if (space == std::string::npos) fail("model: merge '" + s + "' is not two tokens separated by a space");
        left = s.substr(0, space), right = s.substr(space + 1);
      }
      auto l = vocab.find(left), r = vocab.find(right), merged = vocab.find(left + right);
      if (l == vocab.end() || r == vocab.end() || merged == vocab.end())
        fail("model: merge " + std::to_string(rank) + " ('" + left + "' '" + right + "') uses a token missing from the vocabulary");
      merges.emplace(key(l->second, r->second), std::make_pair(rank++, merged->second));
    }
  }

  void load_added(const json& list) {
    for (const json& a : list) {
      AddedToken t;
      t.content = a.at("content").get<std::string>();
      t.id = integer(a.at("id"), "added_tokens: id");
      t.special = field(a, "special", false);
      t.lstrip = field(a, "lstrip", false);
      t.rstrip = field(a, "rstrip", false);
      t.single_word = field(a, "single_word", false);
      t.normalized = field(a, "normalized", !t.special);
      if (t.content.empty()) fail("added token " + std::to_string(t.id) + " has empty content");
      set_token(t.id, t.content);
      special[static_cast<size_t>(t.id)] = t.special;
      added_ids[t.content] = t.id;
      added_first[t.normalized][static_cast<unsigned char>(t.content[0])] = true;
      added.push_back(t);
    }
  }

  // bos_token etc. from tokenizer_config.json: a string, {"content": ...} or null.
  void load_config(const std::string& config_path) {
    const json c = parse(config_path, 16 * kMiB);
    auto named = [&](const char* key) -> int32_t {
      if (!c.contains(key) || c[key].is_null()) return -1;
      const std::string name = c[key].is_object() ? c[key].at("content").get<std::string>() : c[key].get<std::string>();
      const int32_t id = id_of(name);
      if (id < 0) throw TokenizerError(config_path + ": " + key + " '" + name + "' is not a token of " + path);
      return id;
    };
    bos = named("bos_token"), eos = named("eos_token"), pad = named("pad_token");
    if (unk < 0) unk = named("unk_token");
  }

  static json parse(const std::string& file, uint64_t limit) {
    const std::string text = read_regular_file<TokenizerError>(file, limit, "cannot read the tokenizer");
    try {
      return json::parse(text);
    } catch (const json::exception& e) {
      throw TokenizerError(file + ": not valid JSON: " + e.what());
    }
  }

  int32_t id_of(const std::string& token) const {
    auto a = added_ids.find(token);
    if (a != added_ids.end()) return a->second;
    auto v = vocab.find(token);
    return v == vocab.end() ? -1 : v->second;
  }

  static uint64_t key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  // ---- encoding ----

  // Cuts `text` at the added tokens whose `normalized` flag is `normalized` (leftmost, then longest).
  std::vector<Chunk> split_added(const std::string& text, bool normalized, bool at_start) const {
    std::vector<Chunk> out;
    size_t seg = 0, pos = 0;
    while (pos < text.size()) {
      if (!added_first[normalized][static_cast<unsigned char>(text[pos])]) {
        ++pos;
        continue;
      }
      const AddedToken* best = nullptr;
      for (const AddedToken& t : added) {
        if (t.normalized != normalized || (best && t.content.size() <= best->content.size())) continue;
        if (text.compare(pos, t.content.size(), t.content) != 0) continue;
        if (t.single_word) {
          size_t n = 0;
          const size_t end = pos + t.content.size();
          const int32_t before = code_point_before(text, pos), after = end < text.size() ? code_point_at(text, end, n) : -1;
          if ((before >= 0 && is_word_char(before)) || (after >= 0 && is_word_char(after))) continue;
        }
        best = &t;
      }
      if (!best) {
        ++pos;
        continue;
      }
      size_t b = pos, e = pos + best->content.size(), n = 0;
      if (best->lstrip)
        for (int32_t cp; b > seg && (cp = code_point_before(text, b)) >= 0 && is_space(cp);) b -= utf8(cp).size();
      if (best->rstrip)
        while (e < text.size() && is_space(code_point_at(text, e, n))) e += n;
      if (b > seg) out.push_back({text.substr(seg, b - seg), -1, at_start && seg == 0});
      out.push_back({"", best->id, false});
      seg = pos = e;
    }
    if (seg < text.size()) out.push_back({text.substr(seg), -1, at_start && seg == 0});
    return out;
  }

  std::string normalize(std::string s) const {
    for (const Normalizer& n : normalizers) {
      switch (n.kind) {
        case Normalizer::Kind::Replace:
          s = replace_all(*n.pattern, s, n.text);
          break;
        case Normalizer::Kind::Prepend:
          if (!s.empty()) s = n.text + s;
          break;
        default: {
          const int options = UTF8PROC_STABLE | (n.kind == Normalizer::Kind::Nfc || n.kind == Normalizer::Kind::Nfkc
                                                     ? UTF8PROC_COMPOSE : UTF8PROC_DECOMPOSE) |
                              (n.kind == Normalizer::Kind::Nfkc || n.kind == Normalizer::Kind::Nfkd ? UTF8PROC_COMPAT : 0);
          utf8proc_uint8_t* result = nullptr;
          const auto len = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                        static_cast<utf8proc_ssize_t>(s.size()), &result, static_cast<utf8proc_option_t>(options));
          if (len < 0) throw TokenizerError(path + ": normalisation failed: " + utf8proc_errmsg(len));
          s.assign(reinterpret_cast<char*>(result), static_cast<size_t>(len));
          std::free(result);
        }
      }
    }
    return s;
  }

  std::vector<Chunk> pre_tokenize(Chunk whole) const {
    std::vector<Chunk> pieces{std::move(whole)};
    for (const PreTokenizer& p : pre_tokenizers) {
      std::vector<Chunk> next;
      for (Chunk& c : pieces) {
        if (p.kind == PreTokenizer::Kind::Metaspace) {
          std::string s;
          for (const std::string& ch : chars_of(c.text)) s += ch == " " ? p.replacement : ch;
          const bool prepend = p.prepend == PrependScheme::Always || (p.prepend == PrependScheme::First && c.at_start);
          if (prepend && s.compare(0, p.replacement.size(), p.replacement) != 0) s = p.replacement + s;
          c.text = std::move(s);
          if (!p.split) {
            next.push_back(std::move(c));
            continue;
          }
          for (auto [b, e] : split_at(c.text, p.regex->find_all(c.text), Behavior::MergedWithNext, false))
            next.push_back({c.text.substr(b, e - b), -1, c.at_start && b == 0});
          continue;
        }
        if (p.kind == PreTokenizer::Kind::ByteLevel && p.add_prefix_space && c.text.compare(0, 1, " ") != 0) c.text = " " + c.text;
        std::vector<std::pair<size_t, size_t>> parts{{0, c.text.size()}};
        if (p.regex)
          parts = split_at(c.text, p.regex->find_all(c.text), p.kind == PreTokenizer::Kind::Split ? p.behavior : Behavior::Isolated,
                           p.kind == PreTokenizer::Kind::Split && p.invert);
        for (auto [b, e] : parts) {
          std::string piece = c.text.substr(b, e - b);
          if (p.kind == PreTokenizer::Kind::ByteLevel) {
            std::string mapped;
            for (unsigned char byte : piece) mapped += byte_table().to_char[byte];
            piece = std::move(mapped);
          }
          next.push_back({std::move(piece), -1, c.at_start && b == 0});
        }
      }
      pieces = std::move(next);
    }
    return pieces;
  }

  // One pre-tokenised word -> ids: characters (byte_fallback or unk for unknown ones), then merges,
  // lowest rank first and leftmost among equals, as Hugging Face's Word::merge_all.
  std::vector<int32_t> bpe(const std::string& word) const {
    if (ignore_merges) {
      auto it = vocab.find(word);
      if (it != vocab.end()) return {it->second};
    }
    std::vector<int32_t> sym;
    for (const std::string& ch : chars_of(word)) {
      auto it = vocab.find(ch);
      if (it != vocab.end()) {
        sym.push_back(it->second);
        continue;
      }
      bool all_bytes = byte_fallback;
      for (unsigned char b : ch) all_bytes = all_bytes && byte_ids[b] >= 0;
      if (all_bytes) {
        for (unsigned char b : ch) sym.push_back(byte_ids[b]);
      } else if (unk >= 0 && !(fuse_unk && !sym.empty() && sym.back() == unk)) {
        sym.push_back(unk);
      }  // no unk_token: Hugging Face drops the character
    }
    // Linked symbols and a queue of (rank, position, merged id); stale entries are skipped when popped.
    const int n = static_cast<int>(sym.size());
    std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
    std::vector<bool> alive(static_cast<size_t>(n), true);
    for (int i = 0; i < n; ++i) prev[static_cast<size_t>(i)] = i - 1, next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
    using Candidate = std::tuple<int32_t, int, int32_t>;
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    auto consider = [&](int i) {
      if (i < 0 || next[static_cast<size_t>(i)] < 0) return;
      auto it = merges.find(key(sym[static_cast<size_t>(i)], sym[static_cast<size_t>(next[static_cast<size_t>(i)])]));
      if (it != merges.end()) queue.emplace(it->second.first, i, it->second.second);
    };
    for (int i = 0; i + 1 < n; ++i) consider(i);
    while (!queue.empty()) {
      auto [rank, i, merged] = queue.top();
      queue.pop();
      const auto ui = static_cast<size_t>(i);
      if (!alive[ui] || next[ui] < 0) continue;
      auto it = merges.find(key(sym[ui], sym[static_cast<size_t>(next[ui])]));
      if (it == merges.end() || it->second.second != merged || it->second.first != rank) continue;
      const int j = next[ui];
      sym[ui] = merged;
      alive[static_cast<size_t>(j)] = false;
      next[ui] = next[static_cast<size_t>(j)];
      if (next[ui] >= 0) prev[static_cast<size_t>(next[ui])] = i;
      consider(prev[ui]);
      consider(i);
    }
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i)
      if (alive[static_cast<size_t>(i)]) out.push_back(sym[static_cast<size_t>(i)]);
    return out;
  }

  std::vector<int32_t> bpe_cached(const std::string& word) const {
    {
      std::lock_guard<std::mutex> lock(cache_mutex);
      auto it = cache.find(word);
      if (it != cache.end()) return it->second;
    }
    std::vector<int32_t> ids = bpe(word);
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() > 200000) cache.clear();
    cache.emplace(word, ids);
    return ids;
  }

  // ---- decoding ----

  std::vector<std::string> run_decoders(std::vector<std::string> toks) const {
    for (const DecodeStep& d : decoders) {
      switch (d.kind) {
        case DecodeStep::Kind::ByteLevel: {
          std::string bytes;
          for (const std::string& t : toks)
            for (size_t i = 0, n = 0; i < t.size(); i += n) {
              const int32_t cp = code_point_at(t, i, n);
              auto it = byte_table().to_byte.find(cp);
              if (it != byte_table().to_byte.end()) bytes += static_cast<char>(it->second);
              else bytes.append(t, i, n);
            }
          toks = {bytes};
          break;
        }
        case DecodeStep::Kind::Metaspace:
          for (size_t i = 0; i < toks.size(); ++i) {
            std::string s;
            for (const std::string& ch : chars_of(toks[i])) s += ch == d.text ? " " : ch;
            if (i == 0 && d.prepend != PrependScheme::Never && !s.empty() && s[0] == ' ') s.erase(0, 1);
            toks[i] = std::move(s);
          }
          break;
        case DecodeStep::Kind::Replace:
          for (std::string& t : toks) t = replace_all(*d.pattern, t, d.text);
          break;
        case DecodeStep::Kind::ByteFallback: {
          std::vector<std::string> out;
          std::string pending;
          size_t pending_count = 0;
          auto flush = [&] {
            if (pending_count == 0) return;
            if (valid_utf8(pending)) out.push_back(pending);
            else
              for (size_t k = 0; k < pending_count; ++k) out.push_back("\xEF\xBF\xBD");
            pending.clear(), pending_count = 0;
          };
          for (const std::string& t : toks) {
            unsigned value = 0;
            if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::sscanf(t.c_str() + 3, "%2x", &value) == 1) {
              pending += static_cast<char>(value), ++pending_count;
            } else {
              flush();
              out.push_back(t);
            }
          }
          flush();
          toks = std::move(out);
          break;
        }
        case DecodeStep::Kind::Fuse: {
          std::string all;
          for (const std::string& t : toks) all += t;
          toks = {all};
          break;
        }
        case DecodeStep::Kind::Strip:
          for (std::string& t : toks) {
            for (size_t k = 0; k < d.start && t.compare(0, d.text.size(), d.text) == 0; ++k) t.erase(0, d.text.size());
            for (size_t k = 0; k < d.stop && t.size() >= d.text.size() &&
                               t.compare(t.size() - d.text.size(), d.text.size(), d.text) == 0; ++k)
              t.erase(t.size() - d.text.size());
          }
          break;
      }
    }
    return toks;
  }
};

HfTokenizer::HfTokenizer(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& t = *impl_;
  t.path = path;
  const json j = Impl::parse(path, 1024 * kMiB);
  try {
    if (!j.is_object() || !j.contains("model")) t.fail("not a tokenizer.json (no `model`)");
    t.load_model(j["model"]);
    t.load_added(j.value("added_tokens", json::array()));
    t.load_normalizer(j.value("normalizer", json()));
    t.load_pre_tokenizer(j.value("pre_tokenizer", json()));
    t.load_decoder(j.value("decoder", json()));
    t.load_post_processor(j.value("post_processor", json()));
  } catch (const json::exception& e) {
    t.fail(std::string("unexpected content: ") + e.what());
  }
  const fs::path config = fs::path(path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (fs::exists(config, ec)) {
    try {
      t.load_config(config.string());
    } catch (const json::exception& e) {
      throw TokenizerError(config.string() + ": unexpected content: " + e.what());
    }
  }
}

HfTokenizer::~HfTokenizer() = default;

std::vector<int64_t> HfTokenizer::encode(const std::string& text, bool add_special) const {
  const Impl& t = *impl_;
  if (!valid_utf8(text)) throw TokenizerError(t.path + ": the text to encode is not valid UTF-8: '" + lossy_utf8(text.substr(0, 60)) + "'");
  std::vector<int64_t> ids;
  if (add_special) ids.assign(t.template_before.begin(), t.template_before.end());
  for (const Chunk& raw : t.split_added(text, false, true)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    for (const Chunk& part : t.split_added(t.normalize(raw.text), true, raw.at_start)) {
      if (part.id >= 0) {
        ids.push_back(part.id);
        continue;
      }
      for (const Chunk& word : t.pre_tokenize(part))
        for (int32_t id : t.bpe_cached(word.text)) ids.push_back(id);
    }
  }
  if (add_special) ids.insert(ids.end(), t.template_after.begin(), t.template_after.end());
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  std::vector<std::string> toks;
  for (int64_t id : ids) {
    if (skip_special && id >= 0 && id < vocab_size() && impl_->special[static_cast<size_t>(id)]) continue;
    toks.push_back(id_to_token(id));
  }
  const bool plain = impl_->decoders.empty();  // Hugging Face joins undecoded tokens with spaces
  std::string out;
  for (const std::string& s : impl_->run_decoders(std::move(toks))) out += (plain && !out.empty() ? " " : "") + s;
  return lossy_utf8(out);
}

bool HfTokenizer::has_id(int64_t id) const {
  return id >= 0 && id < vocab_size() && !impl_->tokens[static_cast<size_t>(id)].empty();
}

std::string HfTokenizer::id_to_token(int64_t id) const {
  if (!has_id(id))
    throw TokenizerError(impl_->path + ": no token has id " + std::to_string(id));
  return impl_->tokens[static_cast<size_t>(id)];
}

int64_t HfTokenizer::token_to_id(const std::string& token) const { return impl_->id_of(token); }

int64_t HfTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->tokens.size()); }
int64_t HfTokenizer::bos_id() const { return impl_->bos; }
int64_t HfTokenizer::eos_id() const { return impl_->eos; }
int64_t HfTokenizer::pad_id() const { return impl_->pad; }
int64_t HfTokenizer::unk_id() const { return impl_->unk; }

}  // namespace modalign
