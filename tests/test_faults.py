"""The batch engine under faults, interruption, budgets and a shared database."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from captioner.media import prepare_image, read_file

from conftest import rows, run
from fakes import FakeOpenAI, Fault, image_label


def distinct_photos(folder: Path, source: Path, count: int) -> list[Path]:
    """`count` different real photos: the samples, each with a small numbered mark."""
    folder.mkdir(parents=True, exist_ok=True)
    originals = sorted(p for p in source.iterdir() if p.suffix in (".jpg", ".png"))
    made = []
    for n in range(count):
        im = Image.open(originals[n % len(originals)]).convert("RGB")
        ImageDraw.Draw(im).text((5, 5), f"#{n}", fill=(255, 0, 0))
        path = folder / f"img_{n:03d}.jpg"
        im.save(path, quality=90)
        made.append(path)
    return made


def captioner_process(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "captioner", *map(str, args)], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_captions(db: Path, at_least: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if db.exists() and rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] >= at_least:
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} captions after {timeout}s")


def test_every_image_ends_ok_or_failed_under_random_faults(fake_openai, photos, tmp_path, db):
    images = distinct_photos(tmp_path / "lib", photos, 40)
    rng = random.Random(7)
    menu = [
        Fault(429, {"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}}, {"retry-after": "0"}),
        Fault(500, {"error": {"message": "internal"}}),
        Fault(529, {"error": {"message": "overloaded"}}),
        Fault(503, {"error": {"message": "unavailable"}}, {"retry-after-ms": "20"}),
        Fault(kind="reset"),
        Fault(kind="garbage"),
        Fault(kind="truncated"),
        Fault(kind="hang"),
    ]
    fake_openai.hang_seconds = 2.5
    fake_openai.fault_fn = lambda n: rng.choice(menu) if n >= 2 and rng.random() < 0.35 else None
    result = run("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db, "--concurrency", "8",
                 "--timeout", "1", "--retries", "3", "--backoff", "0.02", "--json")
    assert result.exit_code in (0, 1), result.output
    summary = json.loads(result.output)
    stored = rows(db, "SELECT i.path, c.status, c.error, c.caption FROM images i JOIN captions c ON c.image_id = i.id")
    assert len(stored) == len(images) == summary["ok"] + summary["failed"]
    assert summary["retries"] > 0
    for row in stored:
        assert row["status"] in ("ok", "failed")
        if row["status"] == "failed":
            assert row["error"]
        else:
            data, _ = read_file(row["path"])
            assert row["caption"] == image_label(prepare_image(data).jpeg), row["path"]
    # No image was answered successfully twice (nothing billed twice).
    captions = [r["caption"] for r in stored if r["status"] == "ok"]
    assert len(captions) == len(set(captions))


def test_a_hang_past_the_timeout_is_retried(fake_openai, photos, db):
    fake_openai.hang_seconds = 3
    fake_openai.faults = [Fault(kind="hang")]
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db, "--timeout", "0.5",
                 "--backoff", "0.01", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["retries"] == 1


def test_retries_used_up_record_the_reason(fake_openai, photos, db):
    fake_openai.faults = [None] + [Fault(500, {"error": {"message": "boom"}})] * 3
    result = run("caption", photos / "rocket.jpg", photos / "chelsea.png", "-m", "gpt-4o-mini", "--db", db,
                 "--retries", "2", "--backoff", "0.01", "--concurrency", "1")
    assert result.exit_code == 1
    failed = rows(db, "SELECT error FROM captions WHERE status = 'failed'")
    assert failed[0]["error"] == "HTTP 500: boom (after 3 attempts)"


def test_first_requests_all_failing_stop_the_run_without_blaming_images(photos, db, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    result = run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "--retries", "0", "--concurrency", "1")
    assert result.exit_code == 2
    assert "first 3 requests" in result.output and "connection error" in result.output
    assert rows(db, "SELECT count(*) AS n FROM captions")[0]["n"] == 0


def test_rate_limits_lower_concurrency(fake_openai, photos, tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 24)
    fake_openai.latency = 0.05
    limited = Fault(429, {"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}}, {"retry-after": "0"})
    fake_openai.fault_fn = lambda n: limited if 4 <= n < 12 else None
    events = []
    from captioner import pipeline
    from captioner.plugins import get_model
    from captioner.store import Store

    store = Store(str(db))
    summary = pipeline.caption_paths([tmp_path / "lib"], get_model("gpt-4o-mini"), store,
                                  pipeline.RunSettings(key="sk-test", concurrency=8, backoff_base=0.01),
                                  progress_factory=lambda total: events.append)
    assert summary.ok == 24
    seen = [e["concurrency"] for e in events if "concurrency" in e]
    assert min(seen) < 8  # backed off under 429s


def test_budget_is_never_exceeded(fake_openai, photos, tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 20)
    # gpt-4o-mini bills ~25,000 input tokens per 1024-px photo here: about $0.004 per image.
    result = run("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db, "--max-cost", "0.02",
                 "--concurrency", "8", "--json")
    summary = json.loads(result.output)
    assert result.exit_code == 1 and summary["status"] == "budget"
    spent = rows(db, "SELECT sum(cost_usd) AS s FROM captions")[0]["s"]
    assert 0 < spent <= 0.02
    assert summary["ok"] >= 1 and summary["not_sent"] > 0
    assert len(fake_openai.image_requests) == summary["ok"]


@pytest.fixture
def slow_server(monkeypatch):
    with FakeOpenAI(latency=0.4) as server:
        yield server


def env_for(server: FakeOpenAI, tmp_path: Path) -> dict[str, str]:
    return {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-test", "CAPTIONER_USER_DIR": str(tmp_path / "u")}


def test_kill_9_loses_at_most_the_requests_in_flight(slow_server, photos, tmp_path, db):
    images = distinct_photos(tmp_path / "lib", photos, 16)
    env = env_for(slow_server, tmp_path)
    proc = captioner_process("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db, "--concurrency", "2",
                             env=env)
    wait_for_captions(db, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored_before = rows(db, "SELECT count(*) AS n FROM captions")[0]["n"]
    sent_before = len(slow_server.image_requests)
    assert sent_before - stored_before <= 2  # only requests in flight were lost

    second = captioner_process("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db, "--concurrency", "4",
                               "--json", env=env)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert json.loads(out)["skipped_done"] == stored_before
    captions = rows(db, "SELECT image_id FROM captions")
    assert len(captions) == len({c["image_id"] for c in captions}) == len(images)
    assert len(slow_server.image_requests) <= len(images) + 2
    statuses = [r["status"] for r in rows(db, "SELECT status FROM runs ORDER BY id")]
    assert statuses == ["killed", "completed"]


def test_ctrl_c_waits_for_requests_in_flight_and_exits_130(slow_server, photos, tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 16)
    proc = captioner_process("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db, "--concurrency", "3",
                             env=env_for(slow_server, tmp_path))
    wait_for_captions(db, 3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    stored = rows(db, "SELECT count(*) AS n FROM captions")[0]["n"]
    assert stored == len(slow_server.image_requests) < 16  # every answer in flight was kept
    run_row = rows(db, "SELECT * FROM runs")[0]
    assert run_row["status"] == "interrupted" and run_row["images_ok"] == stored


def test_two_processes_share_one_database_without_duplicates(photos, tmp_path, db):
    distinct_photos(tmp_path / "lib", photos, 30)
    with FakeOpenAI(latency=0.05) as server:
        env = env_for(server, tmp_path)
        procs = [captioner_process("caption", tmp_path / "lib", "-m", "gpt-4o-mini", "--db", db,
                                   "--concurrency", "4", env=env) for _ in range(2)]
        results = [p.communicate(timeout=120) for p in procs]
        for proc, (_, err) in zip(procs, results):
            assert proc.returncode == 0, err
            assert "locked" not in err and "Traceback" not in err
        assert len(server.image_requests) == 30
    captions = rows(db, "SELECT image_id, status FROM captions")
    assert len(captions) == 30 and {c["status"] for c in captions} == {"ok"}
    assert rows(db, "PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    assert rows(db, "SELECT count(*) AS n FROM claims")[0]["n"] == 0
