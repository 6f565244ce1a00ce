"""The caption tokenizer (docs/paper.md §Token layout; the layout itself is pipeline/tokens.py).

The paper uses T5-base's tokenizer (32,100 entries: pad 0, eos 1, unk 2, 32,000 SentencePiece pieces
and 100 sentinel ids) plus two added tokens, BOS and CLS, for 32,102 in all. Offline, the demo trains a small tokenizer on its own training
captions with the same special-token layout: SentencePiece-style (Metaspace) BPE, because the
Unigram trainer (T5's model type) degenerates to single letters on a corpus of a few thousand
captions, while BPE learns every word of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline.checks import UserError
from pipeline.data.parquet import row_groups
from pipeline.tokens import TokenLayout

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
BOS, CLS = "<bos>", "<cls>"
# Ids that carry no caption text: BOS, PAD and CLS are ignored as caption-loss targets.
SPECIAL_TOKENS_ADDED = {"bos_token": BOS, "cls_token": CLS}


class TokenizerError(UserError, RuntimeError):
    pass


def layout_of(tokenizer: PreTrainedTokenizerFast) -> TokenLayout:
    """The tokenizer's token layout; ValueError if its special ids are not where the layout puts them."""
    layout = TokenLayout(len(tokenizer))
    ids = {"pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "bos": tokenizer.bos_token_id, "cls": tokenizer.cls_token_id}
    wrong = {k: (v, getattr(layout, k)) for k, v in ids.items() if v != getattr(layout, k)}
    if wrong:
        raise ValueError(f"special ids (tokenizer's, layout's): {wrong}")
    return layout


def add_bos_and_cls(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Append BOS and CLS after every existing entry, as the paper does to T5's vocabulary."""
    tokenizer.add_special_tokens(SPECIAL_TOKENS_ADDED)
    try:
        layout_of(tokenizer)
    except ValueError as e:
        raise TokenizerError(f"after adding BOS and CLS: {e}") from None
    return tokenizer


def load_pretrained(name: str) -> PreTrainedTokenizerFast:
    """A Hugging Face tokenizer (`t5-base` in the paper) with BOS and CLS added."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, use_fast=True)
    except Exception as e:  # noqa: BLE001 - hub, network and file errors all mean the same here
        raise TokenizerError(
            f"could not load tokenizer {name!r} (data.tokenizer.name): {type(e).__name__}: {e}. "
            "The Hugging Face hub is needed once: run `huggingface-cli download t5-base` where the "
            "network allows, or set data.tokenizer.name to a local directory holding the tokenizer."
        ) from None
    return add_bos_and_cls(tokenizer)


def train_tokenizer(captions: Iterable[str | list[str]], vocab_size: int) -> PreTrainedTokenizerFast:
    """A small SentencePiece-style BPE tokenizer with T5's layout; `vocab_size` counts BOS and CLS.
    `captions`: captions, or batches of them, consumed as they come (the trainer keeps word counts,
    not the captions)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    core = Tokenizer(models.BPE(unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, special_tokens=[PAD, EOS, UNK], show_progress=False)
    core.train_from_iterator(captions, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    # A small corpus can support fewer pieces than asked for. Fill the gap with never-produced
    # `<unused_i>` entries (as BERT does), so BOS and CLS still land at vocab_size - 2 and - 1.
    missing = vocab_size - 2 - len(tokenizer)
    if missing < 0:
        raise TokenizerError(f"trained {len(tokenizer)} entries, more than vocab_size - 2 = {vocab_size - 2}")
    tokenizer.add_tokens([AddedToken(f"<unused_{i}>", special=True) for i in range(missing)], special_tokens=True)
    return add_bos_and_cls(tokenizer)


def build_tokenizer(name: str, vocab_size: int, training_captions: Iterable[str | list[str]] = ()) -> PreTrainedTokenizerFast:
    """The configured tokenizer, with exactly `vocab_size` entries (32,102 for T5 plus BOS and CLS)."""
    tokenizer = train_tokenizer(training_captions, vocab_size) if name == "train" else load_pretrained(name)
    if len(tokenizer) != vocab_size:
        raise TokenizerError(
            f"tokenizer {name!r} has {len(tokenizer)} entries but data.tokenizer.vocab_size is {vocab_size}"
        )
    return tokenizer


def encode_captions(
    tokenizer: PreTrainedTokenizerFast, captions: Sequence[str], context_length: int, batch_size: int = 4096
) -> tuple[np.ndarray, int]:
    """Encode captions in the token layout (pipeline/tokens.py); returns (ids [N, context_length + 1]
    int32, how many captions were truncated)."""
    layout = layout_of(tokenizer)
    out = np.empty((len(captions), context_length + 1), dtype=np.int32)
    truncated = 0
    for start in range(0, len(captions), batch_size):
        batch = [str(c) for c in captions[start : start + batch_size]]
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for row, tokens in enumerate(encoded, start):
            out[row], cut = layout.sequence(tokens, context_length)
            truncated += cut
    return out, truncated


def split_captions(pairs_path: Path) -> Iterator[list[str]]:
    """The captions of one split's pairs file, a parquet row group (the split stage's CHUNK_ROWS pairs)
    at a time."""
    for table in row_groups(pairs_path, ["caption"]):
        yield table["caption"].to_pylist()


def encode_split(tokenizer: PreTrainedTokenizerFast, pairs_path: Path, out_path: Path, context_length: int,
                 batch_size: int = 4096) -> tuple[int, int]:
    """Encode the captions of one split's pairs file into out_path (.npy, [N, context_length + 1]
    int32: the bytes np.save writes) batch by batch: the captions are read batch_size at a time and
    each batch's rows are appended to the file, so the memory this takes does not grow with the split
    (a memory-mapped array would: its written pages count in the process's RSS).
    Returns (captions, how many were truncated)."""
    import pyarrow.parquet as pq

    expected = pq.ParquetFile(pairs_path).metadata.num_rows
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, context_length + 1), dtype=np.int32))
    header["shape"] = (expected, context_length + 1)
    rows = truncated = 0
    with open(out_path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for captions in split_captions(pairs_path):
            for start in range(0, len(captions), batch_size):
                encoded, cut = encode_captions(tokenizer, captions[start:start + batch_size], context_length,
                                               batch_size)
                f.write(encoded.tobytes())
                rows, truncated = rows + len(encoded), truncated + cut
    if rows != expected:
        raise ValueError(f"{pairs_path}: {rows} captions read, the file's metadata says {expected}")
    return rows, truncated


def decode_tokens(tokenizer: PreTrainedTokenizerFast, tokens: Iterable[int]) -> str:
    """The caption text of one encoded sequence (up to its first EOS), without special tokens."""
    layout = layout_of(tokenizer)
    text_ids = []
    for t in tokens:
        t = int(t)
        if t == layout.eos:
            break
        if t not in layout.non_targets:
            text_ids.append(t)
    return tokenizer.decode(text_ids, skip_special_tokens=True).strip()
