from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))

from captioner.cli import cli

from fakes import FakeAnthropic, FakeGemini, FakeOllama, FakeOpenAI

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = REPO / "sample_photos"
PROVIDER_ENV = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
    "GEMINI_API_KEY", "GOOGLE_API_KEY", "GEMINI_BASE_URL", "OLLAMA_HOST", "CAPTIONER_DB",
)


def find_shared() -> Path | None:
    """The shared corpus and fixtures live beside the repository (../shared)."""
    candidates = [os.environ.get("CAPTIONER_SHARED"), REPO.parent / "shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "corpus").is_dir():
            return Path(candidate)
    return None


SHARED = find_shared()


@pytest.fixture
def shared() -> Path:
    if SHARED is None:
        pytest.skip("../shared (corpus and recorded fixtures) is not present")
    return SHARED


@pytest.fixture
def corpus(shared: Path) -> Path:
    return shared / "corpus"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the developer's keys, config or real provider endpoints."""
    for name in PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAPTIONER_USER_DIR", str(tmp_path / "user"))
    # No test sees the developer's downloaded models or downloads one.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_openai(monkeypatch):
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
        yield server


@pytest.fixture
def fake_anthropic(monkeypatch):
    with FakeAnthropic() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
        yield server


@pytest.fixture
def fake_gemini(monkeypatch):
    with FakeGemini() as server:
        monkeypatch.setenv("GEMINI_BASE_URL", server.url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-gemini-key-not-real")
        yield server


@pytest.fixture
def fake_ollama(monkeypatch):
    with FakeOllama() as server:
        host, port = server.httpd.server_address[:2]
        monkeypatch.setenv("OLLAMA_HOST", f"{host}:{port}")
        yield server


@pytest.fixture
def photos(tmp_path) -> Path:
    """A private copy of the sample photos (tests may add or break files)."""
    target = tmp_path / "photos"
    shutil.copytree(SAMPLE_PHOTOS, target, ignore=shutil.ignore_patterns("*.md"))
    return target


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "captions.db"


def run(*args: str, input: str | None = None):
    """Invoke the CLI in-process, as a user would from a shell."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def rows(db: Path, sql: str, params=()) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()
