"""The model checkpoint format (pipeline/checkpoint.py): written and read in one place."""

import pytest
import torch

from pipeline.checkpoint import CheckpointError, load_init, load_model, save_model
from pipeline.config import model_preset
from pipeline.model.coca import CoCa


def test_save_and_load_round_trip_with_meta_and_tokenizer(tmp_path):
    cfg = model_preset("smoke")
    model = CoCa(cfg)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok/tokenizer.json").write_text('{"x": 1}')
    path = save_model(tmp_path / "out/final.pt", model.state_dict(), cfg, tokenizer_dir=tmp_path / "tok",
                      phase="pretrain", step=5, val={"coca_loss": 1.5}, betas=(0.9, 0.999))
    ckpt = load_model(path)
    assert ckpt.config == cfg and ckpt.tokenizer_files == {"tokenizer.json": '{"x": 1}'}
    assert ckpt.meta["phase"] == "pretrain" and ckpt.meta["step"] == 5 and ckpt.meta["betas"] == [0.9, 0.999]
    rebuilt = ckpt.build()
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()))


def test_load_init_refuses_another_architecture(tmp_path):
    path = save_model(tmp_path / "final.pt", CoCa(model_preset("smoke")).state_dict(), model_preset("smoke"))
    other = CoCa(model_preset("smoke", encoder="baseline"))
    with pytest.raises(CheckpointError, match=r"another model configuration .*'encoder': \('grr', 'baseline'\)"):
        load_init(path, other)
    same = CoCa(model_preset("smoke"))
    assert load_init(path, same)["path"] == str(path)


def test_format_1_checkpoints_still_load(tmp_path):
    """Format 1 kept dropout and the special ids in model_config; they are dropped on reading."""
    cfg = model_preset("smoke")
    legacy = {"model": CoCa(cfg).state_dict(),
              "model_config": {**cfg.to_dict(), "dropout": 0.0, "pad_id": 0, "eos_id": 1,
                               "bos_id": cfg.vocab_size - 2, "cls_id": cfg.vocab_size - 1}}
    torch.save(legacy, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").config == cfg


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint", "not a readable checkpoint"),
    (None, "no such checkpoint"),
])
def test_unusable_files_are_refused_with_the_reason(tmp_path, content, message):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(path)


def test_weights_that_do_not_match_the_configuration_are_refused(tmp_path):
    path = save_model(tmp_path / "final.pt", CoCa(model_preset("smoke")).state_dict(), model_preset("smoke", dim=64))
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(path).build()


@pytest.mark.parametrize("name", ["../escaped.json", "/tmp/absolute.json", "..", "sub/dir.json", ""])
def test_a_checkpoint_never_chooses_where_files_are_written(tmp_path, name):
    """tokenizer_files names are written into a temporary folder by inference: a crafted checkpoint with
    a path for a name is refused before anything is written."""
    cfg = model_preset("smoke")
    payload = {"format": 2, "model": CoCa(cfg).state_dict(), "model_config": cfg.to_dict(),
               "tokenizer_files": {"tokenizer.json": "{}", name: "written?"}}
    torch.save(payload, tmp_path / "crafted.pt")
    before = set(tmp_path.rglob("*"))
    with pytest.raises(CheckpointError, match="tokenizer_files must map plain file names"):
        load_model(tmp_path / "crafted.pt")
    assert set(tmp_path.rglob("*")) == before


def test_a_sigmoid_loss_model_records_its_bias_and_loads_back(tmp_path):
    """The sigmoid loss's learnable bias is part of the model: the checkpoint records the option, so
    evaluation rebuilds the same modules; a fine-tune with the other loss is refused by name."""
    cfg = model_preset("smoke")
    model = CoCa(cfg, contrastive_loss="sigmoid")
    with torch.no_grad():
        model.logit_bias.fill_(-7.5)
    path = save_model(tmp_path / "final.pt", model.state_dict(), cfg, options=model.options)
    loaded = load_model(path)
    assert loaded.options == {"contrastive_loss": "sigmoid", "adapter": False}
    rebuilt = loaded.build()
    assert rebuilt.logit_bias.item() == -7.5
    load_init(path, CoCa(cfg, contrastive_loss="sigmoid"))
    with pytest.raises(CheckpointError, match="pre-trained with contrastive_loss 'sigmoid', this run uses 'softmax'"):
        load_init(path, CoCa(cfg))
    plain = save_model(tmp_path / "plain.pt", CoCa(cfg).state_dict(), cfg)  # no options: today's model
    assert load_model(plain).options == {} and load_model(plain).build().logit_bias is None
