"""The run's stages on their own: run control, budget, send with retries, ledger, planning."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3

import httpx
import pytest

from captioner.budget import Budget
from captioner.control import EARLY_FAILURE_LIMIT, RunControl
from captioner.ledger import Ledger
from captioner.models import FAILED, OK, CaptionRequest, CaptionResult, Model, ProviderError
from captioner.plan import make_plan
from captioner.plugins import get_model
from captioner.recipe import Recipe
from captioner.report import RunSummary
from captioner.send import AdaptiveLimit, Answer, NoAnswer, NotSent, RateCap, RetryPolicy, Sender
from captioner.store import Store

REQUEST = CaptionRequest(jpeg=b"\xff\xd8 not really a jpeg", width=4, height=3, prompt="Describe.",
                         key="sk-test-not-a-real-key-123")


class ScriptedModel(Model):
    """Answers each call with the next item of a script: a result, or an exception to raise."""

    model_id = "scripted"
    provider = "local"
    needs_key = False

    def __init__(self, *script):
        self.script = list(script)
        self.calls = 0

    def image_tokens(self, width, height, options):
        return 100

    async def caption(self, request, client):
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def send(model, control=None, retries=2):
    control = control or RunControl(model.model_id)

    async def go():
        async with httpx.AsyncClient() as client:
            sender = Sender(model, client, control, RetryPolicy(retries=retries, backoff_base=0),
                            AdaptiveLimit(2), RateCap(None))
            return await sender.send(REQUEST)

    return asyncio.run(go()), control


# -- run control ---------------------------------------------------------------

def test_control_the_most_serious_reason_names_the_end():
    control = RunControl("m")
    control.budget_reached(0.05)
    assert control.stopping and control.status == "budget" and "0.05" in control.message
    control.interrupt()
    assert control.status == "interrupted" and "0.05" in control.message
    control.fatal("HTTP 401: bad key")
    assert control.status == "failed" and control.message == "HTTP 401: bad key"
    control.budget_reached(0.05)
    assert control.status == "failed"


def test_control_second_interrupt_abandons_requests_in_flight():
    control = RunControl("m")
    assert control.interrupt() is False
    assert control.interrupt() is True


def test_control_early_failures_stop_the_run_until_one_answer_arrives():
    control = RunControl("m")
    for _ in range(EARLY_FAILURE_LIMIT - 1):
        assert control.failed_without_answer("connection refused") is True
    assert not control.stopping
    assert control.failed_without_answer("connection refused") is True
    assert control.status == "failed" and "first 3 requests to m all failed" in control.message

    answered = RunControl("m")
    answered.answered_ok()
    assert answered.failed_without_answer("timeout") is False
    assert not answered.stopping


# -- budget --------------------------------------------------------------------

def test_budget_reserves_the_worst_case_and_settles_with_the_bill():
    budget = Budget(0.01, get_model("gpt-4.1-nano"), {"max_tokens": "400"}, user_prices={})
    worst = budget.worst_case(1000)
    # 1,100 input (estimate + 10%) + 50 at $0.10/M and 400 output at $0.40/M.
    assert worst == pytest.approx(1150 * 0.10e-6 + 400 * 0.40e-6)

    async def go():
        assert await budget.reserve(worst)
        await budget.settle(worst, 0.00002)
        assert budget.reserved == pytest.approx(0) and budget.spent == pytest.approx(0.00002)
        assert not await budget.reserve(0.0100)  # would pass the cap, and nothing in flight can free room

    asyncio.run(go())


def test_a_request_that_does_not_fit_waits_for_those_in_flight_to_settle():
    budget = Budget(0.01, get_model("gpt-4.1-nano"), {}, user_prices={})

    async def go():
        assert await budget.reserve(0.006)
        waiting = asyncio.create_task(budget.reserve(0.006))  # does not fit while 0.006 is reserved
        await asyncio.sleep(0.01)
        assert not waiting.done()
        await budget.settle(0.006, 0.001)  # the first one cost far less than its worst case
        assert await waiting is True
        assert budget.spent + budget.reserved == pytest.approx(0.007)

    asyncio.run(go())


def test_no_budget_never_refuses():
    budget = Budget(None, get_model("gpt-4.1-nano"), {})
    assert budget.worst_case(10**6) == 0.0 and asyncio.run(budget.reserve(1e9))


# -- send ------------------------------------------------------------------------

def test_send_retries_retryable_faults_then_answers():
    ok = CaptionResult(text="A cat.", input_tokens=10, output_tokens=3)
    model = ScriptedModel(ProviderError("HTTP 503", retryable=True), httpx.ReadTimeout("slow"), ok)
    outcome, _ = send(model)
    assert isinstance(outcome, Answer) and outcome.result == ok and model.calls == 3


def test_send_gives_up_after_the_last_retry_with_the_last_error():
    model = ScriptedModel(*[ProviderError("HTTP 500: boom", retryable=True, status_code=500)] * 3)
    outcome, control = send(model, retries=2)
    assert outcome == NoAnswer("HTTP 500: boom (after 3 attempts)", maybe_billed=False) and not control.stopping


def test_send_does_not_retry_a_final_error():
    model = ScriptedModel(ProviderError("HTTP 400: bad image", status_code=400), CaptionResult(text="never"))
    outcome, _ = send(model)
    assert outcome == NoAnswer("HTTP 400: bad image") and model.calls == 1


def test_a_fatal_error_stops_the_run_and_the_request_counts_as_not_sent():
    model = ScriptedModel(ProviderError("HTTP 401: invalid key", fatal=True))
    outcome, control = send(model)
    assert isinstance(outcome, NotSent)
    assert control.status == "failed" and "invalid key" in control.message


def test_nothing_is_sent_once_the_run_is_stopping():
    model = ScriptedModel(CaptionResult(text="never"))
    control = RunControl(model.model_id)
    control.interrupt()
    outcome, _ = send(model, control)
    assert isinstance(outcome, NotSent) and model.calls == 0


# -- ledger ----------------------------------------------------------------------

@pytest.fixture
def store(db):
    store = Store(str(db))
    yield store
    store.close()


def ledger_for(store, control):
    model = get_model("gpt-4.1-nano")
    run_id = store.start_run(model.model_id, "Describe.", {})
    image_ids = [store.save_image(f"/photos/{n}.jpg", hashlib.sha256(bytes([n])).hexdigest(), 10, 1.0)
                 for n in range(4)]
    recipe = Recipe(model.model_id, "Describe.")
    return Ledger(store, model, recipe, RunSummary(run_id, model.model_id), control), image_ids


def statuses(db):
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM captions ORDER BY id")]


def test_ledger_records_and_prices_an_answer_at_once(store, db):
    ledger, ids = ledger_for(store, RunControl("gpt-4.1-nano"))
    answer = CaptionResult(text="A cat.", input_tokens=1000, output_tokens=100)
    cost = asyncio.run(ledger.record(ids[0], "/photos/0.jpg", answer, 250, estimated=990))
    assert cost == pytest.approx(1000 * 0.10e-6 + 100 * 0.40e-6)
    assert statuses(db) == [OK]
    assert ledger.summary.ok == 1 and ledger.summary.cost_usd == pytest.approx(cost)


def test_ledger_holds_early_failures_and_records_them_after_an_answer(store, db):
    ledger, ids = ledger_for(store, RunControl("gpt-4.1-nano"))
    asyncio.run(ledger.record_no_answer(ids[0], "/photos/0.jpg", "timed out", 900))
    assert statuses(db) == []  # held: the run may be at fault
    answer = CaptionResult(text="A dog.", input_tokens=10, output_tokens=2)
    asyncio.run(ledger.record(ids[1], "/photos/1.jpg", answer, 100))
    assert statuses(db) == [OK, FAILED]


def test_ledger_drops_held_failures_when_the_run_was_at_fault(store, db):
    control = RunControl("gpt-4.1-nano")
    ledger, ids = ledger_for(store, control)
    for n in range(EARLY_FAILURE_LIMIT):
        asyncio.run(ledger.record_no_answer(ids[n], f"/photos/{n}.jpg", "connection refused", None))
    assert control.run_at_fault
    asyncio.run(ledger.close())
    assert statuses(db) == []  # fixing the URL and running again tries them all


# -- planning --------------------------------------------------------------------

def test_planning_reads_but_never_writes(photos, db):
    Store(str(db)).close()  # an empty database
    before = db.read_bytes()
    store = Store(str(db))
    plan = make_plan(store, [str(photos)], Recipe("gpt-4.1-nano", "Describe."), limit=3)
    store.close()
    assert len(plan.todo) == 3 and plan.over_limit == len(list(photos.iterdir())) - 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
    assert db.read_bytes() == before


# -- the request a plugin receives ------------------------------------------------

def test_a_request_repr_shows_neither_the_key_nor_the_image_bytes():
    text = repr(REQUEST)
    assert "sk-test-not-a-real-key-123" not in text and "not really a jpeg" not in text
    assert "bytes" in text and "key=<set>" in text


def test_a_client_pool_gives_each_request_in_flight_its_own_client_and_reuses_them():
    from captioner.send import ClientPool

    async def scenario() -> tuple[int, int, int]:
        async with ClientPool(httpx.Timeout(5)) as pool:
            held = []
            for _ in range(3):  # three requests in flight at once
                lease = pool.lease()
                held.append((lease, await lease.__aenter__()))
            distinct = len({id(client) for _, client in held})
            for lease, _ in held:
                await lease.__aexit__(None, None, None)
            async with pool.lease():  # later requests reuse a free client
                pass
            contexts = {id(c._transport._pool._ssl_context) for c in pool.all}
            return distinct, len(pool.all), len(contexts)

    assert asyncio.run(scenario()) == (3, 3, 1)  # one client each, none created later, one SSL context


def test_a_run_reads_ahead_only_a_few_files_and_drops_their_bytes_once_prepared(fake_openai, tmp_path, monkeypatch):
    import shutil

    from captioner import pipeline

    from conftest import SAMPLE_PHOTOS, run

    photos = tmp_path / "many"
    photos.mkdir()
    source = (SAMPLE_PHOTOS / "rocket.jpg").read_bytes()
    for n in range(24):
        (photos / f"IMG_{n:03d}.jpg").write_bytes(source + str(n).encode())
    fake_openai.latency = 0.05
    outstanding, most = 0, 0
    original_read, original_prepare = pipeline.read_file, pipeline.Runner._prepare

    def read(*args, **kwargs):
        nonlocal outstanding, most
        outstanding += 1
        most = max(most, outstanding)
        return original_read(*args, **kwargs)

    def prepare(self, found, data):
        nonlocal outstanding
        try:
            return original_prepare(self, found, data)
        finally:
            outstanding -= 1

    monkeypatch.setattr(pipeline, "read_file", read)
    monkeypatch.setattr(pipeline.Runner, "_prepare", prepare)
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", tmp_path / "x.db", "--concurrency", "16")
    assert result.exit_code == 0, result.output
    assert most <= 2 * pipeline.RunSettings().prepare_threads < 16  # not one original per request in flight
    shutil.rmtree(photos)


def test_a_finished_run_holds_no_file_it_has_captioned(fake_openai, tmp_path):
    from captioner import pipeline

    from conftest import SAMPLE_PHOTOS

    store = Store(str(tmp_path / "x.db"))
    runner = pipeline.Runner(store, get_model("gpt-4o-mini"), pipeline.RunSettings(key="sk-test-not-a-real-key"))
    plan = runner.plan([str(SAMPLE_PHOTOS)])
    count = len(plan.todo)
    summary = runner.run(plan)
    store.close()
    assert summary.ok == count > 0
    assert plan.todo == [] and runner.ledger.files == {}  # handed out as sent, dropped once stored


def test_a_run_waits_as_long_as_its_model_needs_unless_told():
    from captioner.pipeline import RunSettings

    local, server = get_model("local/smolvlm-256m"), get_model("gpt-4o-mini")
    assert RunSettings().timeout_for(server) == 120.0
    assert RunSettings().timeout_for(local) == 3600.0  # caption, compare and eval alike
    assert RunSettings(timeout=5).timeout_for(local) == 5
