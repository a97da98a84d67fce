"""Structured answers (--schema), templates (-t) and the metadata photo apps read:
titles, keywords and alt text in the database, in search, and in XMP sidecars."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess

import pytest

from captioner.schema import SchemaError, concise_schema, parse_schema

from conftest import rows, run

MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini-2.5-flash-lite",
    "ollama": "ollama/llava:7b",
}


@pytest.fixture(params=sorted(MODELS))
def provider(request):
    """Each provider's fake server, speaking its own structured-output wire format."""
    return request.param, request.getfixturevalue(f"fake_{request.param}")


@pytest.fixture
def three_photos(photos):
    for extra in sorted(photos.iterdir())[3:]:
        extra.unlink()
    return photos


# -- the schema itself ---------------------------------------------------------

def test_concise_syntax_reads_names_types_and_descriptions():
    schema = concise_schema("title, description, keywords: list[str], count int: how many people")
    assert schema["properties"] == {
        "title": {"type": "string"}, "description": {"type": "string"},
        "keywords": {"type": "array", "items": {"type": "string"}},
        "count": {"type": "integer", "description": "how many people"}}
    assert schema["required"] == ["title", "description", "keywords", "count"]
    assert schema["additionalProperties"] is False


def test_concise_syntax_on_several_lines_allows_commas_in_descriptions():
    schema = concise_schema("title: a title, short\nkeywords list[str]: words, lower case")
    assert schema["properties"]["title"]["description"] == "a title, short"
    assert schema["properties"]["keywords"]["type"] == "array"


def test_a_json_schema_inline_or_in_a_file(tmp_path):
    spec = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    assert parse_schema(json.dumps(spec)) == spec
    (tmp_path / "s.json").write_text(json.dumps(spec))
    assert parse_schema(str(tmp_path / "s.json")) == spec


@pytest.mark.parametrize("spec", ["", "title, 3d", "title float[]", '{"type": "string"}', "{not json",
                                  '{"type": "object", "properties": {"a": {"type": 5}}}', "a, a"])
def test_an_unusable_schema_is_a_schema_error(spec):
    with pytest.raises(SchemaError):
        parse_schema(spec)


def test_a_bad_schema_on_the_command_line_is_one_line_before_any_request(fake_openai, three_photos, db):
    result = run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title, 3d")
    assert result.exit_code == 2
    assert "cannot read schema field '3d'" in result.output and "Traceback" not in result.output
    assert fake_openai.image_requests == []


# -- each provider's wire format -----------------------------------------------

def test_photo_metadata_is_stored_for_every_provider(provider, three_photos, db):
    name, _server = provider
    result = run("caption", three_photos, "-m", MODELS[name], "--db", db, "-t", "photo-metadata")
    assert result.exit_code == 0, result.output
    stored = rows(db, "SELECT * FROM captions ORDER BY id")
    assert len(stored) == 3 and {r["status"] for r in stored} == {"ok"}
    for row in stored:
        data = json.loads(row["data_json"])
        assert set(data) == {"title", "description", "keywords", "alt_text"}
        assert row["caption"] == data["description"] and row["title"] == data["title"]
        assert row["alt_text"] == data["alt_text"] and row["keywords"].startswith("beach, Sunset, photo-")
        assert json.loads(row["schema_json"])["required"] == ["title", "description", "keywords", "alt_text"]
    tags = rows(db, "SELECT tag, count(*) AS n FROM tags GROUP BY tag ORDER BY tag")
    assert {t["tag"]: t["n"] for t in tags}["beach"] == 3 and len(tags) == 5


def test_openai_asks_for_a_strict_json_schema(fake_openai, three_photos, db):
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title, keywords list[str]")
    body = fake_openai.image_requests[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True
    assert body["response_format"]["json_schema"]["schema"]["properties"]["keywords"]["type"] == "array"


def test_openai_is_not_strict_for_a_schema_strict_mode_refuses(fake_openai, three_photos, db):
    spec = {"type": "object", "properties": {"title": {"type": "string"}, "mood": {"type": "string"}},
            "required": ["title"]}
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", json.dumps(spec))
    assert fake_openai.image_requests[0].body["response_format"]["json_schema"]["strict"] is False


def test_anthropic_forces_one_tool_whose_input_is_the_schema(fake_anthropic, three_photos, db):
    run("caption", three_photos, "-m", "claude-haiku-4-5", "--db", db, "--schema", "title, alt_text")
    body = fake_anthropic.image_requests[0].body
    assert body["tools"][0]["input_schema"]["required"] == ["title", "alt_text"]
    assert body["tool_choice"] == {"type": "tool", "name": body["tools"][0]["name"]}


def test_anthropic_streamed_tool_input_is_folded_into_one_answer():
    from captioner.default_plugins.anthropic_models import TOOL_NAME, fold_stream, parse_message

    events = [
        {"type": "message_start", "message": {"model": "claude", "usage": {"input_tokens": 900, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": TOOL_NAME, "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"tit'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta",
                                                               "partial_json": 'le": "Pier at dusk"}'}},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 14}},
    ]
    result = parse_message(fold_stream(events))
    assert json.loads(result.text or "") == {"title": "Pier at dusk"}
    assert (result.input_tokens, result.output_tokens) == (900, 14)


def test_gemini_gets_a_response_schema_it_accepts(fake_gemini, three_photos, db):
    result = run("caption", three_photos, "-m", "gemini-2.5-flash-lite", "--db", db, "-t", "photo-metadata")
    assert result.exit_code == 0, result.output
    generation = fake_gemini.image_requests[0].body["generationConfig"]
    assert generation["responseMimeType"] == "application/json"
    schema = generation["responseSchema"]
    assert schema["type"] == "OBJECT" and schema["properties"]["keywords"]["items"]["type"] == "STRING"
    assert "additionalProperties" not in schema  # Gemini refuses it with a 400
    assert schema["propertyOrdering"] == ["title", "description", "keywords", "alt_text"]


def test_ollama_sends_the_schema_as_format(fake_ollama, three_photos, db):
    run("caption", three_photos, "-m", "ollama/llava:7b", "--db", db, "--schema", "title")
    assert fake_ollama.image_requests[0].body["format"]["properties"] == {"title": {"type": "string"}}


def test_openai_batch_lines_carry_the_schema_and_results_are_read_against_it(fake_openai, three_photos, db):
    fake_openai.poll_interval = 0.01
    result = run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--batch", "--poll-interval", "0.01",
                 "-t", "photo-metadata")
    assert result.exit_code == 0, result.output
    stored = rows(db, "SELECT status, title, keywords FROM captions")
    assert len(stored) == 3 and all(r["status"] == "ok" and r["title"].startswith("title of") for r in stored)


# -- identity, failures, refusals ------------------------------------------------

def test_the_same_schema_is_never_paid_twice_and_a_changed_one_captions_again(fake_openai, three_photos, db):
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db)
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title, description")
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title,  description")
    assert len(fake_openai.image_requests) == 6  # plain, then with a schema; the same schema again: nothing
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title, description, alt_text")
    assert len(fake_openai.image_requests) == 9
    assert len({r["recipe"] for r in rows(db, "SELECT recipe FROM captions")}) == 3


def test_a_changed_template_captions_again(fake_openai, three_photos, db):
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", "keywords")
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", "keywords")
    assert len(fake_openai.image_requests) == 3
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", "photo-metadata")
    assert len(fake_openai.image_requests) == 6


def test_an_answer_that_is_not_json_is_malformed_with_its_text_kept(fake_openai, three_photos, db):
    def prose(reply):
        reply["choices"][0]["message"]["content"] = "Sure! Here is a title: Pier at dusk"
        return reply

    fake_openai.answer_override = prose
    result = run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title")
    assert result.exit_code == 1
    stored = rows(db, "SELECT status, caption, error, input_tokens, cost_usd FROM captions")
    assert {r["status"] for r in stored} == {"malformed"}
    assert stored[0]["caption"] == "Sure! Here is a title: Pier at dusk"  # paid for: never lost
    assert stored[0]["error"] == "malformed structured answer: not JSON" and stored[0]["cost_usd"] > 0


def test_an_answer_missing_a_required_field_is_malformed_and_says_which(fake_openai, three_photos, db):
    def partial(reply):
        reply["choices"][0]["message"]["content"] = json.dumps({"title": "Pier"})
        return reply

    fake_openai.answer_override = partial
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title, keywords list[str]")
    error = rows(db, "SELECT error FROM captions")[0]["error"]
    assert "'keywords' is a required property" in error
    fake_openai.answer_override = None
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title, keywords list[str]")
    assert len(fake_openai.image_requests) == 3  # malformed counts as failed: not retried unasked
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title, keywords list[str]",
        "--retry-failed")
    assert {r["status"] for r in rows(db, "SELECT status FROM photo_captions")} == {"ok"}


def test_a_refusal_under_a_schema_is_recorded_as_refused(fake_openai, three_photos, db):
    def refuse(reply):
        reply["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
        return reply

    fake_openai.answer_override = refuse
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", "photo-metadata")
    assert {r["status"] for r in rows(db, "SELECT status FROM captions")} == {"refused"}


def test_a_model_without_structured_output_says_so_before_reading_a_photo(fake_ollama, three_photos, db,
                                                                           monkeypatch):
    from captioner.default_plugins.ollama_models import OllamaModel

    monkeypatch.setattr(OllamaModel, "structured_output", False)
    result = run("caption", three_photos, "-m", "ollama/llava:7b", "--db", db, "--schema", "title")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: ollama/llava:7b cannot answer in a schema (its plugin has no structured output); use an OpenAI, "
        "Anthropic, Gemini or Ollama model, or leave out --schema"]
    assert fake_ollama.image_requests == []


# -- estimate and budget ------------------------------------------------------------

def test_estimate_adds_the_schemas_input_and_output_tokens(three_photos):
    def estimated(*extra):
        result = run("estimate", three_photos, "-m", "claude-haiku-4-5", "--json", *extra)
        return json.loads(result.output)[0]

    plain, structured = estimated(), estimated("-t", "photo-metadata")
    assert structured["input_tokens"] > plain["input_tokens"] + 3 * 313  # the schema and the tool-use prompt
    assert structured["output_tokens"] > plain["output_tokens"]
    assert structured["cost_usd"] > plain["cost_usd"]


def test_the_budget_reserves_for_the_schema_too(fake_anthropic, three_photos, db):
    run("caption", three_photos, "-m", "claude-haiku-4-5", "--db", db)
    run("caption", three_photos, "-m", "claude-haiku-4-5", "--db", db, "--schema", "title, keywords list[str]",
        "--max-cost", "5")
    pairs = rows(db, "SELECT p.estimated_input_tokens AS plain, s.estimated_input_tokens AS structured "
                     "FROM captions p JOIN captions s ON s.image_id = p.image_id "
                     "WHERE p.schema_json IS NULL AND s.schema_json IS NOT NULL")
    assert len(pairs) == 3 and all(pair["structured"] > pair["plain"] + 313 for pair in pairs)


# -- templates -------------------------------------------------------------------------

def test_built_in_templates_are_listed_and_shown():
    listed = json.loads(run("templates", "list", "--json").output)
    assert [t["name"] for t in listed] == ["alt-text", "describe", "keywords", "photo-metadata"]
    shown = run("templates", "show", "photo-metadata").output
    assert shown.startswith("prompt: ") and "keywords list[str]" in shown and "alt_text" in shown


@pytest.mark.parametrize("name", ["describe", "alt-text", "keywords", "photo-metadata"])
def test_every_built_in_template_captions(fake_openai, three_photos, db, name):
    result = run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", name)
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in rows(db, "SELECT status FROM captions")} == {"ok"}


def test_a_template_round_trip_edit_list_show_and_use(fake_openai, three_photos, db, tmp_path, monkeypatch):
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\ncat > \"$1\" <<'EOF'\nprompt: Name this photo from {folder}, file {filename}.\n"
                      "schema: title, mood\noptions:\n  temperature: 0.2\nmodel: gpt-4o-mini\nEOF\n")
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    saved = run("templates", "edit", "mine")
    assert saved.exit_code == 0 and saved.output.startswith("saved ")
    assert "mine" in [t["name"] for t in json.loads(run("templates", "list", "--json").output)]
    assert "schema: title, mood" in run("templates", "show", "mine").output
    assert run("templates", "path", "mine").output.strip().endswith("templates/mine.yaml")

    result = run("caption", three_photos, "--db", db, "-t", "mine")  # the template names the model
    assert result.exit_code == 0, result.output
    body = fake_openai.image_requests[0].body
    prompt = body["messages"][-1]["content"][0]["text"]
    assert re.fullmatch(r"Name this photo from photos, file \w+\.(jpg|png|heic)\.", prompt), prompt
    assert body["temperature"] == 0.2 and body["model"] == "gpt-4o-mini"
    assert set(json.loads(rows(db, "SELECT data_json FROM captions")[0]["data_json"])) == {"title", "mood"}


def test_the_command_line_wins_over_the_template(fake_openai, three_photos, db):
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", "photo-metadata", "-p", "Just a title",
        "--schema", "title")
    body = fake_openai.image_requests[0].body
    assert body["messages"][-1]["content"][0]["text"] == "Just a title"
    assert list(body["response_format"]["json_schema"]["schema"]["properties"]) == ["title"]


def test_a_broken_template_is_one_line(fake_openai, three_photos, db, tmp_path):
    folder = tmp_path / "user" / "templates"
    folder.mkdir(parents=True)
    (folder / "bad.yaml").write_text("prompt: [unclosed\n")
    (folder / "odd.yaml").write_text("prompt: hi\ncolour: blue\n")
    for name, message in (("bad", "is not valid YAML"), ("odd", "unknown key 'colour'"),
                          ("none", "no template named 'none'"), ("../x", "may use letters")):
        result = run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", name)
        assert result.exit_code == 2 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert fake_openai.image_requests == []


def test_an_edit_that_breaks_the_template_is_not_saved(tmp_path, monkeypatch):
    editor = tmp_path / "editor.sh"
    editor.write_text("#!/bin/sh\necho 'schema: title, 3d' > \"$1\"\n")
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    result = run("templates", "edit", "broken")
    assert result.exit_code == 2 and "not saved" in result.output
    assert not (tmp_path / "user" / "templates" / "broken.yaml").exists()


def test_prompt_variables_come_from_the_file(fake_openai, photos, db):
    for extra in photos.iterdir():
        if extra.name != "rocket.jpg":
            extra.unlink()
    run("caption", photos, "-m", "gpt-4o-mini", "--db", db, "-p",
        "File {filename} in {folder}, taken {taken_at}, camera {camera}, at {gps}. Keep {braces}.")
    prompt = fake_openai.image_requests[0].body["messages"][-1]["content"][0]["text"]
    assert prompt.startswith("File rocket.jpg in photos, taken ")
    assert prompt.endswith("Keep {braces}.") and "{camera}" not in prompt


# -- finding and exporting ----------------------------------------------------------------

@pytest.fixture
def metadata_db(fake_openai, three_photos, db):
    assert run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "-t", "photo-metadata").exit_code == 0
    return db


def test_search_by_tag_and_by_words_in_titles_and_keywords(metadata_db, three_photos):
    found = json.loads(run("search", "--tag", "beach", "--db", metadata_db, "--json").output)
    assert len(found) == 3 and all(r["title"].startswith("title of") for r in found)
    assert json.loads(run("search", "--tag", "BEACH", "--tag", "nope", "--db", metadata_db, "--json").output) == []
    by_title = json.loads(run("search", "title", "--db", metadata_db, "--json").output)  # a word only titles hold
    assert len(by_title) == 3
    by_keyword = json.loads(run("search", "sunset", "--db", metadata_db, "--json").output)
    assert len(by_keyword) == 3 and "**Sunset**" in by_keyword[0]["snippet"]


def test_search_needs_words_or_a_tag(metadata_db):
    result = run("search", "--db", metadata_db)
    assert result.exit_code == 2 and "give words to search for, or --tag WORD" in result.output


def test_tags_counts_photos_per_keyword(metadata_db):
    counted = json.loads(run("tags", "--db", metadata_db, "--json").output)
    assert counted[:2] == [{"tag": "beach", "photos": 3}, {"tag": "Sunset", "photos": 3}]
    assert len(counted) == 5
    assert "beach" in run("tags", "--db", metadata_db, "--limit", "1").output


def test_csv_and_jsonl_carry_the_structured_fields(metadata_db, tmp_path):
    jsonl = [json.loads(line) for line in run("export", "--db", metadata_db, "--format", "jsonl").output.splitlines()]
    assert all(r["title"].startswith("title of") and r["keywords"][0] == "beach" for r in jsonl)
    assert set(jsonl[0]["data"]) == {"title", "description", "keywords", "alt_text"}
    table = list(csv.DictReader(io.StringIO(run("export", "--db", metadata_db, "--format", "csv").output)))
    assert all(r["keywords"].startswith("beach, Sunset") and r["alt_text"].startswith("alt_text of") for r in table)


exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed")


def exif_read(path) -> dict:
    out = subprocess.run(["exiftool", "-json", "-XMP-dc:Title", "-XMP-dc:Description", "-XMP-dc:Subject",
                          "-XMP-iptcCore:AltTextAccessibility", str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


@exiftool
def test_exiftool_reads_title_description_keywords_and_alt_text(metadata_db, three_photos):
    assert run("export", "--db", metadata_db, "--format", "xmp").exit_code == 0
    stored = {r["path"]: r for r in rows(metadata_db, "SELECT i.path, c.* FROM captions c JOIN images i "
                                                      "ON i.id = c.image_id")}
    for path, row in stored.items():
        read = exif_read(path + ".xmp")
        assert read["Title"] == row["title"] and read["Description"] == row["caption"]
        assert read["AltTextAccessibility"] == row["alt_text"]
        assert read["Subject"] == row["keywords"].split(", ")


@exiftool
def test_keywords_merge_with_a_persons_and_never_drop_them(fake_openai, metadata_db, three_photos):
    photo = sorted(p for p in three_photos.iterdir())[0]
    sidecar = f"{photo}.xmp"
    subprocess.run(["exiftool", "-q", "-o", sidecar, "-XMP-dc:Subject=grandma", "-XMP-dc:Subject=beach",
                    "-XMP-dc:Title=Grandma's pier", str(photo)], check=True)
    assert run("export", "--db", metadata_db, "--format", "xmp").exit_code == 0
    read = exif_read(sidecar)
    assert read["Subject"][:2] == ["grandma", "beach"] and "Sunset" in read["Subject"]
    assert read["Title"] == "Grandma's pier"  # a person's title is kept
    # Captioned again with other keywords: captioner's old ones go, the person's stay.
    fake_openai.answer_override = lambda reply: _with_keywords(reply, ["harbour"])
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", metadata_db, "-t", "photo-metadata", "--force")
    run("export", "--db", metadata_db, "--format", "xmp")
    assert exif_read(sidecar)["Subject"] == ["grandma", "beach", "harbour"]


def _with_keywords(reply: dict, keywords: list[str]) -> dict:
    message = reply["choices"][0]["message"]
    data = json.loads(message["content"])
    data["keywords"] = keywords
    message["content"] = json.dumps(data)
    return reply


def test_show_prints_title_keywords_and_alt_text(metadata_db, three_photos):
    shown = run("show", three_photos, "--db", metadata_db).output
    assert "    title: title of photo" in shown and "    keywords: beach, Sunset, photo-" in shown
    assert "    alt text: alt_text of photo" in shown


def test_failures_lists_malformed_answers(fake_openai, three_photos, db):
    fake_openai.answer_override = lambda reply: {**reply, "choices": [
        {**reply["choices"][0], "message": {"role": "assistant", "content": "not json"}}]}
    run("caption", three_photos, "-m", "gpt-4o-mini", "--db", db, "--schema", "title")
    listed = json.loads(run("failures", "--db", db, "--json").output)
    assert len(listed) == 3 and {r["status"] for r in listed} == {"malformed"}


def test_compare_with_a_schema_finds_the_structured_captions(fake_openai, fake_anthropic, three_photos, db):
    result = run("compare", three_photos, "-m", "gpt-4o-mini", "-m", "claude-haiku-4-5", "--db", db,
                 "--schema", "title, description", "--json")
    assert result.exit_code == 0, result.output
    table = json.loads(result.output)["models"]
    assert [(r["model"], r["ok"]) for r in table] == [("gpt-4o-mini", 3), ("claude-haiku-4-5", 3)]
    assert all(r["usd_per_image"] for r in table)
