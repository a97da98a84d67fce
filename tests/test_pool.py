"""An endpoint pool: several OpenAI-compatible servers, each with its own limit, failing over."""

from __future__ import annotations

import json

import pytest
from test_faults import distinct_photos

from conftest import rows, run
from fakes import FakeOpenAI, Fault


@pytest.fixture
def three_servers(monkeypatch):
    servers = [FakeOpenAI(latency=0.02), FakeOpenAI(latency=0.02), FakeOpenAI(latency=0.3)]
    for server in servers:
        server.__enter__()
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    yield servers
    for server in servers:
        server.__exit__()


def urls(servers) -> list[str]:
    return [arg for s in servers for arg in ("--base-url", s.base_url)]


def test_a_pool_captions_every_photo_once_and_the_slow_server_gets_fewer(three_servers, photos, tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 40)
    result = run("caption", tmp_path / "lib", "-m", "openai/llava", *urls(three_servers), "--concurrency", "2",
                 "--db", db, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["ok"] == 40
    counts = [len(s.image_requests) for s in three_servers]
    assert sum(counts) == 40 and counts[2] < min(counts[0], counts[1])
    assert {url: stats["answered"] for url, stats in summary["endpoints"].items()} == {
        s.base_url: n for s, n in zip(three_servers, counts)}
    assert summary["endpoints"][three_servers[2].base_url]["median_ms"] >= 300
    stored = json.loads(rows(db, "SELECT endpoints_json FROM runs")[0]["endpoints_json"])
    assert sum(v["answered"] for v in stored.values()) == 40


def test_an_endpoint_that_dies_mid_run_is_drained_and_nothing_is_lost(three_servers, photos, tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 30)
    three_servers[0].fault_fn = lambda n: Fault(kind="reset") if 3 <= n < 12 else None  # down, then back
    result = run("caption", tmp_path / "lib", "-m", "openai/llava", *urls(three_servers), "--concurrency", "2",
                 "--db", db, "--json", "--backoff", "0.01")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["ok"] == 30
    per_image = rows(db, "SELECT image_id, count(*) AS n FROM captions GROUP BY image_id")
    assert len(per_image) == 30 and all(r["n"] == 1 for r in per_image)  # every photo once, none lost


def test_every_endpoint_must_serve_the_model_before_anything_is_read(three_servers, photos, db):
    three_servers[1].served_models = ["something-else"]
    result = run("caption", photos, "-m", "openai/llava", *urls(three_servers), "--db", db)
    assert result.exit_code == 2 and "does not serve llava" in result.output
    assert all(s.image_requests == [] for s in three_servers) and not db.exists()


def test_openai_base_url_may_list_several_endpoints(three_servers, photos, db, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", ",".join(s.base_url for s in three_servers[:2]))
    result = run("caption", photos, "-m", "openai/llava", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert all(s.image_requests for s in three_servers[:2]) and len(json.loads(result.output)["endpoints"]) == 2


def test_compare_takes_the_pool_too(three_servers, fake_gemini, photos, db):
    result = run("compare", photos, "-m", "openai/llava", "-m", "gemini-2.5-flash-lite", *urls(three_servers[:2]),
                 "--sample", "6", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    assert all(s.image_requests for s in three_servers[:2]) and not three_servers[2].image_requests
