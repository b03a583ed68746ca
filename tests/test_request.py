"""The one request object: its checks, and that the recommender and the live service read it alike."""

from __future__ import annotations

import pytest

from serving.core.request import RecommendationRequest


def test_malformed_requests_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="k must be at least 1"):
        RecommendationRequest(k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        RecommendationRequest(k=2.5)
    with pytest.raises(TypeError, match="k must be an integer"):
        RecommendationRequest(k=True)
    with pytest.raises(ValueError, match="events has 1 values for 2 items"):
        RecommendationRequest(history=["a", "b"], events=["click"])
    with pytest.raises(ValueError, match="ts given without a history"):
        RecommendationRequest(user_id="u", ts=[1.0])


def test_keywords_and_request_objects_give_the_same_answer(rec):
    user = next(iter(rec.histories))
    request = RecommendationRequest(user_id=user, k=7, exclude_items=[rec.item_ids[0]])
    assert (
        rec.recommend(request).items
        == rec.recommend(user_id=user, k=7, exclude_items=[rec.item_ids[0]]).items
    )
    assert len(rec.recommend(request, k=3).items) == 3  # keywords replace the request's fields
    answer = rec.recommend(request)
    assert answer.model_version == rec.model_version and answer.source == "model"
