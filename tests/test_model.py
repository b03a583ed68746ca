"""TwoTower: shapes, causality, padding invariance, rebuild from config."""

from __future__ import annotations

import pytest
import torch

from twotower.model import ModelConfig, TwoTower, bucketize

ENCODERS = ["transformer", "gru", "mean"]


def make_model(encoder: str, **kwargs) -> TwoTower:
    torch.manual_seed(0)
    cats = torch.randint(0, 4, (31, 2))
    cats[0] = 0
    config = ModelConfig(n_items=30, n_categories=4, max_categories=2, n_events=3, dim=16, max_len=8,
                         encoder=encoder, dropout=0.0, **kwargs)  # fmt: skip
    return TwoTower(config, cats).eval()


def history(batch: int = 3, length: int = 6):
    g = torch.Generator().manual_seed(1)
    items = torch.randint(1, 31, (batch, length), generator=g)
    events = torch.randint(0, 3, (batch, length), generator=g)
    dwell = torch.rand(batch, length, generator=g) * 100
    gaps = torch.rand(batch, length, generator=g) * 1e5
    return items, events, dwell, gaps


@pytest.mark.parametrize("encoder", ENCODERS)
def test_shapes(encoder):
    model = make_model(encoder)
    items, events, dwell, gaps = history()
    assert model.user_states(items, events, dwell, gaps).shape == (3, 6, 16)
    assert model.encode_user(items, events, dwell, gaps).shape == (3, 16)
    assert model.encode_items().shape == (30, 16)
    assert model.encode_new_items(torch.tensor([[1, 2], [3, 0]])).shape == (2, 16)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_causal_states(encoder):
    """Changing event t never changes the states before t."""
    model = make_model(encoder)
    items, events, dwell, gaps = history()
    before = model.user_states(items, events, dwell, gaps)
    items2 = items.clone()
    items2[:, 4] = (items2[:, 4] % 30) + 1
    after = model.user_states(items2, events, dwell, gaps)
    torch.testing.assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


@pytest.mark.parametrize("encoder", ENCODERS)
def test_right_padding_does_not_change_user_vector(encoder):
    model = make_model(encoder)
    items, events, dwell, gaps = history(batch=1, length=4)
    plain = model.encode_user(items, events, dwell, gaps)
    pad = torch.zeros(1, 3, dtype=torch.long)
    fpad = torch.full((1, 3), -1.0)
    padded = model.encode_user(torch.cat([items, pad], 1), torch.cat([events, pad], 1),
                               torch.cat([dwell, fpad], 1), torch.cat([gaps, fpad], 1))  # fmt: skip
    torch.testing.assert_close(plain, padded)
    # and the user vector is the state at the last event
    torch.testing.assert_close(plain, model.user_states(items, events, dwell, gaps)[:, -1])


def test_rebuild_from_config():
    model = make_model("transformer", normalize=True, temperature=0.1)
    clone = TwoTower(ModelConfig.from_dict(model.config.to_dict()))
    clone.load_state_dict(model.state_dict())
    clone.eval()
    items, events, dwell, gaps = history()
    torch.testing.assert_close(
        model.encode_user(items, events, dwell, gaps), clone.encode_user(items, events, dwell, gaps)
    )
    vectors = clone.encode_items()
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(30))
    assert clone.score(vectors[:2], vectors).shape == (2, 30)


def test_model_config_reads_saved_dicts():
    """The dict saved in model.pt / metrics.json / manifest.json (same keys as before the dataclass) loads; a
    missing key takes its default; an unknown key is refused; a wrong item-category table too."""
    saved = {"n_items": 30, "n_categories": 4, "max_categories": 2, "n_events": 3, "dim": 16, "max_len": 8,
             "encoder": "gru", "num_layers": 1, "num_heads": 2, "dropout": 0.0, "use_events": True,
             "use_dwell": False, "use_time": True, "normalize": True, "temperature": 0.1,
             "learn_temperature": False}  # fmt: skip
    config = ModelConfig.from_dict(saved)
    assert config.to_dict() == saved and list(config.to_dict()) == list(saved)
    assert ModelConfig.from_dict({"n_items": 5}) == ModelConfig(n_items=5)
    with pytest.raises(ValueError, match="hidden"):
        ModelConfig.from_dict({**saved, "hidden": 3})
    with pytest.raises(ValueError, match="item_categories"):
        TwoTower(config, torch.zeros(31, 3, dtype=torch.long))


def test_bucketize():
    edges = torch.tensor([1.0, 10.0])
    assert bucketize(torch.tensor([-1.0, 0.5, 1.0, 5.0, 10.0, 99.0]), edges).tolist() == [0, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_serving_path_equals_full_states_on_ragged_batch(heads):
    """forward_last (weights folded, one query) gives each row's full-sequence state at its last event."""
    model = make_model("transformer", num_layers=2, num_heads=heads)
    items, events, dwell, gaps = history(batch=4, length=7)
    lengths = torch.tensor([7, 1, 4, 2])
    pad = torch.arange(7).unsqueeze(0) >= lengths.unsqueeze(1)  # (4, 7) right padding
    items = items.masked_fill(pad, 0)
    states = model.user_states(items, events, dwell, gaps)  # (4, 7, 16)
    expected = states[torch.arange(4), lengths - 1]
    torch.testing.assert_close(model.encode_user(items, events, dwell, gaps), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("length", [1, 7])
def test_folded_attention_equals_attention(heads, length):
    """The export's folded attention (per-head (D, D) products, explicit causal mask) equals the SDPA path."""
    from twotower.encoders import CausalSelfAttention

    torch.manual_seed(heads)
    attention = CausalSelfAttention(16, heads).eval()
    with torch.no_grad():
        attention.qkv.bias.normal_()  # non-zero biases: the query and value bias terms are folded too
        attention.proj.bias.normal_()
    x = torch.randn(3, length, 16)
    with torch.no_grad():
        expected = attention(x)
        attention.folded = True
        folded = attention(x)
    torch.testing.assert_close(folded, expected, atol=1e-5, rtol=1e-4)
    assert not torch.equal(folded[:, 0], folded[:, -1]) or length == 1  # not a constant


def test_cuda_attention_leaves_cudnn_out_and_other_devices_keep_the_defaults():
    """On CUDA the causal attention runs with cuDNN's backend off (its host cost per call bounded a GPU step);
    the CPU (and an ONNX export's trace) keep the defaults. A stand-in flagged CUDA checks the switch here."""
    from types import SimpleNamespace

    import torch

    from twotower.encoders import _without_cudnn

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with _without_cudnn(SimpleNamespace(is_cuda=True)):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with _without_cudnn(torch.zeros(1)):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
