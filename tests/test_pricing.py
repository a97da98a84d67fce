"""Prices: genai-prices per request, our alias fixes, the user's price file, unknown is None."""

from __future__ import annotations

import json

import pytest

from captioner import config, pricing
from captioner.plugins import get_model


def test_known_model_is_priced_per_request():
    cost = pricing.price_request(get_model("gpt-4o-mini"), 1_000_000, 1_000_000)
    assert cost.cost_usd == pytest.approx(0.15 + 0.60)
    assert (cost.price_in_per_m, cost.price_out_per_m) == (pytest.approx(0.15), pytest.approx(0.60))


def test_dated_snapshot_name_is_priced_like_its_model():
    cost = pricing.price_request(get_model("gpt-4o-mini-2024-07-18"), 1000, 100)
    assert cost.cost_usd == pytest.approx(1000 * 0.15e-6 + 100 * 0.60e-6)


def test_flash_8b_is_not_priced_as_flash():
    # genai-prices' own match would give gemini-1.5-flash ($0.075 / $0.30).
    assert pricing.price_ref("gemini-1.5-flash-8b") == "gemini-flash-1.5-8b"
    assert pricing.price_ref("gemini-1.5-flash-8b-001") == "gemini-flash-1.5-8b"
    assert pricing.price_ref("gemini-1.5-flash") == "gemini-1.5-flash"


def test_unknown_model_is_unpriced_not_free():
    cost = pricing.price_request(get_model("gpt-unknown-9"), 1000, 100)
    assert cost.cost_usd is None and not cost.known


def test_a_self_hosted_model_costs_nothing_unless_priced():
    assert pricing.price_request(get_model("openai/my-local-llava"), 1000, 100).cost_usd == 0.0


def test_a_per_image_price_prices_a_self_hosted_gpu():
    path = config.prices_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"openai/my-local-llava": {"per_image": 0.0002}}))
    assert pricing.price_request(get_model("openai/my-local-llava"), 1000, 100).cost_usd == pytest.approx(0.0002)


def test_user_price_file_prices_a_custom_model():
    path = config.prices_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"openai/my-local-llava": {"input": 0.5, "output": 1.5}}))
    cost = pricing.price_request(get_model("openai/my-local-llava"), 2_000_000, 1_000_000)
    assert cost.cost_usd == pytest.approx(2 * 0.5 + 1.5)
    assert cost.source == "user"


def test_broken_price_file_is_a_config_error():
    path = config.prices_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    with pytest.raises(config.ConfigError, match="price file"):
        pricing.load_user_prices()
