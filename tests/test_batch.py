"""Provider batch jobs: submitted now, collected later at half price, never paid twice."""

from __future__ import annotations

import json

import pytest

from captioner.plugins import get_model
from captioner.pricing import price_request

from conftest import rows, run

BATCH = ["--batch", "--poll-interval", "0.01"]


def bills(server) -> int:
    return len(server.batch_bills)


def test_a_batch_run_captions_everything_at_half_price(fake_openai, photos, db):
    result = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, *BATCH)
    assert result.exit_code == 0, result.output
    total = len(list(photos.iterdir()))
    assert len(fake_openai.batches) == 1 and fake_openai.image_requests == []  # nothing sent synchronously
    lines = fake_openai.batches["batch_1"]["lines"]
    assert len(lines) == total
    assert all(line["url"] == "/v1/chat/completions" for line in lines)
    captions = rows(db, "SELECT caption, status, input_tokens, output_tokens, cost_usd, price_in_per_m "
                        "FROM captions")
    assert len(captions) == total and all(c["status"] == "ok" for c in captions)
    model = get_model("gpt-4.1-nano")
    for c in captions:
        list_price = price_request(model, c["input_tokens"], c["output_tokens"], user_prices={}).cost_usd
        assert c["cost_usd"] == pytest.approx(list_price / 2) and c["price_in_per_m"] == pytest.approx(0.05)
    assert "at batch prices (the same work synchronously:" in result.output
    job = rows(db, "SELECT status, estimated_cost_usd, billed_cost_usd FROM batch_jobs")[0]
    assert job["status"] == "ended"
    # Estimated with 100 output tokens a photo (the fake writes 20): close, and never below the bill.
    assert 1.0 <= job["estimated_cost_usd"] / job["billed_cost_usd"] < 1.6


def test_no_wait_submits_and_a_rerun_never_submits_again(fake_openai, photos, db):
    first = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--batch", "--no-wait")
    assert first.exit_code == 0 and "collect later with: captioner batches collect 1" in first.output
    listing = json.loads(run("batches", "--db", db, "--json").output)
    assert listing[0]["status"] == "submitted" and listing[0]["provider_batch_id"] == "batch_1"
    fake_openai.batch_polls = 100  # still running at the provider
    again = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--batch", "--no-wait")
    assert "0 photos submitted" in again.output and len(fake_openai.batches) == 1
    sync = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--json")
    assert fake_openai.image_requests == []  # a synchronous run leaves them to the job too
    assert "in an open batch job" in json.dumps(json.loads(sync.output)["skipped"])
    fake_openai.batch_polls = 0
    sync = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db)  # and collects the job once it has ended
    assert "collected from open batch jobs: 9 ok" in sync.output and fake_openai.image_requests == []
    assert rows(db, "SELECT status FROM batch_jobs")[0]["status"] == "ended"
    stored = rows(db, "SELECT count(*) AS n FROM captions")[0]["n"]
    run("batches", "--db", db, "collect")  # collecting twice stores nothing twice
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == stored == bills(fake_openai)


def test_batch_size_splits_jobs_and_each_photo_is_billed_once(fake_openai, photos, db):
    result = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, *BATCH, "--batch-size", "3")
    assert result.exit_code == 0, result.output
    sizes = [len(b["lines"]) for b in fake_openai.batches.values()]
    assert max(sizes) == 3 and sum(sizes) == len(list(photos.iterdir()))
    assert bills(fake_openai) == sum(sizes) == rows(db, "SELECT count(*) AS n FROM captions")[0]["n"]


def test_item_outcomes_errors_fail_and_expired_or_missing_go_again(fake_openai, photos, db):
    outcomes = iter(["error", "expired", "missing"])
    chosen: dict[str, str] = {}
    fake_openai.item_outcome = lambda custom_id: chosen.setdefault(custom_id, next(outcomes, None))
    result = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, *BATCH)
    assert result.exit_code == 1  # one failed
    failed = rows(db, "SELECT error FROM captions WHERE status = 'failed'")
    assert failed == [{"error": "HTTP 400: Invalid image."}]
    job = rows(db, "SELECT items_ok, items_failed, items_expired FROM batch_jobs")[0]
    assert (job["items_failed"], job["items_expired"]) == (1, 2)
    again = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, *BATCH)  # expired and missing: resubmitted
    assert again.exit_code == 0, again.output
    assert len(fake_openai.batches["batch_2"]["lines"]) == 2
    ok = rows(db, "SELECT count(*) AS n FROM captions WHERE status = 'ok'")[0]["n"]
    assert ok == bills(fake_openai) == len(list(photos.iterdir())) - 1  # all but the failed one, once each


def test_a_create_call_that_lost_its_answer_is_adopted_not_repeated(fake_openai, photos, db):
    fake_openai.create_delay = 1.5
    first = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--batch", "--no-wait", "--timeout", "0.5")
    assert "the create call got no answer" in first.output
    assert rows(db, "SELECT status FROM batch_jobs")[0]["status"] == "creating"
    fake_openai.create_delay = 0
    second = run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, *BATCH)
    assert second.exit_code == 0, second.output
    assert len(fake_openai.batches) == 1  # found at the provider by its tag, never created twice
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == bills(fake_openai) == len(
        fake_openai.batches["batch_1"]["lines"])


def test_a_collect_killed_half_way_stores_the_rest_next_time_without_duplicates(fake_openai, photos, db,
                                                                               monkeypatch):
    run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--batch", "--no-wait")
    from captioner.store import Store

    real = Store.settle_batch_item
    calls = {"n": 0}

    def dies_after_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt  # the process is killed mid-collect
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Store, "settle_batch_item", dies_after_three)
    fake_openai.batch_polls = 0
    assert run("batches", "--db", db, "collect").exit_code == 130
    monkeypatch.setattr(Store, "settle_batch_item", real)
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == 3
    assert run("batches", "--db", db, "collect").exit_code == 0
    stored = rows(db, "SELECT image_id, count(*) AS n FROM captions GROUP BY image_id")
    assert len(stored) == len(fake_openai.batches["batch_1"]["lines"]) and all(r["n"] == 1 for r in stored)


def test_the_budget_counts_batch_prices_and_open_jobs(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--batch", "--no-wait", "--max-cost", "0.004")
    first = rows(db, "SELECT items, reserved_usd FROM batch_jobs")[0]
    assert 0 < first["items"] < len(list(photos.iterdir())) and first["reserved_usd"] <= 0.004
    again = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--batch", "--no-wait", "--max-cost", "0.004")
    assert "0 photos submitted" in again.output  # the open job's reservation still counts
    fake_openai.batch_polls = 0
    run("batches", "--db", db, "collect")
    spent = rows(db, "SELECT sum(cost_usd) AS s FROM captions")[0]["s"]
    assert 0 < spent <= 0.004


def test_cancel_keeps_what_finished_and_sends_the_rest_again(fake_openai, photos, db):
    run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--batch", "--no-wait")
    fake_openai.batch_polls = 100
    assert run("batches", "--db", db, "cancel", "1").exit_code == 0
    run("batches", "--db", db, "collect", "--wait", "--poll-interval", "0.01")
    job = rows(db, "SELECT status, items_ok, items_expired FROM batch_jobs")[0]
    assert job["status"] == "ended" and job["items_ok"] > 0 and job["items_expired"] > 0


def test_an_unreachable_batch_api_is_one_line_and_the_job_stays_open(fake_openai, photos, db, monkeypatch):
    run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--batch", "--no-wait")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    for command in (["collect"], ["cancel", "1"]):
        result = run("batches", "--db", db, *command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.startswith("Error: batch API: ConnectError") and result.output.count("\n") == 1
    assert rows(db, "SELECT status FROM batch_jobs")[0]["status"] == "submitted"


def test_a_key_given_to_collect_is_never_sent_to_another_provider(fake_openai, fake_anthropic, photos, db):
    run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, "--batch", "--no-wait")
    run("caption", photos, "-m", "claude-haiku-4-5", "--db", db, "--batch", "--no-wait")
    result = run("batches", "--db", db, "collect", "--key", "sk-test-not-a-real-openai-key")
    assert result.exit_code == 2 and "these open jobs use anthropic, openai" in result.output
    assert [r["status"] for r in rows(db, "SELECT status FROM batch_jobs")] == ["submitted", "submitted"]
    assert run("batches", "--db", db, "collect", "1", "--key", "sk-test-not-a-real-openai-key").exit_code == 0


def test_models_without_a_batch_api_refuse_batch(fake_ollama, photos, db):
    result = run("caption", photos, "-m", "ollama/llava:7b", "--db", db, "--batch")
    assert result.exit_code == 2 and "has no batch API" in result.output and not db.exists()


# -- the same promises with every provider's batch API ---------------------------------------------

PROVIDERS = [("gpt-4.1-nano", "fake_openai"), ("claude-haiku-4-5", "fake_anthropic"),
             ("gemini-2.5-flash-lite", "fake_gemini")]


def jobs_of(server) -> int:
    return len(getattr(server, "batches", None) or server.jobs)


@pytest.mark.parametrize("model, fixture", PROVIDERS)
def test_each_provider_captions_a_folder_at_half_price(model, fixture, request, photos, db):
    server = request.getfixturevalue(fixture)
    result = run("caption", photos, "-m", model, "--db", db, *BATCH, "--batch-size", "4")
    assert result.exit_code == 0, result.output
    total = len(list(photos.iterdir()))
    captions = rows(db, "SELECT status, input_tokens, output_tokens, cost_usd FROM captions")
    assert len(captions) == total == bills(server) and all(c["status"] == "ok" for c in captions)
    assert jobs_of(server) == 3  # 4 + 4 + 1
    priced = get_model(model)
    for c in captions:
        full = price_request(priced, c["input_tokens"], c["output_tokens"], user_prices={}).cost_usd
        assert c["cost_usd"] == pytest.approx(full / 2)
    assert image_requests(server) == 0


def image_requests(server) -> int:
    return sum(1 for r in server.received if r.images)


@pytest.mark.parametrize("model, fixture", PROVIDERS)
def test_each_provider_adopts_a_job_whose_create_answer_was_lost(model, fixture, request, photos, db):
    server = request.getfixturevalue(fixture)
    server.create_delay = 1.5
    first = run("caption", photos, "-m", model, "--db", db, "--batch", "--no-wait", "--timeout", "0.5")
    assert "the create call got no answer" in first.output, first.output
    server.create_delay = 0
    second = run("caption", photos, "-m", model, "--db", db, *BATCH)
    assert second.exit_code == 0, second.output
    assert jobs_of(server) == 1
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == bills(server) == len(list(photos.iterdir()))


@pytest.mark.parametrize("model, fixture", PROVIDERS)
def test_each_provider_fails_errors_and_resubmits_the_rest(model, fixture, request, photos, db):
    server = request.getfixturevalue(fixture)
    outcomes = iter(["error", "expired", "missing"])
    chosen: dict[str, str | None] = {}
    server.item_outcome = lambda custom_id: chosen.setdefault(custom_id, next(outcomes, None))
    first = run("caption", photos, "-m", model, "--db", db, *BATCH)
    assert first.exit_code == 1, first.output
    assert len(rows(db, "SELECT error FROM captions WHERE status = 'failed'")) == 1
    again = run("caption", photos, "-m", model, "--db", db, *BATCH)
    assert again.exit_code == 0, again.output
    ok = rows(db, "SELECT count(*) AS n FROM captions WHERE status = 'ok'")[0]["n"]
    assert ok == bills(server) == len(list(photos.iterdir())) - 1


def test_gemini_sends_a_jsonl_file_when_inline_would_be_too_big(fake_gemini, photos, db, monkeypatch):
    from captioner.default_plugins import gemini_models

    monkeypatch.setattr(gemini_models, "INLINE_BATCH_BYTES", 1000)
    result = run("caption", photos, "-m", "gemini-2.5-flash-lite", "--db", db, *BATCH)
    assert result.exit_code == 0, result.output
    (job,) = fake_gemini.jobs.values()
    assert job["from_file"] and any(f["mime"] == "application/jsonl" for f in fake_gemini.files.values())
    assert rows(db, "SELECT count(*) AS n FROM captions WHERE status = 'ok'")[0]["n"] == len(list(photos.iterdir()))


def test_cost_separates_batch_and_synchronous_spending(fake_openai, photos, db):
    run("caption", photos / "rocket.jpg", "-m", "gpt-4.1-nano", "--db", db)
    run("caption", photos, "-m", "gpt-4.1-nano", "--db", db, *BATCH)
    by_mode = {r["mode"]: r for r in json.loads(run("cost", "--db", db, "--by", "mode", "--json").output)}
    assert by_mode["sync"]["ok"] == 1 and by_mode["batch"]["ok"] == len(list(photos.iterdir())) - 1
