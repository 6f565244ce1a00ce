"""Caption generation: greedy and beam search.

The image is encoded once. The default path keeps a key-value cache in every self-attention layer
of both text decoders (and the projected image context of every cross-attention layer), so each
step runs the decoders on the new token only. ``use_cache=False`` is the uncached reference: it
re-runs both decoders on the whole prefix at every step (tests check both give the same tokens).

Sequences start with BOS and stop at EOS; at most ``max_length`` tokens in all (BOS included,
default ``context_length``). BOS, PAD and CLS are never generated (they are never trained as
targets). Both functions return the generated tokens after BOS, EOS included when reached, right
padded with PAD: a LongTensor (B, T) with T <= max_length - 1.
"""

from __future__ import annotations

import torch

from .coca import CoCa
from .layers import KVCache, rope_1d


class _Decoder:
    """Next-token logits for a batch of prefixes, cached (incremental) or uncached (full prefix)."""

    def __init__(self, model: CoCa, image_tokens: torch.Tensor, use_cache: bool):
        self.model, self.image_tokens, self.use_cache = model, image_tokens, use_cache
        self.seen = 0  # tokens already in the caches
        if use_cache:
            self.uni_caches = [KVCache() for _ in model.unimodal.blocks]
            self.multi_caches = [(KVCache(), KVCache()) for _ in model.multimodal.layers]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T): the whole prefix so far (no PAD before EOS) -> logits (B, V) for token T."""
        model, cfg = self.model, self.model.cfg
        if not self.use_cache:
            _, hidden, (rope, mask, is_causal) = model.text_features(tokens)
            logits = model.caption_logits(hidden, self.image_tokens, rope=rope, attn_mask=mask,
                                          is_causal=is_causal)
            return logits[:, -1]
        new = tokens[:, self.seen:]
        n = new.shape[1]
        positions = torch.arange(self.seen, self.seen + n, device=tokens.device)
        cos, sin = rope_1d(positions, cfg.head_dim, cfg.rope_base)
        rope = (cos[None, None], sin[None, None])
        # A single new token may see every cached key; several new ones need a causal mask that is
        # offset by the number of cached tokens.
        mask = None
        if n > 1:
            total = self.seen + n
            mask = torch.ones(n, total, dtype=torch.bool, device=tokens.device).tril(self.seen)
        hidden = model.unimodal(new, rope=rope, attn_mask=mask, caches=self.uni_caches)
        logits = model.caption_logits(hidden, self.image_tokens, rope=rope, attn_mask=mask,
                                      caches=self.multi_caches)
        self.seen += n
        return logits[:, -1]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (beam search). Cross-attention caches need no reordering: beams
        are only reordered within one image, whose context is the same for all its beams."""
        if self.use_cache:
            for cache in self.uni_caches:
                cache.reorder(index)
            for self_cache, _ in self.multi_caches:
                self_cache.reorder(index)


def _allowed_log_probs(logits: torch.Tensor, model: CoCa) -> torch.Tensor:
    cfg = model.cfg
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    logits[:, list(cfg.tokens.non_targets)] = float("-inf")  # BOS, PAD, CLS: never generated
    return logits.log_softmax(dim=-1)


def _prepare(model: CoCa, images: torch.Tensor, max_length: int | None) -> tuple[int, torch.Tensor]:
    max_length = model.cfg.context_length if max_length is None else max_length
    if max_length < 2:
        raise ValueError(f"max_length = {max_length} is invalid: allowed >= 2 (BOS and one token)")
    return max_length, model.image_features(images)[1]


@torch.no_grad()
def greedy_search(model: CoCa, images: torch.Tensor, max_length: int | None = None,
                  use_cache: bool = True) -> torch.Tensor:
    """Greedy captions for images (B, 3, H, W) -> tokens (B, T) (see module docstring)."""
    was_training = model.training
    model.eval()
    try:
        cfg = model.cfg
        max_length, image_tokens = _prepare(model, images, max_length)
        B = images.shape[0]
        tokens = torch.full((B, 1), cfg.bos_id, dtype=torch.long, device=images.device)
        finished = torch.zeros(B, dtype=torch.bool, device=images.device)
        decoder = _Decoder(model, image_tokens, use_cache)
        for _ in range(max_length - 1):
            next_token = _allowed_log_probs(decoder(tokens), model).argmax(dim=-1)
            next_token = next_token.masked_fill(finished, cfg.pad_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished |= next_token == cfg.eos_id
            if bool(finished.all()):
                break
        return tokens[:, 1:]
    finally:
        model.train(was_training)


@torch.no_grad()
def beam_search(model: CoCa, images: torch.Tensor, num_beams: int = 4,
                max_length: int | None = None, length_penalty: float = 1.0,
                use_cache: bool = True) -> torch.Tensor:
    """Beam-search captions for images (B, 3, H, W) -> tokens (B, T) (see module docstring).

    Keeps ``num_beams`` hypotheses per image ranked by summed log-probability; a hypothesis that
    emitted EOS is finished and carries on unchanged (PAD at no cost). The returned hypothesis has
    the best score / (generated length ** length_penalty), EOS counted in the length.
    """
    was_training = model.training
    model.eval()
    try:
        cfg, K = model.cfg, num_beams
        if K < 1:
            raise ValueError(f"num_beams = {K} is invalid: allowed >= 1")
        max_length, image_tokens = _prepare(model, images, max_length)
        B, device = images.shape[0], images.device
        image_tokens = image_tokens.repeat_interleave(K, dim=0)  # (B*K, Q, dim), beams of an image adjacent
        tokens = torch.full((B * K, 1), cfg.bos_id, dtype=torch.long, device=device)
        score_dtype = torch.promote_types(image_tokens.dtype, torch.float32)
        scores = torch.zeros(B, K, device=device, dtype=score_dtype)
        scores[:, 1:] = float("-inf")  # all beams start identical: expand only the first
        finished = torch.zeros(B * K, dtype=torch.bool, device=device)
        decoder = _Decoder(model, image_tokens, use_cache)
        for _ in range(max_length - 1):
            log_probs = _allowed_log_probs(decoder(tokens), model)  # (B*K, V)
            V = log_probs.shape[-1]
            log_probs[finished] = float("-inf")
            log_probs[finished, cfg.pad_id] = 0.0
            candidates = (scores.reshape(-1, 1) + log_probs).reshape(B, K * V)
            scores, index = candidates.topk(K, dim=1)
            source = (torch.arange(B, device=device)[:, None] * K + index // V).reshape(-1)
            next_token = (index % V).reshape(-1)
            tokens = torch.cat([tokens[source], next_token[:, None]], dim=1)
            finished = finished[source] | (next_token == cfg.eos_id)
            decoder.reorder(source)
            if bool(finished.all()):
                break
        generated = tokens[:, 1:]
        lengths = (generated != cfg.pad_id).sum(dim=1).clamp(min=1).to(scores.dtype)
        normalised = scores.reshape(-1) / lengths ** length_penalty
        best = normalised.reshape(B, K).argmax(dim=1) + torch.arange(B, device=device) * K
        return generated[best]
    finally:
        model.train(was_training)


def generate(model: CoCa, images: torch.Tensor, method: str = "greedy", num_beams: int = 4,
             max_length: int | None = None, length_penalty: float = 1.0,
             use_cache: bool = True) -> torch.Tensor:
    """Captions for images: ``method`` is "greedy" or "beam"."""
    if method == "greedy":
        return greedy_search(model, images, max_length, use_cache)
    if method == "beam":
        return beam_search(model, images, num_beams, max_length, length_penalty, use_cache)
    raise ValueError(f"generation method {method!r} is invalid: allowed 'greedy' or 'beam'")
