"""Raw histories -> model inputs: the short path for ids alone against the full path (its twin)."""

from __future__ import annotations

import numpy as np
import pytest


def test_ids_alone_resolve_as_the_full_path_does(rec):
    """The short path for a history of known ids alone gives the full path's arrays (reached here by passing
    dwell that is all unknown, which changes nothing); misses, numbers and bad ids still take the full path."""
    ids = [rec.item_ids[r] for r in (3, 0, 7, 3, 12)]
    short, full = rec.resolve(ids), rec.resolve(ids, dwell=[None] * len(ids))
    for name in ("rows", "events", "dwell", "gaps"):
        a, b = getattr(short.history, name), getattr(full.history, name)
        assert a.dtype == b.dtype and a.tolist() == b.tolist(), name
    assert (short.unknown, short.live_seen, short.n_events) == ([], set(), 5)

    class Number:  # an id sent as another type (a JSON number for digit ids): found by its text
        def __init__(self, text):
            self.text = text

        def __str__(self):
            return self.text

    numbers = rec.resolve([ids[0], Number(ids[1]), *ids[2:], "ghost"])
    assert numbers.history.rows.tolist() == [3, 0, 7, 3, 12] and numbers.unknown == ["ghost"]
    assert numbers.n_events == 6
    one = rec.resolve(ids[:1])
    assert one.history.rows.tolist() == [3] and one.history.rows.dtype == np.int64
    assert len(rec.resolve([]).history) == 0
    with pytest.raises(TypeError):
        rec.resolve([ids[0], ["not", "an", "id"]])
