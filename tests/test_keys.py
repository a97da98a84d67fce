"""`captioner keys`: stored 0600, listed by name only, and the lookup order --key > file > env."""

from __future__ import annotations

import json
import os
import stat

from captioner import config
from captioner.plugins import get_model

from conftest import rows, run


def test_keys_set_from_stdin_creates_a_private_file():
    result = run("keys", "set", "openai", input="sk-test-from-stdin\n")
    assert result.exit_code == 0 and "sk-test" not in result.output
    path = config.keys_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {"openai": "sk-test-from-stdin"}


def test_keys_list_shows_names_never_values():
    run("keys", "set", "openai", input="sk-test-one")
    run("keys", "set", "gemini", input="gem-test-two")
    result = run("keys", "list")
    assert result.output.split() == ["gemini", "openai"]
    assert "test" not in result.output


def test_keys_path_is_in_the_user_dir(tmp_path):
    assert run("keys", "path").output.strip() == str(tmp_path / "user" / "keys.json")


def test_empty_key_is_refused():
    result = run("keys", "set", "openai", input="\n")
    assert result.exit_code == 2


def test_lookup_order_is_flag_then_file_then_env(monkeypatch):
    model = get_model("gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert config.resolve_key(model) == "from-env"
    run("keys", "set", "openai", input="from-file")
    assert config.resolve_key(model) == "from-file"
    assert config.resolve_key(model, "from-flag") == "from-flag"


def test_google_api_key_works_for_gemini(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "google-key")
    assert config.resolve_key(get_model("gemini-2.5-flash")) == "google-key"


def test_stored_key_is_used_and_never_stored(fake_openai, monkeypatch, photos, db):
    monkeypatch.delenv("OPENAI_API_KEY")
    run("keys", "set", "openai", input="fake-key-stored-secret")
    result = run("caption", photos / "rocket.jpg", "-m", "gpt-4o-mini", "--db", db)
    assert result.exit_code == 0
    assert fake_openai.received[0].headers["Authorization"] == "Bearer fake-key-stored-secret"
    assert b"fake-key-stored-secret" not in db.read_bytes()
    assert all("secret" not in json.dumps(r) for r in rows(db, "SELECT * FROM runs"))


def test_models_default_is_remembered():
    assert run("models", "default").output.strip() == config.DEFAULT_MODEL
    run("models", "default", "gpt-4.1-nano")
    assert run("models", "default").output.strip() == "gpt-4.1-nano"
    assert run("models", "default", "no-such-model").exit_code == 2


def test_with_no_key_and_no_keyless_model_one_line_lists_every_way(photos, db, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # nothing listens there
    result = run("caption", photos, "--db", db)
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Error: no model can run:")
    for way in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "captioner[local]", "ollama pull"):
        assert way in line


def test_with_no_key_a_vision_model_on_ollama_is_the_default(fake_ollama, photos, db):
    result = run("caption", photos, "--db", db)
    assert result.exit_code == 0, result.output
    assert "using ollama/llava:7b: no API key is set" in result.output
    assert {r["model"] for r in rows(db, "SELECT model FROM captions")} == {"ollama/llava:7b"}


def test_an_ollama_model_that_cannot_see_is_not_the_default(fake_ollama, photos, db):
    fake_ollama.models = ("llama3.2:1b",)
    result = run("caption", photos, "--db", db)
    assert result.exit_code == 2 and "no model can run" in result.output
