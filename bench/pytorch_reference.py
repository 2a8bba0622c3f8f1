#!/usr/bin/python3
"""The PyTorch-Python peer of modalign's step benchmark: the same LLaVA or Qwen2.5-VL architecture, weights, batches,
optimizer and losses, written plainly as a PyTorch user would (the way LLaVA's train.py and Hugging Face
modelling code do it: eager attention, attention maps for the aligned layers, logits and CE at every
position, the whole CLIP encoder run with its hidden states collected).

    /usr/bin/python3 bench/pytorch_reference.py DIR --warmup W --steps N [--bf16]

--bf16 runs forward and losses under torch.autocast("cpu", dtype=torch.bfloat16), the way Hugging Face's Trainer
does with bf16=True: float32 weights and AdamW, bf16 matmuls, float32 softmax and losses.

DIR comes from `step_bench export` (weights.safetensors, batches.safetensors, spec.json). Prints one JSON
line like `step_bench train`: per-step ms and tokens of the N timed steps, first and last loss, peak RSS.
"""
import argparse
import contextlib
import json
import math
import resource
import struct
import time

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = bytearray(data[8 + n:])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        dtype = DTYPES[entry["dtype"]]
        t = torch.frombuffer(body, dtype=dtype, count=(end - begin) // torch.tensor([], dtype=dtype).element_size(),
                             offset=begin) if end > begin else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(entry["shape"]).clone()
    return out


# ---- vision tower (CLIP) -------------------------------------------------------------------------------
class ClipAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        n, t, d = x.shape
        hd = d // self.heads
        q, k, v = (p(x).view(n, t, self.heads, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(n, t, d))


class ClipMlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1 = nn.Linear(c["hidden_size"], c["intermediate_size"])
        self.fc2 = nn.Linear(c["intermediate_size"], c["hidden_size"])

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick_gelu


class ClipLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.self_attn = ClipAttention(c)
        self.layer_norm2 = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.mlp = ClipMlp(c)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, p = c["hidden_size"], c["patch_size"]
        self.patch_embedding = nn.Conv2d(c["num_channels"], d, p, stride=p, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.position_embedding = nn.Embedding((c["image_size"] // p) ** 2 + 1, d)

    def forward(self, pixels):
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], 1) + self.position_embedding.weight


class ClipVisionModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = ClipEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(ClipLayer(c) for _ in range(c["num_hidden_layers"]))
        self.post_layernorm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, pixels):  # all hidden states, as output_hidden_states=True
        h = self.pre_layrnorm(self.embeddings(pixels))
        states = [h]
        for layer in self.encoder.layers:
            h = layer(h)
            states.append(h)
        return states


class VisionTower(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.vision_model = ClipVisionModel(c)


# ---- language model (LLaMA) ----------------------------------------------------------------------------
class RmsNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


class LlamaAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.heads, self.kv_heads = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = d // self.heads
        self.q_proj = nn.Linear(d, self.heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(self.heads * self.hd, d, bias=False)

    def forward(self, x, cos, sin, allowed):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(self.heads // self.kv_heads, 1)
        v = v.repeat_interleave(self.heads // self.kv_heads, 1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.hd)
        # float32 probabilities under autocast too (as transformers' eager attention), the maps the losses read
        attn = torch.softmax(scores.masked_fill(~allowed, torch.finfo(scores.dtype).min), dim=-1, dtype=torch.float32)
        out = self.o_proj((attn.to(v.dtype) @ v).transpose(1, 2).reshape(b, t, -1))
        return out, attn


class LlamaMlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj, self.up_proj = nn.Linear(d, i, bias=False), nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RmsNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = LlamaAttention(c)
        self.post_attention_layernorm = RmsNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = LlamaMlp(c)

    def forward(self, x, cos, sin, allowed):
        a, attn = self.self_attn(self.input_layernorm(x), cos, sin, allowed)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), attn


class LanguageModel(nn.Module):
    def __init__(self, c, layer=LlamaLayer):
        super().__init__()
        self.c = c
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.model.layers = nn.ModuleList(layer(c) for _ in range(c["num_hidden_layers"]))
        self.model.norm = RmsNorm(c["hidden_size"], c["rms_norm_eps"])
        if not c["tie_word_embeddings"]:
            self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)

    def rotary(self, pos):  # positions (..., B, T) float64 -> the (..., B, T, hd) angle table
        c = self.c
        hd = c["hidden_size"] // c["num_attention_heads"]
        inv_freq = 1.0 / c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        freqs = pos[..., None] * inv_freq
        return torch.cat([freqs, freqs], -1)

    def forward(self, embeds, attention_mask, attn_layers, cos=None, sin=None):  # cos, sin (B, 1, T, hd)
        c, (b, t, _) = self.c, embeds.shape
        if cos is None:
            emb = self.rotary((attention_mask.long().cumsum(1) - 1).clamp_min(0).double())[:, None]
            cos, sin = emb.cos().float(), emb.sin().float()
        allowed = (torch.ones(t, t, dtype=torch.bool).tril()[None] & attention_mask.bool()[:, None])[:, None]
        h, maps = embeds, {}
        for i, layer in enumerate(self.model.layers):
            h, attn = layer(h, cos, sin, allowed)
            if i in attn_layers:
                maps[i] = attn
        h = self.model.norm(h)
        head = self.lm_head.weight if not c["tie_word_embeddings"] else self.model.embed_tokens.weight
        return h @ head.t(), maps


# ---- LLaVA ---------------------------------------------------------------------------------------------
class Projector(nn.Module):
    def __init__(self, kind, dv, d):
        super().__init__()
        self.linear_1 = nn.Linear(dv, d)
        self.linear_2 = nn.Linear(d, d) if kind == "mlp2x_gelu" else None

    def forward(self, x):
        h = self.linear_1(x)
        return self.linear_2(F.gelu(h)) if self.linear_2 is not None else h


class Llava(nn.Module):
    def __init__(self, s, freeze_vision):
        super().__init__()
        self.s, self.freeze_vision = s, freeze_vision
        self.vision_tower = VisionTower(s["vision"])
        self.multi_modal_projector = Projector(s["projector"], s["vision"]["hidden_size"], s["text"]["hidden_size"])
        self.language_model = LanguageModel(s["text"])

    def forward(self, input_ids, attention_mask, pixel_values, attn_layers):
        visual = (input_ids == self.s["image_token_index"]) & attention_mask.bool()
        embeds = self.language_model.model.embed_tokens(input_ids.masked_fill(visual, 0))
        if pixel_values.shape[0] > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vision):
                features = self.vision_tower.vision_model(pixel_values)[self.s["vision_feature_layer"]][:, 1:]
            features = self.multi_modal_projector(features)
            embeds = embeds.masked_scatter(visual[..., None], features.to(embeds.dtype))
        logits, maps = self.language_model(embeds, attention_mask, attn_layers)
        return logits, maps, visual


# ---- Qwen2.5-VL (Hugging Face's modeling_qwen2_5_vl, written plainly) --------------------------------------
class QwenRmsNorm(RmsNorm):
    def __init__(self, d):
        super().__init__(d, 1e-6)


class QwenVisionAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.heads = c["num_heads"]
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x, lengths, cos, sin):  # x (N, d); eager attention per image or window, as transformers
        n, d = x.shape
        q, k, v = self.qkv(x).reshape(n, 3, self.heads, -1).permute(1, 2, 0, 3).unbind(0)  # (heads, N, hd) each
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        outs = []
        for qc, kc, vc in zip(*(t.split(lengths, 1) for t in (q, k, v))):
            attn = torch.softmax(qc @ kc.transpose(-1, -2) / math.sqrt(qc.shape[-1]), dim=-1)
            outs.append(attn @ vc)
        return self.proj(torch.cat(outs, 1).transpose(0, 1).reshape(n, d))


class QwenVisionMlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, i = c["hidden_size"], c["intermediate_size"]
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, i), nn.Linear(d, i), nn.Linear(i, d)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class QwenVisionBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm1, self.norm2 = QwenRmsNorm(c["hidden_size"]), QwenRmsNorm(c["hidden_size"])
        self.attn, self.mlp = QwenVisionAttention(c), QwenVisionMlp(c)

    def forward(self, x, lengths, cos, sin):
        x = x + self.attn(self.norm1(x), lengths, cos, sin)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.shape = (c["in_channels"], c["temporal_patch_size"], c["patch_size"], c["patch_size"])
        self.proj = nn.Conv3d(c["in_channels"], c["hidden_size"], self.shape[1:], stride=self.shape[1:], bias=False)

    def forward(self, pixels):
        return self.proj(pixels.view(-1, *self.shape)).view(pixels.shape[0], -1)


class PatchMerger(nn.Module):
    def __init__(self, c):
        super().__init__()
        width = c["hidden_size"] * c["spatial_merge_size"] ** 2
        self.ln_q = QwenRmsNorm(c["hidden_size"])
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, c["out_hidden_size"]))

    def forward(self, x):
        return self.mlp(self.ln_q(x).view(-1, self.mlp[0].in_features))


class QwenVision(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.patch_embed = PatchEmbed(c)
        self.blocks = nn.ModuleList(QwenVisionBlock(c) for _ in range(c["depth"]))
        self.merger = PatchMerger(c)

    def rotary(self, grid):  # (N, head_dim / 2) angles: rows then cols, patches in merge-block order
        m, dim = self.c["spatial_merge_size"], self.c["hidden_size"] // self.c["num_heads"] // 2
        ids = []
        for t, h, w in grid.tolist():
            hp = torch.arange(h)[:, None].expand(h, w).reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
            wp = torch.arange(w)[None].expand(h, w).reshape(h // m, m, w // m, m).permute(0, 2, 1, 3).flatten()
            ids.append(torch.stack([hp, wp], -1).repeat(t, 1))
        ids = torch.cat(ids)
        inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
        table = torch.outer(torch.arange(int(grid[:, 1:].max()), dtype=torch.float), inv_freq)
        return table[ids].flatten(1)

    def window_index(self, grid):  # merged-token order window by window, and window lengths in patches
        m = self.c["spatial_merge_size"]
        ws = self.c["window_size"] // m // self.c["patch_size"]
        index, lengths, offset = [], [], 0
        for t, h, w in grid.tolist():
            gh, gw = h // m, w // m
            idx = torch.arange(t * gh * gw).reshape(t, gh, gw)
            ph, pw = (ws - gh % ws) % ws, (ws - gw % ws) % ws
            idx = F.pad(idx, (0, pw, 0, ph), value=-100)
            nh, nw = (gh + ph) // ws, (gw + pw) // ws
            idx = idx.reshape(t, nh, ws, nw, ws).permute(0, 1, 3, 2, 4).reshape(t, nh * nw, ws * ws)
            counts = (idx != -100).sum(-1).flatten()
            flat = idx.flatten()
            index.append(flat[flat != -100] + offset)
            lengths += [int(c) * m * m for c in counts if c > 0]
            offset += t * gh * gw
        return torch.cat(index), lengths

    def forward(self, pixels, grid):
        unit = self.c["spatial_merge_size"] ** 2
        x = self.patch_embed(pixels)
        angles = self.rotary(grid)
        order, window_lengths = self.window_index(grid)
        x = x.view(-1, unit, x.shape[-1])[order].flatten(0, 1)
        angles = angles.view(-1, unit, angles.shape[-1])[order].flatten(0, 1)
        emb = torch.cat([angles, angles], -1)
        cos, sin = emb.cos()[None], emb.sin()[None]
        image_lengths = (grid[:, 1] * grid[:, 2]).repeat_interleave(grid[:, 0]).tolist()
        for i, block in enumerate(self.blocks):
            full = i in self.c["fullatt_block_indexes"]
            x = block(x, image_lengths if full else window_lengths, cos, sin)
        return self.merger(x)[torch.argsort(order)]


def qwen_rope_index(input_ids, attention_mask, grid, image_token, merge):
    """(3, B, T) M-RoPE positions as transformers' get_rope_index for images (Qwen2.5-VL: frame 0)."""
    b, t = input_ids.shape
    pos = torch.ones(3, b, t, dtype=torch.long)
    image = 0
    for s in range(b):
        ids = input_ids[s][attention_mask[s].bool()].tolist()
        parts, i, start = [], 0, 0
        while i <= len(ids):
            if i == len(ids) or ids[i] == image_token:
                text = i - start
                base = parts[-1].max() + 1 if parts else 0
                parts.append(torch.arange(text).expand(3, -1) + base)
                if i == len(ids):
                    break
                gt, gh, gw = grid[image].tolist()
                gh, gw = gh // merge, gw // merge
                base = parts[-1].max() + 1 if parts[-1].numel() else base
                hh = torch.arange(gh)[:, None].expand(gh, gw).flatten().repeat(gt)
                ww = torch.arange(gw)[None].expand(gh, gw).flatten().repeat(gt)
                parts.append(torch.stack([torch.zeros_like(hh), hh, ww]) + base)
                i += gt * gh * gw
                start = i
                image += 1
            else:
                i += 1
        pos[:, s, attention_mask[s].bool()] = torch.cat(parts, 1)
    return pos


class QwenAttention(LlamaAttention):
    def __init__(self, c):
        super().__init__(c)
        d = c["hidden_size"]
        self.q_proj = nn.Linear(d, self.heads * self.hd, bias=True)
        self.k_proj = nn.Linear(d, self.kv_heads * self.hd, bias=True)
        self.v_proj = nn.Linear(d, self.kv_heads * self.hd, bias=True)


class QwenLayer(LlamaLayer):
    def __init__(self, c):
        super().__init__(c)
        self.self_attn = QwenAttention(c)


class Qwen25VL(LanguageModel):  # the Hub layout: `visual.*`, `model.*`, `lm_head`
    def __init__(self, s, freeze_vision):
        super().__init__(s["text"], QwenLayer)
        self.s, self.freeze_vision = s, freeze_vision
        self.visual = QwenVision(s["qwen_vision"])

    def forward(self, input_ids, attention_mask, pixel_values, grid, attn_layers):
        c = self.c
        visual = (input_ids == self.s["image_token_index"]) & attention_mask.bool()
        embeds = self.model.embed_tokens(input_ids)
        if pixel_values.shape[0] > 0:
            embeds = embeds.masked_scatter(visual[..., None], self.visual(pixel_values, grid).to(embeds.dtype))
        # M-RoPE: the head's channels split by mrope_section into (t, h, w) rows, twice.
        pos = qwen_rope_index(input_ids, attention_mask, grid, self.s["image_token_index"],
                              self.s["qwen_vision"]["spatial_merge_size"]).double()
        emb = self.rotary(pos)  # (3, B, T, hd)
        rows = [i % 3 for i in range(6)]
        pick = lambda table: torch.cat([part[r] for r, part in zip(rows, table.split(c["mrope_section"] * 2, -1))], -1)
        logits, maps = super().forward(embeds, attention_mask, attn_layers, pick(emb.cos()).float()[:, None],
                                       pick(emb.sin()).float()[:, None])
        return logits, maps, visual


# ---- losses, as in losses/ -----------------------------------------------------------------------------
def text_ce(logits, labels):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=-100)


def query_mean(mass, queries):  # mass (B, H, T), queries (B, T) -> (B)
    q = queries.to(mass.dtype)
    return (mass.mean(1) * q).sum(1) / q.sum(1).clamp_min(1)


def balanced_share(queries, real, visual):
    share = visual.double().cumsum(1) / real.double().cumsum(1).clamp_min(1)
    q = queries.double()
    return (share * q).sum(1) / q.sum(1).clamp_min(1)


def dual_channel(opt, maps, labels, real, visual):
    rq = torch.zeros_like(real)
    rq[:, :-1] = labels[:, 1:] != -100
    rq &= real
    first = visual.long().cumsum(1) == 1
    iq = visual & ~first & real
    inter, intra = [], []
    for layer in opt["layers"]:
        mass = (maps[layer] * visual[:, None, None, :].to(maps[layer].dtype)).sum(-1)  # (B, H, T)
        inter.append(query_mean(mass, rq))
        intra.append(query_mean(mass, iq))
    inter, intra = torch.stack(inter), torch.stack(intra)
    scale, eps = opt["target_scale"], opt["eps"]
    if opt["target"] == "balanced":
        t_inter = (balanced_share(rq, real, visual) * scale).float()
        t_intra = (balanced_share(iq, real, visual) * scale).float()
    else:
        t_inter = t_intra = torch.full((real.shape[0],), opt["target"] * scale)

    def f(m, target):
        return -torch.log(torch.clamp_max(m / target.clamp_min(eps), 1.0) + eps)

    per_sample = (opt["inter_weight"] * f(inter, t_inter).mean(0) * rq.any(1) +
                  opt["intra_weight"] * f(intra, t_intra).mean(0) * iq.any(1))
    image = visual.any(1)
    return (per_sample * image).sum() / image.sum().clamp_min(1)


def no_decay(name, p):
    return p.dim() < 2 or "norm" in name or "embed" in name or "class_embedding" in name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--losses", choices=["ce", "config"], default="config")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="forward and losses under torch.autocast('cpu', bfloat16)")
    args = ap.parse_args()
    spec = json.load(open(f"{args.dir}/spec.json"))
    torch.set_num_threads(spec["threads"])
    s, opt = spec["shapes"], spec["optimizer"]
    qwen = s.get("family") == "qwen2_5_vl"
    model = (Qwen25VL if qwen else Llava)(s, spec["freeze"]["vision_tower"])
    weights = load_safetensors(f"{args.dir}/weights.safetensors")
    if qwen:  # modalign's own names for the decoder (`language_model.`): the Hub's are `model.*` and `lm_head.*`
        weights = {k[len("language_model."):] if k.startswith("language_model.") else k: v for k, v in weights.items()}
    model.load_state_dict(weights, strict=True)
    for name, p in model.named_parameters():
        prefixes = ((("vision_tower", "visual.blocks."), ("vision_tower", "visual.patch_embed."),
                     ("projector", "visual.merger."), ("language_model", "model."), ("language_model", "lm_head."))
                    if qwen else (("vision_tower", "vision_tower."), ("projector", "multi_modal_projector."),
                                  ("language_model", "language_model.")))
        frozen = any(spec["freeze"][k] and name.startswith(prefix) for k, prefix in prefixes)
        p.requires_grad_(not frozen)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in trained if not no_decay(n, p)], "weight_decay": opt["weight_decay"]},
         {"params": [p for n, p in trained if no_decay(n, p)], "weight_decay": 0.0}],
        lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"])
    aligners = spec["losses"] if args.losses == "config" else []
    attn_layers = sorted({l for a in aligners for l in a["layers"]})
    batches = load_safetensors(f"{args.dir}/batches.safetensors")
    total = args.warmup + args.steps
    assert total <= spec["steps"], f"{args.dir} holds {spec['steps']} batches, {total} asked"
    model.train()
    losses, step_ms, tokens = [], [], []
    for i in range(total):
        ids, mask = batches[f"{i}.input_ids"], batches[f"{i}.attention_mask"]
        labels, pixels = batches[f"{i}.labels"], batches[f"{i}.pixel_values"]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext():
            if qwen:
                logits, maps, visual = model(ids, mask, pixels, batches[f"{i}.image_grid_thw"], attn_layers)
            else:
                logits, maps, visual = model(ids, mask, pixels, attn_layers)
            loss = text_ce(logits, labels)
            for a in aligners:
                loss = loss + a["weight"] * dual_channel(a, maps, labels, mask.bool(), visual)
        loss.backward()
        params = [p for _, p in trained if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, opt["max_grad_norm"] if opt["max_grad_norm"] > 0 else float("inf"))
        optimizer.step()
        losses.append(loss.item())
        if i >= args.warmup:
            step_ms.append((time.perf_counter() - t0) * 1e3)
            tokens.append(int(mask.sum()))
    print(json.dumps({"side": "pytorch", "losses": args.losses, "bf16": args.bf16, "threads": torch.get_num_threads(),
                      "first_loss": losses[0], "last_loss": losses[-1], "step_ms": step_ms, "step_tokens": tokens,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
