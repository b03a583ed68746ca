"""Softmax losses: full vs sampled, accidental hits, logQ, the loss going down, and the training step's
targets located on the host."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import with_user_features
from twotower.losses import SoftmaxLoss
from twotower.model import ModelConfig, TwoTower


def small_model(n_items: int = 20) -> TwoTower:
    torch.manual_seed(0)
    return TwoTower(ModelConfig(n_items=n_items, dim=8, max_len=4, encoder="mean", dropout=0.0))


def test_full_softmax_equals_cross_entropy_over_catalog():
    model = small_model()
    users = torch.randn(5, 8)
    targets = torch.tensor([1, 2, 3, 20, 7])
    loss = SoftmaxLoss(mode="full")(model, users, targets)
    expected = F.cross_entropy(users @ model.encode_items().T, targets - 1)
    torch.testing.assert_close(loss, expected)


def test_sampled_in_batch_only_without_logq_matches_manual():
    model = small_model()
    users = torch.randn(4, 8)
    targets = torch.tensor([3, 5, 3, 9])
    loss = SoftmaxLoss(mode="sampled", num_uniform_negatives=0, logq_correction=False)(model, users, targets)
    candidates = torch.tensor([3, 5, 9])
    logits = users @ model.encode_items(candidates).T
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([0, 1, 0, 2])))


def test_accidental_hits_are_masked_and_logq_applied():
    model = small_model(n_items=3)
    loss_fn = SoftmaxLoss(mode="sampled", num_uniform_negatives=64, logq_correction=True)
    loss_fn.set_item_frequencies(torch.tensor([0, 1, 1, 2]))
    users = torch.randn(2, 8)
    targets = torch.tensor([1, 3])
    torch.manual_seed(0)
    _, logits, labels, hits = loss_fn._sampled_logits(model, users, targets, n_items=3)
    assert labels.tolist() == [0, 1]
    candidates = torch.cat([torch.tensor([1, 3]), torch.randint(1, 4, (64,), generator=torch.manual_seed(0))])
    # a uniform draw equal to the row's own target is a hit (the label column too, until the loss clears it)
    assert hits[0].tolist() == (candidates == 1).tolist() and hits[1].tolist() == (candidates == 3).tolist()
    # logQ: in-batch column 0 (item 1, p = 0.25) corrected by log(2 * 0.25 + 64 / 3)
    raw = users @ model.encode_items(torch.tensor([1])).T
    torch.testing.assert_close(logits[:, 0:1], raw - torch.log(torch.tensor(2 * 0.25 + 64 / 3)))
    # the loss masks every hit but the labelled column
    masked = hits.clone()
    masked[0, 0] = masked[1, 1] = False
    expected = F.cross_entropy(logits.masked_fill(masked, torch.finfo(logits.dtype).min), labels)
    torch.manual_seed(0)
    torch.testing.assert_close(loss_fn(model, users, targets), expected)


def test_weights_scale_the_loss():
    model = small_model()
    users, targets = torch.randn(3, 8), torch.tensor([1, 2, 3])
    loss_fn = SoftmaxLoss(mode="full")
    per_row = F.cross_entropy(users @ model.encode_items().T, targets - 1, reduction="none")
    weights = torch.tensor([1.0, 0.0, 3.0])
    torch.testing.assert_close(loss_fn(model, users, targets, weights), (per_row * weights).sum() / 4)


def test_loss_decreases_when_training(tiny_data, tiny_split):
    from twotower.data.sequences import SequenceArrays, TrainWindows

    torch.manual_seed(0)
    windows = TrainWindows(tiny_data, tiny_split, SequenceArrays.from_log(tiny_data), max_len=10)
    batch = windows.collate([windows[i] for i in range(len(windows))])
    config = ModelConfig(
        n_items=tiny_data.n_items, n_events=tiny_data.n_events, dim=16, max_len=10, dropout=0.0
    )
    model = TwoTower(config)
    for mode in ("full", "sampled"):
        loss_fn = SoftmaxLoss(mode=mode, num_uniform_negatives=16)
        loss_fn.set_item_frequencies(torch.from_numpy(windows.target_counts(tiny_data.n_items)))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        mask = batch["targets"] > 0
        losses = []
        for _ in range(30):
            states = model.user_states(batch["items"], batch["events"], batch["dwell"], batch["gaps"])
            loss = loss_fn(model, states[mask], batch["targets"][mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        assert losses[-1] < 0.8 * losses[0], (mode, losses[0], losses[-1])


def test_window_history_seen_by_hand():
    from twotower.losses import WindowHistory

    inputs = torch.tensor([[3, 1, 3, 0], [2, 2, 0, 0]])  # (B=2, L=4), 0 = pad
    rows, positions = torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1])
    seen = WindowHistory(inputs, rows, positions).seen(None, n_items=4)  # (3, 4) over items 1..4
    assert seen.tolist() == [
        [False, False, True, False],  # window 0 at position 0 has seen item 3
        [True, False, True, False],  # position 2: items 3, 1, 3
        [False, True, False, False],  # window 1 at position 1: item 2
    ]
    cand = WindowHistory(inputs, rows, positions).seen(torch.tensor([1, 4, 3]), n_items=4)
    assert cand.tolist() == [[False, False, True], [True, False, True], [False, False, False]]


def test_mask_history_drops_seen_negatives_but_keeps_a_repeated_target():
    model = small_model(n_items=5)
    users = torch.randn(2, 8)
    inputs = torch.tensor([[1, 2]])
    history = WindowHistoryFor(inputs, rows=[0, 0], positions=[0, 1])
    targets = torch.tensor([2, 1])  # row 1 repeats item 1, which it has seen: it stays the label
    loss = SoftmaxLoss(mode="full", mask_history=True)(model, users, targets, history=history)
    logits = users @ model.encode_items().T
    logits[0, 0] = float("-inf")  # row 0 has seen item 1
    logits[1, 1] = float("-inf")  # row 1 has seen items 1 (its target) and 2
    torch.testing.assert_close(loss, F.cross_entropy(logits, targets - 1))


def test_sampled_loss_masks_hits_and_history_in_one_pass_but_never_the_label():
    """Sampled softmax with both masks: a uniform draw of the row's target and an item of its history are
    not negatives, and the labelled column stays even when the history holds the target (a repeat)."""
    model = small_model(n_items=6)
    users = torch.randn(3, 8)
    inputs = torch.tensor([[1, 2, 3]])
    history = WindowHistoryFor(inputs, rows=[0, 0, 0], positions=[0, 1, 2])
    targets = torch.tensor([2, 1, 4])  # row 1 repeats item 1, which it has seen
    loss_fn = SoftmaxLoss(mode="sampled", num_uniform_negatives=24, mask_history=True)
    loss_fn.set_item_frequencies(torch.ones(7))
    torch.manual_seed(3)
    candidates, logits, labels, hits = loss_fn._sampled_logits(model, users, targets, n_items=6)
    blocked = hits | history.seen(candidates, 6)
    blocked[torch.arange(3), labels] = False
    expected = F.cross_entropy(logits.masked_fill(blocked, torch.finfo(logits.dtype).min), labels)
    assert hits.sum() > 3 and blocked[1].sum() > 0  # the draw holds hits, and row 1's history blocks some
    torch.manual_seed(3)
    torch.testing.assert_close(loss_fn(model, users, targets, history=history), expected)


def WindowHistoryFor(inputs, rows, positions):  # noqa: N802 - reads like the class it builds
    from twotower.losses import WindowHistory

    return WindowHistory(inputs, torch.tensor(rows), torch.tensor(positions))


@pytest.mark.parametrize("features", [False, True])
@pytest.mark.parametrize("mode", ["full", "sampled"])
def test_targets_located_on_the_host_give_the_same_loss_and_gradients_and_read_nothing_back(
    tiny_data, tiny_split, features, mode
):
    """A batch's targets located on the host (`target_layout`, as TrainWindows collates): the step then gives
    the loss and gradients of the device-side `nonzero` path exactly, and neither its forward nor its backward
    runs an operator whose output size waits on device data (nonzero, boolean indexing, unique)."""
    import contextlib

    from torch.utils._python_dispatch import TorchDispatchMode

    from twotower.data.layout import target_layout
    from twotower.data.sequences import SequenceArrays, TrainWindows
    from twotower.lit_module import TwoTowerModule
    from twotower.model_config import ModelConfig

    data = with_user_features(tiny_data) if features else tiny_data
    windows = TrainWindows(data, tiny_split, SequenceArrays.from_log(data), max_len=5,
                           start_targets=3 if features else 1)  # fmt: skip
    batch = windows.collate([windows[i] for i in range(8)])
    torch.manual_seed(0)
    config = ModelConfig(n_items=data.n_items, n_events=data.n_events, dim=8, max_len=5, dropout=0.0,
                         user_feature_sizes=(4,) if features else ())  # fmt: skip
    loss = SoftmaxLoss(mode=mode, num_uniform_negatives=16, mask_history=True)
    loss.set_item_frequencies(torch.ones(data.n_items + 1))
    module = TwoTowerModule(TwoTower(config), loss, torch.optim.Adam)

    class DataDependent(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            bool_index = "index" in name and any(
                isinstance(a, torch.Tensor) and a.dtype == torch.bool
                for arg in args if isinstance(arg, list | tuple) for a in arg
            )  # fmt: skip
            if "nonzero" in name or "unique" in name or bool_index:
                self.seen.add(name)
            return func(*args, **(kwargs or {}))

    def run(step_batch, watch=False):
        module.zero_grad()
        torch.manual_seed(1)  # the same uniform draws on both paths
        with DataDependent() if watch else contextlib.nullcontext() as mode_:
            value = module._shared_step(step_batch)
            value.backward()
        grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
        return value.detach(), grads, (mode_.seen if watch else None)

    bare = {
        k: v
        for k, v in batch.items()
        if not k.startswith(("target_index", "target_unique", "target_inverse"))
    }
    assert len(bare) < len(batch)  # TrainWindows locates the targets as it collates (the loader's workers)
    for key, value in target_layout(bare).items():
        assert torch.equal(batch[key], value), key
    plain, plain_grads, _ = run(bare)
    located, located_grads, seen = run(batch, watch=True)
    torch.testing.assert_close(located, plain, rtol=0, atol=0)
    assert len(located_grads) == len(plain_grads) > 0
    for a, b in zip(located_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert seen == set(), seen
    _, _, seen_plain = run(bare, watch=True)  # the check can fail: the device-side path trips it
    assert seen_plain


def test_update_average_is_averaged_model_update_parameters_without_reading_the_count():
    """The EMA step the module takes (the count kept on the host) against AveragedModel's own, which reads
    ``n_averaged`` back twice a step: the same weights and count after every update, the first a copy."""
    import functools

    from torch.optim.swa_utils import AveragedModel

    from twotower.lit_module import ema_update, update_average

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    averaged = functools.partial(ema_update, decay=0.9)
    ours, theirs = AveragedModel(net, multi_avg_fn=averaged), AveragedModel(net, multi_avg_fn=averaged)
    with torch.no_grad():
        for p in ours.module.parameters():
            p.fill_(7.0)  # not yet a copy: the first update must overwrite this, not average it in
        theirs.load_state_dict(ours.state_dict())
    for step in range(4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        update_average(ours, net, first=step == 0)
        theirs.update_parameters(net)
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True))
        assert int(ours.n_averaged) == int(theirs.n_averaged) == step + 1
    with pytest.raises(ValueError, match="parameters only"):
        update_average(AveragedModel(net, multi_avg_fn=averaged, use_buffers=True), net, first=True)
    with pytest.raises(ValueError, match="with a multi_avg_fn"):
        update_average(AveragedModel(net), net, first=True)
