"""Third-party plugins: found through the `captioner` entry-point group, beside the built-in ones."""

from __future__ import annotations

import re
import textwrap

import pytest

from captioner.plugins import get_model, listed_models, plugin_manager

from conftest import REPO, rows, run


def install(site, module_name: str, source: str) -> None:
    """What `pip install` leaves behind: the module and a dist-info with its entry point."""
    (site / f"{module_name}.py").write_text(source)
    dist = site / f"{module_name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[captioner]\n{module_name} = {module_name}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site-packages folder on sys.path; plugins are looked up again before and after."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    plugin_manager.cache_clear()
    yield folder
    plugin_manager.cache_clear()


def documented_plugin() -> str:
    """The complete plugin in docs/plugins.md, exactly as a reader would copy it."""
    guide = (REPO / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    return next(block for block in blocks if "@hookimpl" in block)


def test_the_plugin_in_the_guide_installs_and_captions(site, photos, db):
    install(site, "captioner_average_colour", documented_plugin())
    listing = run("models", "--options")
    assert "average-colour" in listing.output and "-o style words|hex" in listing.output
    result = run("caption", photos / "rocket.jpg", "-m", "average-colour", "-o", "style", "hex", "--db", db)
    assert result.exit_code == 0, result.output
    caption = rows(db, "SELECT caption, status, cost_usd FROM captions")[0]
    assert re.fullmatch(r"A photo whose average colour is #[0-9a-f]{6}\.", caption["caption"])
    assert caption["status"] == "ok" and caption["cost_usd"] == 0


def test_the_guides_plugin_options_are_checked_before_any_photo_is_read(site, photos, db):
    install(site, "captioner_average_colour", documented_plugin())
    result = run("caption", photos, "-m", "average-colour", "-o", "style", "purple", "--db", db)
    assert result.exit_code == 2
    assert "-o style must be one of words, hex" in result.output
    assert not db.exists()


OLD_STYLE_PLUGIN = textwrap.dedent('''
    """A plugin written before typed options and the HTTP base: it must keep working."""
    from captioner.hookspecs import hookimpl
    from captioner.models import CaptionResult, Model

    class Echo(Model):
        provider = "local"
        needs_key = False

        def __init__(self, name):
            self.model_id = name

        def image_tokens(self, width, height, options):
            return 7

        async def caption(self, request, client):
            text = f"{request.prompt} {request.width}x{request.height} {dict(request.options)}"
            return CaptionResult(text=text, input_tokens=7, output_tokens=3)

    @hookimpl
    def model_for_name(name):
        return Echo(name) if name.startswith("echo/") else None
''')


def test_a_plugin_written_against_the_first_api_keeps_working(site, photos, db):
    install(site, "captioner_echo", OLD_STYLE_PLUGIN)
    assert get_model("echo/one").model_id == "echo/one"
    result = run("caption", photos / "rocket.jpg", "-m", "echo/one", "-p", "Say", "-o", "anything", "goes",
                 "--db", db)
    assert result.exit_code == 0, result.output
    assert rows(db, "SELECT caption FROM captions")[0]["caption"] == "Say 640x427 {'anything': 'goes'}"


def test_built_in_models_are_registered_in_package(site):
    ids = {model.model_id for model in listed_models()}
    assert {"gpt-4.1-nano", "claude-haiku-4-5", "gemini-2.5-flash-lite"} <= ids
    assert get_model("ollama/llava:7b").provider == "local"
