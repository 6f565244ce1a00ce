"""Inference on a smoke-preset checkpoint: caption, retrieve, evaluate; mismatches refused."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main as cli
from pipeline.config import build_config
from pipeline.data.tokenizer import build_tokenizer, encode_captions
from pipeline.evaluate.evaluation import evaluate, read_validation_set
from pipeline.evaluate.inference import CheckpointError, load_checkpoint
from pipeline.checkpoint import save_model, tokenizer_files
from pipeline.data.shard import write_tar
from pipeline.io import write_json
from pipeline.model.coca import CoCa

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint in the trainer's format (weights, model config, tokenizer files), smoke preset."""
    root = tmp_path_factory.mktemp("ckpt")
    cfg = build_config({"preset": "smoke"}).model
    tokenizer = build_tokenizer("train", cfg.vocab_size, CAPTIONS * 20)
    tokenizer.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    model = CoCa(cfg)
    with torch.no_grad():  # an untrained model that says "red" at every step: what decoding must print
        model.multimodal.head.bias.zero_()
        model.multimodal.head.bias[tokenizer.convert_tokens_to_ids("▁red")] = 20.0
    path = save_model(root / "final.pt", model.state_dict(), cfg, tokenizer_dir=root / "tokenizer",
                      mlflow_run_id="run123", phase="finetune", dataset="mscoco", epoch=3, step=12, weights_of="best")
    images = root / "images"
    images.mkdir()
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (40 + 10 * i, 30), colour).save(images / f"{i}.jpg")
    return root, path, images, cfg, tokenizer


def test_caption_prints_one_caption_per_image(checkpoint, capsys):
    _, path, images, cfg, _ = checkpoint
    files = sorted(str(p) for p in images.iterdir())
    cli(["caption", *files, "--checkpoint", str(path), "--beams", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == files
    # the biased model generates "red" until the length limit (context_length - 1 tokens), decoded as text
    captions = [line.split("\t")[1] for line in lines]
    assert captions == [" ".join(["red"] * (cfg.context_length - 1))] * len(files)


def test_every_inference_command_says_which_model_it_used(checkpoint, capsys):
    _, path, images, cfg, _ = checkpoint
    said = (f"model: grr (rmsnorm/geglu/rope2d), fine-tuned on mscoco, the best epoch's weights (epoch 3, step 12), "
            f"MLflow run run123, from {path}")
    cli(["caption", str(next(images.iterdir())), "--checkpoint", str(path)])
    assert capsys.readouterr().err == f"grr-coca caption: {said}\n"  # on stderr: stdout stays path<TAB>caption
    cli(["retrieve", "--images", str(images), "--query", "a red circle", "--checkpoint", str(path)])
    assert capsys.readouterr().err == f"grr-coca retrieve: {said}\n"


def test_retrieve_ranks_every_image(checkpoint, capsys):
    _, path, images, _, _ = checkpoint
    cli(["retrieve", "--images", str(images), "--query", "a red circle", "--checkpoint", str(path)])
    rows = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [int(r[0]) for r in rows] == [1, 2, 3]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert sorted(r[2] for r in rows) == sorted(str(p) for p in images.iterdir())


def test_a_checkpoint_whose_tokenizer_does_not_match_is_refused(checkpoint, tmp_path):
    root, path, _, cfg, _ = checkpoint
    ckpt = torch.load(path, weights_only=True)
    other = build_tokenizer("train", cfg.vocab_size + 8, CAPTIONS * 20)
    other.save_pretrained(tmp_path / "tok")
    ckpt["tokenizer_files"] = tokenizer_files(tmp_path / "tok")
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="tokenizer does not match the model configuration.*vocab_size"):
        load_checkpoint(tmp_path / "bad.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["dim"] = 64
    torch.save(ckpt, tmp_path / "bad2.pt")
    with pytest.raises(CheckpointError, match="weights do not match its model configuration"):
        load_checkpoint(tmp_path / "bad2.pt")
    with pytest.raises(SystemExit, match="no such checkpoint"):
        cli(["caption", "x.jpg", "--checkpoint", str(tmp_path / "missing.pt")])


def test_evaluation_groups_captions_by_image(checkpoint, tmp_path):
    _, path, _, cfg, tokenizer = checkpoint
    shards = tmp_path / "val"
    shards.mkdir()
    tokens, _ = encode_captions(tokenizer, CAPTIONS * 2, cfg.context_length)
    samples = []
    for i in range(8):  # 4 images x 2 captions, in the shard stage's format
        image = io.BytesIO()
        Image.new("RGB", (cfg.image_size,) * 2, (60 * (i % 4), 0, 0)).save(image, format="JPEG")
        buffer = io.BytesIO()
        np.save(buffer, tokens[i])
        samples.append((f"s{i:03d}", {"jpg": image.getvalue(), "tokens.npy": buffer.getvalue(),
                                      "txt": CAPTIONS[i % 4].encode(), "json": json.dumps({"image_id": str(i % 4)}).encode()}))
    write_tar(shards / "shard-0.tar", samples)
    write_json(shards / "manifest.json", {"shards": [{"file": "shard-0.tar", "samples": 8}],
                                          "image_size": cfg.image_size, "context_length": cfg.context_length})
    val = read_validation_set(shards)
    assert val.image_ids == ["0", "1", "2", "3"] and val.caption_image == [0, 1, 2, 3] * 2
    assert val.references["2"] == [CAPTIONS[2]] * 2
    metrics, shown = evaluate(load_checkpoint(path), val, num_beams=2, batch_size=3)
    assert (metrics["images"], metrics["captions"]) == (4, 8)
    assert set(metrics) >= {"bleu4", "cider", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"}
    # 4 images and 8 captions: text->image R@5 and R@10 and image->text R@10 hold whatever the model.
    assert metrics["t2i_r5"] == metrics["t2i_r10"] == metrics["i2t_r10"] == 100.0
    assert 0.0 <= metrics["bleu4"] <= 1.0 and metrics["cider"] >= 0.0
    assert len(shown) == 4 and shown[0]["references"] == [CAPTIONS[0]] * 2


def test_retrieve_skips_an_unreadable_image(checkpoint, tmp_path, capsys):
    _, path, images, _, _ = checkpoint
    folder = tmp_path / "images"
    folder.mkdir()
    for image in images.iterdir():
        (folder / image.name).write_bytes(image.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    cli(["retrieve", "--images", str(folder), "--query", "a red circle", "--checkpoint", str(path)])
    captured = capsys.readouterr()
    ranked = [line.split("\t")[2] for line in captured.out.strip().splitlines()]
    assert sorted(ranked) == sorted(str(p) for p in folder.iterdir() if p.name != "broken.jpg")
    assert "skipped" in captured.err and "broken.jpg" in captured.err


def test_run_outside_a_repository_creates_no_tracking_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit, match=r"no MLflow store at .*mlflow.db"):
        cli(["caption", "x.jpg", "--run", "0123456789abcdef"])
    assert not (tmp_path / "mlflow.db").exists()


def test_user_errors_are_one_line_without_traceback(tmp_path):
    """A missing source or an unusable download says what and where, exit 1, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    grr_coca = Path(sys.executable).parent / "grr-coca"
    result = subprocess.run([str(grr_coca), "download", "roco", "--retry-failed", "--out", str(tmp_path / "none"),
                             "--report", str(tmp_path / "r.json")], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"grr-coca: error: {tmp_path / 'none'}: nothing to retry: no download here yet (run the download first)"]


def test_the_caption_samples_table_reads_back_as_written():
    from pipeline.evaluate.samples import read_samples_markdown, samples_markdown

    shown = [{"image_id": "7", "generated": "a | b", "references": ["one", "two | three"]},
             {"image_id": "8", "generated": "c", "references": ["d"]}]
    assert read_samples_markdown(samples_markdown("t", shown)) == {
        s["image_id"]: {"generated": s["generated"], "references": s["references"]} for s in shown}


def test_inference_prepares_images_with_the_checkpoints_resize_mode(checkpoint, tmp_path):
    root, path, _, cfg, _ = checkpoint
    wide = tmp_path / "wide.png"  # red | green | blue stripes, three times wider than high
    pixels = np.zeros((30, 90, 3), dtype=np.uint8)
    pixels[:, :30, 0], pixels[:, 30:60, 1], pixels[:, 60:, 2] = 255, 255, 255
    Image.fromarray(pixels).save(wide)
    assert load_checkpoint(path).checkpoint.resize_mode == "naive"  # a checkpoint that does not say: the paper's
    payload = torch.load(path, weights_only=True)
    cropped = tmp_path / "crop.pt"
    torch.save({**payload, "resize_mode": "crop"}, cropped)
    naive, crop = load_checkpoint(path).load_images([wide]), load_checkpoint(cropped).load_images([wide])
    assert naive.shape == crop.shape == (1, 3, cfg.image_size, cfg.image_size)
    third = cfg.image_size // 3
    red = naive[0, 0] > 0  # normalised: red channel above the mean where the red stripe is
    assert red[:, : third - 1].all() and not red[:, third + 2 :].any()  # naive keeps the red third on the left
    assert not (crop[0, 0, :, 2:-2] > 0).any()  # crop keeps only the green centre
    assert (crop[0, 1, :, 2:-2] > 0).all()


def test_caption_sampling_options_reach_generation(checkpoint, capsys):
    _, path, images, _, _ = checkpoint
    files = sorted(str(p) for p in images.iterdir())
    cli(["caption", *files, "--checkpoint", str(path), "--method", "greedy", "--max-length", "3"])
    assert [line.split("\t")[1] for line in capsys.readouterr().out.strip().splitlines()] == ["red red red"] * 3
    runs = []
    for _ in range(2):
        cli(["caption", *files, "--checkpoint", str(path), "--method", "sample", "--temperature", "50",
             "--top-k", "20", "--seed", "5", "--min-length", "4"])
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1]  # the same seed: the same captions
    assert all(len(line.split("\t")[1].split()) >= 2 for line in runs[0].strip().splitlines())
    with pytest.raises(SystemExit, match="top_p"):
        cli(["caption", *files, "--checkpoint", str(path), "--method", "sample", "--top-p", "2"])


def test_classify_prints_the_best_labels_with_their_probabilities(checkpoint, capsys):
    _, path, images, _, _ = checkpoint
    files = sorted(str(p) for p in images.iterdir())
    cli(["classify", *files, "--labels", "red circle, blue square,green triangle", "--templates", "demo",
         "--checkpoint", str(path)])
    captured = capsys.readouterr()
    assert "7 template(s)" in captured.err
    rows = [line.split("\t") for line in captured.out.strip().splitlines()]
    assert [r[0] for r in rows] == files
    for r in rows:
        labels, probs = r[1::2], [float(p) for p in r[2::2]]
        assert sorted(labels) == ["blue square", "green triangle", "red circle"]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(SystemExit, match="two or more different"):
        cli(["classify", files[0], "--labels", "cat", "--checkpoint", str(path)])
