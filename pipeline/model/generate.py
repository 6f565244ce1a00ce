"""Caption generation: greedy search, beam search and sampling (temperature, top-k, top-p).

The image is encoded once. The default path keeps a key-value cache in every self-attention layer
of both text decoders (and the projected image context of every cross-attention layer), so each
step runs the decoders on the new token only. ``use_cache=False`` is the uncached reference: it
re-runs both decoders on the whole prefix at every step (tests check both give the same tokens).

Sequences start with BOS and stop at EOS; at most ``max_length`` tokens in all (BOS included,
default ``context_length``). BOS, PAD and CLS are never generated (they are never trained as
targets). Every method takes two more rules: ``min_length`` (no EOS before that many generated
tokens) and ``repetition_penalty`` (CTRL's: an already generated token's logit is divided by it when
positive, multiplied when negative). All three functions return the generated tokens after BOS, EOS included when reached, right
padded with PAD: a LongTensor (B, T) with T <= max_length - 1.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _allowed_logits(logits: torch.Tensor, model: CoCa, tokens: torch.Tensor, min_length: int = 0,
                    repetition_penalty: float = 1.0) -> torch.Tensor:
    """The next token's logits (B, V) with the rules of every method applied, for prefixes `tokens`
    (B, T, BOS first): BOS, PAD and CLS are never generated; EOS not before `min_length` generated
    tokens; a token already generated has its logit divided by `repetition_penalty` when positive and
    multiplied by it when negative (CTRL's rule, as Hugging Face applies it), so it is less likely."""
    cfg = model.cfg
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    if repetition_penalty != 1.0 and tokens.shape[1] > 1:
        seen = tokens[:, 1:]
        previous = logits.gather(1, seen)
        logits.scatter_(1, seen, torch.where(previous > 0, previous / repetition_penalty, previous * repetition_penalty))
    logits[:, list(cfg.tokens.non_targets)] = float("-inf")  # BOS, PAD, CLS: never generated
    if tokens.shape[1] - 1 < min_length:
        logits[:, cfg.eos_id] = float("-inf")
    return logits


def _allowed_log_probs(logits: torch.Tensor, model: CoCa, tokens: torch.Tensor, min_length: int = 0,
                       repetition_penalty: float = 1.0) -> torch.Tensor:
    return _allowed_logits(logits, model, tokens, min_length, repetition_penalty).log_softmax(dim=-1)


def _check_rules(min_length: int, repetition_penalty: float) -> None:
    if min_length < 0:
        raise ValueError(f"min_length = {min_length} is invalid: allowed >= 0")
    if not repetition_penalty >= 1.0:
        raise ValueError(f"repetition_penalty = {repetition_penalty} is invalid: allowed >= 1 (1: off)")


def _prepare(model: CoCa, images: torch.Tensor, max_length: int | None) -> tuple[int, torch.Tensor]:
    max_length = model.cfg.context_length if max_length is None else max_length
    if max_length < 2:
        raise ValueError(f"max_length = {max_length} is invalid: allowed >= 2 (BOS and one token)")
    return max_length, model.image_features(images)[1]


def _token_by_token(model: CoCa, images: torch.Tensor, max_length: int | None, use_cache: bool,
                    pick: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The loop greedy search and sampling share: from BOS, append pick(logits (B, V), tokens so far)
    to every caption until each has emitted EOS (PAD after it) or max_length is reached."""
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
            next_token = pick(decoder(tokens), tokens).masked_fill(finished, cfg.pad_id)
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)
            finished |= next_token == cfg.eos_id
            if bool(finished.all()):
                break
        return tokens[:, 1:]
    finally:
        model.train(was_training)


@torch.no_grad()
def greedy_search(model: CoCa, images: torch.Tensor, max_length: int | None = None,
                  use_cache: bool = True, min_length: int = 0, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Greedy captions for images (B, 3, H, W) -> tokens (B, T) (see module docstring)."""
    _check_rules(min_length, repetition_penalty)

    def likeliest(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return _allowed_log_probs(logits, model, tokens, min_length, repetition_penalty).argmax(dim=-1)
    return _token_by_token(model, images, max_length, use_cache, likeliest)


@torch.no_grad()
def beam_search(model: CoCa, images: torch.Tensor, num_beams: int = 4,
                max_length: int | None = None, length_penalty: float = 1.0,
                use_cache: bool = True, min_length: int = 0, repetition_penalty: float = 1.0) -> torch.Tensor:
    """Beam-search captions for images (B, 3, H, W) -> tokens (B, T) (see module docstring).

    Keeps ``num_beams`` hypotheses per image ranked by summed log-probability; a hypothesis that
    emitted EOS is finished and carries on unchanged (PAD at no cost). The returned hypothesis has
    the best score / (generated length ** length_penalty), EOS counted in the length.
    """
    _check_rules(min_length, repetition_penalty)
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
            log_probs = _allowed_log_probs(decoder(tokens), model, tokens, min_length, repetition_penalty)  # (B*K, V)
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


@torch.no_grad()
def sample(model: CoCa, images: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           max_length: int | None = None, min_length: int = 0, repetition_penalty: float = 1.0,
           seed: int = 0, use_cache: bool = True) -> torch.Tensor:
    """Sampled captions for images (B, 3, H, W) -> tokens (B, T) (see module docstring).

    Each step draws the next token from softmax(logits / temperature), restricted to the `top_k`
    likeliest tokens (0: no limit) and then to the smallest set of likeliest tokens whose probability
    reaches `top_p` (nucleus sampling; 1.0: no limit). The draws come from a generator seeded with
    `seed`, so the same seed, images and model give the same captions on the same device.
    """
    _check_rules(min_length, repetition_penalty)
    if not temperature > 0:
        raise ValueError(f"temperature = {temperature} is invalid: allowed > 0")
    if top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"top_k = {top_k}, top_p = {top_p} are invalid: allowed top_k >= 0, 0 < top_p <= 1")
    generator = torch.Generator(device=images.device).manual_seed(seed)

    def draw(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logits = _allowed_logits(logits, model, tokens, min_length, repetition_penalty) / temperature
        if top_k and top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True)
            outside = probs.cumsum(dim=-1) - probs >= top_p  # the mass before a token already reaches p
            logits = logits.masked_fill(outside.scatter(1, order, outside), float("-inf"))
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)
    return _token_by_token(model, images, max_length, use_cache, draw)


METHODS = ("beam", "greedy", "sample")


def generate(model: CoCa, images: torch.Tensor, method: str = "greedy", num_beams: int = 4,
             max_length: int | None = None, length_penalty: float = 1.0, use_cache: bool = True, *,
             min_length: int = 0, repetition_penalty: float = 1.0, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Captions for images: ``method`` is "greedy", "beam" or "sample"; the length and repetition
    rules apply to all three, temperature, top-k, top-p and the seed to sampling only."""
    rules = {"min_length": min_length, "repetition_penalty": repetition_penalty}
    if method == "greedy":
        return greedy_search(model, images, max_length, use_cache, **rules)
    if method == "beam":
        return beam_search(model, images, num_beams, max_length, length_penalty, use_cache, **rules)
    if method == "sample":
        return sample(model, images, temperature, top_k, top_p, max_length, seed=seed, use_cache=use_cache, **rules)
    raise ValueError(f"generation method {method!r} is invalid: allowed {', '.join(map(repr, METHODS))}")
