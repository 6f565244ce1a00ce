"""The token layout of a caption (docs/paper.md §Token layout), defined once.

T5-base's tokenizer has pad 0, eos 1 and unk 2; the paper appends BOS and CLS after its last entry,
so with V entries in all BOS is V - 2 and CLS is V - 1. Each caption becomes context_length + 1 ids:

    BOS, caption tokens, EOS, PAD..., CLS, PAD

The model's inputs drop the last id (so the last input token is always CLS, whose unimodal output
is the text embedding) and its targets drop the first. BOS, PAD and CLS are never caption-loss
targets and are never generated. The tokenizer, the model, the losses, validation, generation and
the tests' fixtures all take these ids from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenLayout:
    vocab_size: int  # every entry, BOS and CLS included
    pad: int = 0
    eos: int = 1
    unk: int = 2

    # BOS, one caption token, EOS and CLS must fit in the inputs.
    MIN_CONTEXT = 4

    @property
    def bos(self) -> int:
        return self.vocab_size - 2

    @property
    def cls(self) -> int:
        return self.vocab_size - 1

    @property
    def non_targets(self) -> tuple[int, int, int]:
        """Ids that are not caption-loss targets and are never generated: BOS, PAD, CLS."""
        return (self.bos, self.pad, self.cls)

    @property
    def first_caption_id(self) -> int:
        """The smallest id that is a caption piece (after pad, eos, unk)."""
        return max(self.pad, self.eos, self.unk) + 1

    def max_caption_tokens(self, context_length: int) -> int:
        """Caption tokens that fit: context_length + 1 ids minus BOS, EOS, CLS and the final PAD."""
        return context_length - 3

    def sequence(self, caption: Sequence[int], context_length: int) -> tuple[list[int], bool]:
        """(the caption's context_length + 1 ids, whether it was truncated to fit)."""
        fits = self.max_caption_tokens(context_length)
        if fits < 1:
            raise ValueError(f"context_length {context_length} leaves no room for caption tokens "
                             f"(at least {self.MIN_CONTEXT} needed)")
        truncated = len(caption) > fits
        body = [self.bos, *caption[:fits], self.eos]
        return body + [self.pad] * (context_length - 1 - len(body)) + [self.cls, self.pad], truncated
