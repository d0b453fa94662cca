"""The default model's word-level text encoder."""
import pytest
import torch

from flowcache_core.errors import FlowcacheError
from flowcache_core.models.text import (TextEncoder, WordTextEncoder, load_text_encoder,
                                       save_text_encoder, split_words)
from flowcache_core.training.world import world_text_config, WORLD_VOCAB, sample_caption_batch

PROMPTS = ["a red square moves left", "", "A RED, zorg-square!", " ".join(["blue"] * 40)]


def test_tokenisation_unknown_words_and_mask():
    enc = WordTextEncoder(world_text_config())
    assert split_words("A RED, zorg-square!") == ["a", "red", "zorg", "square"]
    ids, mask = enc.tokenize(PROMPTS)
    assert ids.shape == mask.shape == (4, 24) and ids.dtype == mask.dtype == torch.int64
    assert mask.sum(1).tolist() == [5, 0, 4, 24]
    vocab = enc.config.vocab
    assert [vocab[i] for i in ids[2, :4]] == ["a", "red", "<unk>", "square"]
    assert (ids[mask == 0] == 0).all()
    assert set(WORLD_VOCAB) <= set(vocab)
    for cap in sample_caption_batch(0, 200):
        i, m = enc.tokenize([cap])
        assert (i[m == 1] > 1).all(), cap  # every caption word is known
        assert m.sum() < 24, cap


def test_encode_shapes_mask_and_no_nan():
    enc = WordTextEncoder(world_text_config()).eval()
    assert isinstance(enc, TextEncoder) and enc.dim == 64 and enc.max_length == 24
    x, mask = enc.encode(PROMPTS)
    assert x.shape == (4, 24, 64) and x.dtype == torch.float32 and mask.dtype == torch.int64
    assert torch.isfinite(x).all()
    assert (x[1] == 0).all() and (x[0, 5:] == 0).all() and (x[0, :5].abs().sum(-1) > 0).all()
    # padding does not change the real tokens
    alone, _ = enc.encode(PROMPTS[:1])
    assert torch.allclose(alone[0], x[0], atol=1e-5)


def test_init_is_deterministic_and_trainable():
    a, b = WordTextEncoder(world_text_config()), WordTextEncoder(world_text_config())
    c = WordTextEncoder(world_text_config(seed=1))
    for (k, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), k
    assert not torch.equal(a.tok_embed.weight, c.tok_embed.weight)
    x, _ = a.encode(["a red square moves left"])
    x.pow(2).sum().backward()
    assert a.tok_embed.weight.grad.abs().sum() > 0


def test_save_load_round_trip(tmp_path):
    enc = WordTextEncoder(world_text_config(dim=32, heads=2, layers=1, max_length=16, seed=3)).eval()
    with torch.no_grad():
        enc.pos_embed.add_(1.0)  # not the init
    save_text_encoder(enc, str(tmp_path))
    back = load_text_encoder(str(tmp_path)).eval()
    assert back.config == enc.config
    x, m = enc.encode(PROMPTS)
    y, n = back.encode(PROMPTS)
    assert torch.equal(x, y) and torch.equal(m, n)


def test_load_errors(tmp_path):
    with pytest.raises(FlowcacheError, match="missing"):
        load_text_encoder(str(tmp_path))
    save_text_encoder(WordTextEncoder(world_text_config()), str(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    save_text_encoder(WordTextEncoder(world_text_config(dim=32)), str(other))
    (tmp_path / "text_encoder.safetensors").write_bytes((other / "text_encoder.safetensors").read_bytes())
    with pytest.raises(FlowcacheError, match="do not fit"):
        load_text_encoder(str(tmp_path))
    (tmp_path / "text_encoder.json").write_text("{not json")
    with pytest.raises(FlowcacheError, match="unreadable"):
        load_text_encoder(str(tmp_path))
    with pytest.raises(FlowcacheError):
        world_text_config(dim=30, heads=4)
    with pytest.raises(FlowcacheError):
        save_text_encoder(WordTextEncoder(world_text_config()), str(tmp_path / "nowhere"))
