"""The token layout: BOS, tokens, EOS, PAD..., CLS, PAD; T5 plus BOS and CLS is 32,102 entries."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from pipeline.tokens import TokenLayout
from pipeline.data.tokenizer import (
    TokenizerError,
    add_bos_and_cls,
    build_tokenizer,
    decode_tokens,
    encode_captions,
    layout_of,
)

CAPTIONS = [
    "a large red circle to the left of a small blue square",
    "two green triangles above a yellow star on a white background",
    "axial ct image showing a hyperdense lesion in the left upper region",
] * 40


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("train", 200, CAPTIONS)


def test_trained_tokenizer_has_t5_layout_and_exact_size(tokenizer):
    ids = layout_of(tokenizer)
    assert len(tokenizer) == 200
    assert (ids.pad, ids.eos, ids.unk, ids.bos, ids.cls) == (0, 1, 2, 198, 199)
    assert ids == TokenLayout(200)  # the one definition of the layout (pipeline/tokens.py)


def test_a_tokenizer_trained_on_streamed_batches_is_the_one_trained_on_the_list(tokenizer):
    """The tokenize stage feeds the trainer a parquet row group at a time, never every caption at once:
    the same vocabulary and merges as from the whole list."""
    batches = (CAPTIONS[start:start + 7] for start in range(0, len(CAPTIONS), 7))
    streamed = build_tokenizer("train", 200, batches)
    assert streamed.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert build_tokenizer("train", 200, CAPTIONS[:2]).backend_tokenizer.to_str() != tokenizer.backend_tokenizer.to_str()


def test_encoding_layout_exactly(tokenizer):
    ids = layout_of(tokenizer)
    L = 24
    encoded, truncated = encode_captions(tokenizer, ["a red circle"], L)
    row = encoded[0]
    body = tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    n = len(body)
    assert row.dtype == np.int32 and row.shape == (L + 1,)
    assert row[0] == ids.bos
    assert list(row[1 : 1 + n]) == body
    assert row[1 + n] == ids.eos
    assert (row[2 + n : L - 1] == ids.pad).all()
    assert row[L - 1] == ids.cls and row[L] == ids.pad
    # Model inputs are the first L ids and end with CLS; targets are the last L.
    assert row[:-1][-1] == ids.cls and len(row[1:]) == L
    assert truncated == 0


def test_round_trip_and_truncation_is_counted(tokenizer):
    encoded, truncated = encode_captions(tokenizer, CAPTIONS[:3], 64)
    assert truncated == 0
    assert [decode_tokens(tokenizer, row) for row in encoded] == CAPTIONS[:3]
    short, truncated = encode_captions(tokenizer, CAPTIONS[:3], 8)
    assert truncated == 3
    ids = layout_of(tokenizer)
    for row in short:  # still a full layout: BOS, 5 tokens, EOS, CLS, PAD
        assert (row[0], row[6], row[7], row[8]) == (ids.bos, ids.eos, ids.cls, ids.pad)


def test_saved_tokenizer_loads_back_identically(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert layout_of(loaded) == layout_of(tokenizer)
    np.testing.assert_array_equal(encode_captions(loaded, CAPTIONS, 32)[0], encode_captions(tokenizer, CAPTIONS, 32)[0])


def t5_shaped_tokenizer():
    """A stand-in with T5-base's exact shape (pad, eos, unk, 31,997 pieces, 100 sentinels = 32,100),
    since the real t5-base cannot be downloaded here."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁w{i}", -float(i)) for i in range(31997)]
    core = Tokenizer(models.Unigram(pieces, unk_id=2))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)]})
    assert len(tok) == 32100
    return tok


def test_t5_plus_bos_and_cls_is_32102_with_ids_32100_and_32101():
    tok = add_bos_and_cls(t5_shaped_tokenizer())
    ids = layout_of(tok)
    assert len(tok) == 32102
    assert (ids.pad, ids.eos, ids.bos, ids.cls) == (0, 1, 32100, 32101)


def test_unreachable_pretrained_tokenizer_fails_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerError, match="data.tokenizer.name"):
        build_tokenizer(str(tmp_path / "no-such-tokenizer"), 32102)


@pytest.mark.parametrize("rows", [0, 1, 23])
def test_a_split_is_encoded_batch_by_batch_into_the_bytes_np_save_writes(tokenizer, tmp_path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.data.tokenizer import encode_split

    captions = [CAPTIONS[i % len(CAPTIONS)] * (1 + i % 4) for i in range(rows)]  # some truncated
    pq.write_table(pa.table({"key": [str(i) for i in range(rows)], "caption": pa.array(captions, pa.string())}),
                   tmp_path / "pairs.parquet", row_group_size=5)  # several row groups, batches across them
    encoded, truncated = encode_captions(tokenizer, captions, 12)
    np.save(tmp_path / "whole.npy", encoded)

    assert encode_split(tokenizer, tmp_path / "pairs.parquet", tmp_path / "split.npy", 12, batch_size=3) == (rows, truncated)
    assert (tmp_path / "split.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    assert rows < 23 or truncated > 0
