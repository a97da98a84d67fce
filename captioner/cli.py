"""The command line. Parses, calls the module that owns the step, prints."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import itertools
import json
import logging
import math
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from . import config, report
from .config import ConfigError
from .defaults import (
    DEFAULT_MAX_VIDEO_SECONDS,
    DEFAULT_OUTPUT_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_VIDEO_PROMPT,
    MAX_OUTPUT_TOKENS,
)
from .options import OptionError
from .plugins import UnknownModel, discovered_models, get_model, listed_models
from .scan import DEFAULT_MAX_FILE_BYTES
from .search import MARK_END, MARK_START, Interrupted, QueryError, interruptible, run_sql
from .search import search as search_captions
from .store import Store, StoreError
from .text import for_csv, for_terminal

if TYPE_CHECKING:
    from .pipeline import RunSettings

# The run, batch, compare, estimate and export machinery (httpx, PyAV, genai-prices) is
# imported by the commands that use it, so `--help` and the read-only commands start fast.

EXIT_SOME_FAILED = 1
EXIT_INTERRUPTED = 130


class ConfigFailure(click.ClickException):
    """Usage or configuration error: one line, exit status 2."""

    exit_code = 2


def open_store(db: str, readonly: bool = False) -> Store:
    """The database; one made by an older captioner is brought up to date first
    (its migrations keep every row), even for a command that only reads."""
    try:
        store = Store(db, readonly=readonly)
        if readonly and store.outdated():
            store.close()
            try:
                Store(db).close()
            except StoreError as exc:
                raise StoreError(f"{db} was made by an older captioner and cannot be upgraded here ({exc}); "
                                 "open it once where it can be written") from exc
            store = Store(db, readonly=True)
        return store
    except StoreError as exc:
        raise ConfigFailure(str(exc)) from exc


def resolve_model(name: str):
    """The model for a name as typed: surrounding spaces ignored (so `'gpt-4.1-nano '` is not a
    second model paid again), and an empty name or one with control characters refused."""
    cleaned = name.strip()
    if not cleaned:
        raise ConfigFailure("-m needs a model name (see `captioner models`)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in cleaned):
        raise ConfigFailure(f"model name {for_terminal(cleaned)!r} contains control characters")
    try:
        return get_model(cleaned)
    except UnknownModel as exc:
        raise ConfigFailure(for_terminal(str(exc))) from exc


def _models_and_keys(names: tuple[str, ...], key: str | None = None, need_keys: bool = False):
    models = [resolve_model(n) for n in (names if names else (config.get_default_model(),))]
    keys = {}
    try:
        if not names and need_keys and not key:
            models = [_first_usable_default(models[0])]
        for model in models:
            keys[model.model_id] = config.resolve_key(model, key)
            if need_keys and model.needs_key and not keys[model.model_id]:
                raise ConfigFailure(config.missing_key_message(model, _usable_instead()))
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from exc
    return models, keys


def _usable_instead() -> str | None:
    """A model whose key is set, to suggest when the one asked for has none."""
    for name in config.DEFAULT_CANDIDATES:
        candidate = resolve_model(name)
        if config.resolve_key(candidate):
            return candidate.model_id
    return None


NO_MODEL_CAN_RUN = (
    "no model can run: set OPENAI_API_KEY, ANTHROPIC_API_KEY or GEMINI_API_KEY (or `captioner keys set NAME`); "
    "or run one in-process with pip install 'captioner[local]' and `captioner models pull local/smolvlm-256m`; "
    "or start Ollama with a vision model (ollama pull llava)")


def _keyless_model():
    """The first model that runs with no key and nothing to download: an in-process
    model whose weights are on disk, else a vision model on a reachable Ollama."""
    for model in listed_models():
        if model.in_process and model.ready_offline():
            return model
    for model in discovered_models():
        if not model.needs_key and model.sees_images:
            return model
    return None


def _first_usable_default(default):
    """Without -m and without a chosen default, use the first model whose key is set
    (the default model first), and say so."""
    if not default.needs_key or config.resolve_key(default) or config.default_chosen():
        return default
    instead = _usable_instead()
    if instead is None:
        keyless = _keyless_model()
        if keyless is None:
            raise ConfigFailure(NO_MODEL_CAN_RUN)
        click.echo(f"using {keyless.model_id}: no API key is set and it runs without one "
                   "(choose another with -m or `captioner models default`)", err=True)
        return keyless
    model = resolve_model(instead)
    click.echo(f"using {model.model_id}: {' or '.join(model.key_env)} is set, and no key for the default "
               f"{default.model_id} (choose one with -m or `captioner models default`)", err=True)
    return model


def check_options(models, options: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """`-o` pairs checked against every model's declared options, before any image is read."""
    given = dict(options)
    try:
        for model in models:
            model.validate_options(given)
    except OptionError as exc:
        raise ConfigFailure(str(exc)) from exc
    return given


def check_output_file(path: str, option: str) -> None:
    """A file we are about to write: its folder must exist and it must not be a folder."""
    if os.path.isdir(path):
        raise ConfigFailure(f"{option} {path} is a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ConfigFailure(f"{option} {path}: no such folder {folder}")
    if not os.access(folder, os.W_OK) and not os.access(path, os.W_OK):
        raise ConfigFailure(f"{option} {path}: cannot write in {folder}")


def check_output_folder(path: str, option: str) -> None:
    """A folder sidecars go into: made if missing; a file there is an error."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigFailure(f"{option} {path} is not a folder (sidecars need one)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigFailure(f"{option} {path}: cannot make the folder ({exc.strerror or exc})") from exc


def _check_paths(paths) -> None:
    for path in paths:
        if not os.path.exists(path):
            raise ConfigFailure(f"no such file or folder: {path}")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        click.echo("(nothing yet)")
        return
    cells = [[_display(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _display(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return report.plain_float(value)
    return for_terminal(str(value))


class FiniteFloat(click.FloatRange):
    """A float in range that is also a number: `nan` and `inf` are refused."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


MAX_PROMPT_CHARS = 20_000


def utf8_text(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Text options and arguments must be valid UTF-8 (a Latin-1 byte from the
    shell arrives as a lone surrogate) and of a sane length."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter("is not valid UTF-8 text (check the terminal's encoding)") from None
    if param.name in ("prompt", "system") and len(value) > MAX_PROMPT_CHARS:
        raise click.BadParameter(f"is {len(value):,} characters; at most {MAX_PROMPT_CHARS:,} are allowed "
                                 "(it is sent and stored with every photo)")
    return value


@contextlib.contextmanager
def read_query(db: str | None) -> Iterator[Store]:
    """The database opened read-only for a query: Ctrl-C stops it (exit 130), a bad query is one line."""
    with open_store(db or config.default_db(), readonly=True) as store:
        try:
            with interruptible(store):
                yield store
        except QueryError as exc:
            raise ConfigFailure(for_terminal(str(exc))) from exc
        except Interrupted:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)


def db_option(fn: Callable) -> Callable:
    return click.option(
        "--db", "db", default=None, metavar="FILE",
        help="SQLite database [default: $CAPTIONER_DB, ./captions.db if present, else the user folder's; "
             "see `captioner db path`]",
    )(fn)


def json_option(what: str) -> Callable[[Callable], Callable]:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON")


def stack(*decorators: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """Several click decorators as one, applied in the order written."""

    def apply(fn: Callable) -> Callable:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return apply


# The recipe options caption, estimate and compare share.
recipe_options = stack(
    click.option("-p", "--prompt", default=DEFAULT_PROMPT, show_default="a short factual description",
                 callback=utf8_text, help="What to ask about each photo"),
    click.option("-s", "--system", callback=utf8_text, help="System prompt"),
    click.option("-o", "--option", "options", type=(str, str), multiple=True, metavar="KEY VALUE",
                 help="Model option, e.g. -o detail low, -o max_tokens 200 (see `captioner models --options`)"),
    click.option("-t", "--template", "template_name", metavar="NAME",
                 help="A saved recipe: prompt, system, schema, model, options (see `captioner templates list`); "
                      "what the command line gives wins"),
    click.option("--schema", "schema_spec", metavar="SPEC", callback=utf8_text,
                 help="Answer in this structure: 'title, description, keywords list[str], alt_text' "
                      "or a JSON schema (inline or a .json file)"),
)


@dataclasses.dataclass
class RecipeArgs:
    """The recipe a command runs: its options as given, with a template's filled in."""

    prompt: str
    system: str | None
    options: tuple[tuple[str, str], ...]
    schema: dict[str, Any] | None
    model_names: tuple[str, ...]


def resolve_recipe(template_name: str | None, prompt: str, system: str | None, schema_spec: str | None,
                   options: tuple[tuple[str, str], ...], model_names: tuple[str, ...]) -> RecipeArgs:
    """Apply `-t NAME` (the command line wins over the template) and read `--schema`."""
    from .schema import SchemaError, parse_schema, schema_from_value
    from .templates import TemplateError, load

    ctx = click.get_current_context()
    schema = None
    try:
        if template_name is not None:
            template = load(template_name)
            if template.prompt and ctx.get_parameter_source("prompt") == click.core.ParameterSource.DEFAULT:
                prompt = template.prompt
            system = system if system is not None else template.system
            if template.schema is not None and schema_spec is None:
                schema = schema_from_value(template.schema, f"template {template_name}")
            options = (*template.options.items(), *options)  # a later -o wins
            model_names = model_names or ((template.model,) if template.model else ())
        if schema_spec is not None:
            schema = parse_schema(schema_spec)
    except (TemplateError, SchemaError) as exc:
        raise ConfigFailure(str(exc)) from exc
    return RecipeArgs(prompt, system, options, schema, model_names)


def prepare_to_run(model) -> None:
    """An in-process model's weights on disk (downloaded, announced, unless offline) before any photo is read."""
    from .models import ProviderError

    try:
        model.prepare_to_run(lambda message: click.echo(message, err=True))
    except ProviderError as exc:
        raise ConfigFailure(exc.message) from exc


def check_schema(models, schema: dict[str, Any] | None) -> None:
    """Refuse, before any image is read, a schema for a model that cannot answer in one."""
    for model in models:
        if schema is not None and not model.structured_output:
            raise ConfigFailure(f"{model.model_id} cannot answer in a schema (its plugin has no structured output); "
                                "use an OpenAI, Anthropic, Gemini or Ollama model, or leave out --schema")
selection_options = stack(
    click.option("--include", multiple=True, metavar="GLOB", help="Only files matching (repeatable)"),
    click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching (repeatable)"),
    click.option("--max-file-size", "max_file_mb", type=click.IntRange(1, 1_000_000),
                 default=DEFAULT_MAX_FILE_BYTES // 2**20, show_default=True, metavar="MB",
                 help="Skip files larger than this (never read into memory)"),
)
video_options = stack(
    click.option("--no-videos", is_flag=True, help="Leave video clips out (photos only)"),
    click.option("--max-video-seconds", type=FiniteFloat(1, 36_000), default=DEFAULT_MAX_VIDEO_SECONDS,
                 show_default=True, metavar="S",
                 help="Longest stretch of a clip a model that watches video is sent (frames always span it all)"),
)
max_side_option = click.option("--max-side", type=click.IntRange(64, 8192), metavar="PX",
                               help="Long side of the image sent [default: the model's, usually 1024]")
base_url_option = click.option(
    "--base-url", "base_urls", multiple=True, metavar="URL",
    help="An OpenAI-compatible endpoint (repeatable: a pool, each with its own --concurrency) "
         "[default: $OPENAI_BASE_URL, which may list several separated by commas]")
concurrency_option = click.option("--concurrency", type=click.IntRange(1, 512), default=8, show_default=True,
                                  help="Requests in flight at once (lowered automatically on rate limits)")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="captioner")
def cli() -> None:
    """Caption photo libraries with vision language models."""


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-m", "--model", "model_name", help="Model id (see `captioner models`)")
@recipe_options
@db_option
@click.option("--key", help="API key (overrides the keys file and env vars)")
@concurrency_option
@base_url_option
@click.option("--max-cost", type=FiniteFloat(min=0, min_open=True), metavar="USD",
              help="Stop before spending more than this")
@click.option("--limit", type=click.IntRange(0, 10**9), help="Caption at most N new images")
@max_side_option
@selection_options
@video_options
@click.option("--video-prompt", callback=utf8_text,
              help="What to ask about each video clip [default: -p if given, else a clip description]")
@click.option("--live-photos", type=click.Choice(["skip", "separate"]), default="skip", show_default=True,
              help="A still and a clip of the same name are one moment: caption the still only, or both")
@click.option("--force", is_flag=True, help="Caption again even if already captioned")
@click.option("--retry-failed", is_flag=True, help="Try images that failed before again")
@click.option("--retries", type=click.IntRange(0, 20), default=4, show_default=True,
              help="Tries after the first for rate limits, overloads, 5xx and timeouts")
@click.option("--timeout", type=FiniteFloat(0.1, 3600), default=120.0, show_default=True,
              help="Seconds to wait for one response")
@click.option("--rpm", type=FiniteFloat(0.1, 1_000_000), help="At most this many requests per minute")
@click.option("--backoff", type=FiniteFloat(0, 60), default=1.0, hidden=True)
@click.option("--batch", "use_batch", is_flag=True,
              help="Send through the provider's batch API: half price, results within 24 h")
@click.option("--no-wait", is_flag=True,
              help="--batch: submit and exit; collect later with `captioner batches collect`")
@click.option("--poll-interval", type=FiniteFloat(0.01, 3600), default=30.0, show_default=True, metavar="S",
              help="--batch: seconds between looks at a job while waiting")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=50_000, show_default=True, metavar="N",
              help="--batch: at most N photos per job (smaller jobs come back sooner)")
@click.option("-v", "--verbose", is_flag=True, help="Log each request (file, status, tokens, cost, time) to stderr")
@click.option("--log", "log_file", type=click.Path(dir_okay=False), metavar="FILE",
              help="Append the same log to FILE (never keys or image bytes)")
@json_option("the summary")
def caption(paths, model_name, prompt, system, options, template_name, schema_spec, db, key, concurrency, base_urls,
            max_cost, limit,
            max_side, include, exclude, max_file_mb, no_videos, max_video_seconds, video_prompt, live_photos,
            force, retry_failed, retries, timeout, rpm, backoff, use_batch, no_wait, poll_interval, batch_size,
            verbose, log_file, as_json):
    """Caption every photo under PATHS and store the results.

    \b
    Examples:
      captioner caption ~/Pictures
      captioner caption ~/Pictures -m gpt-4.1-nano --max-cost 2.50
    """
    from . import pricing
    from .pipeline import RunSettings, caption_paths

    _check_paths(paths)
    recipe = resolve_recipe(template_name, prompt, system, schema_spec, options,
                            (model_name,) if model_name is not None else ())
    prompt, system = recipe.prompt, recipe.system
    (model,), keys = _models_and_keys(recipe.model_names, key, need_keys=True)
    options = check_options([model], recipe.options)
    check_schema([model], recipe.schema)
    prepare_to_run(model)
    if click.get_current_context().get_parameter_source("timeout") == click.core.ParameterSource.DEFAULT:
        timeout = None  # the model's own default (RunSettings.timeout_for)
    try:
        pricing.load_user_prices()  # a malformed price file is one line now, not a traceback later
        unpriced = max_cost is not None and not pricing.price_request(model, 1000, 100).known
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from exc
    if unpriced:
        raise ConfigFailure(f"--max-cost needs a price for {model.model_id}; add one to {config.prices_path()}")
    settings = RunSettings(
        prompt=prompt, system=system, options=options, schema=recipe.schema, key=keys[model.model_id],
        max_side=max_side,
        concurrency=concurrency, limit=limit, force=force, retry_failed=retry_failed,
        max_cost=max_cost, retries=retries, timeout=timeout, backoff_base=backoff, rpm=rpm,
        include=include, exclude=exclude, max_file_bytes=max_file_mb * 2**20, videos=not no_videos,
        max_video_seconds=max_video_seconds, live_photos=live_photos,
        video_prompt=video_prompt or (prompt if prompt != DEFAULT_PROMPT else DEFAULT_VIDEO_PROMPT),
        base_urls=check_endpoints(model, base_urls, keys[model.model_id]),
    )
    if use_batch:
        run_batch(paths, model, settings, db, batch_size, not no_wait, poll_interval, as_json)
        return
    with open_store(db or config.default_db()) as store:
        collect_open_jobs(store, model, key)
        try:
            with request_log(verbose, log_file):
                summary = caption_paths(paths, model, store, settings, progress_factory=_progress_bar)
        except sqlite3.Error as exc:
            raise ConfigFailure(f"cannot write to the database {os.path.abspath(store.path)}: {exc}") from exc
    stopped_before_anything = summary.status == "failed" and not summary.captioned
    nothing_found = summary.found == 0
    if as_json:
        print_json(summary.to_dict())
    elif nothing_found and summary.status == "completed":
        click.echo(for_terminal(f"no images found in {', '.join(paths)}" + report.skipped_note(summary.skipped)))
    elif not stopped_before_anything:
        for line in report.summary_lines(summary):
            click.echo(for_terminal(line))
    if summary.status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)
    if summary.status == "failed":
        raise ConfigFailure(_with_key_source(summary.message or "run failed", model, key))
    if summary.failed or summary.refused or summary.status == "budget" or summary.failed_before or nothing_found:
        sys.exit(EXIT_SOME_FAILED)


@contextlib.contextmanager
def request_log(verbose: bool, log_file: str | None) -> Iterator[None]:
    """`-v` logs each request to stderr, `--log FILE` to a file; both go away after the command."""
    logger = logging.getLogger("captioner")
    handlers: list[logging.Handler] = []
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    if log_file:
        try:
            handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
        except OSError as exc:
            raise ConfigFailure(f"--log {log_file}: {exc.strerror or exc}") from exc
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    if handlers:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def batch_api_errors() -> Iterator[None]:
    """A batch API call that fails ends the command with one line and exit 2, never a traceback."""
    import httpx

    from .models import ProviderError

    try:
        yield
    except ProviderError as exc:
        raise ConfigFailure(f"batch API: {for_terminal(exc.message)}") from exc
    except httpx.HTTPError as exc:
        raise ConfigFailure(f"batch API: {for_terminal(f'{exc.__class__.__name__}: {exc}')}") from exc


def collect_open_jobs(store: Store, model: Any, key: str | None) -> None:
    """Before a synchronous run: store what open batch jobs have finished (their photos are
    never sent again); a provider that cannot be reached now is tried next time."""
    import asyncio

    import httpx

    from . import batch_mode
    from .models import ProviderError

    if not store.batch_jobs(open_only=True):
        return
    try:
        # --key belongs to this run's model: another provider's jobs use their own keys.
        collected = asyncio.run(batch_mode.collect(
            store, resolve_model, lambda m: config.resolve_key(m, key if m.model_id == model.model_id else None),
            None, False, 0))
    except (httpx.HTTPError, ProviderError, ConfigError, ConfigFailure) as exc:
        click.echo(f"open batch jobs not collected now ({exc.__class__.__name__}); "
                   "`captioner batches collect` tries again", err=True)
        return
    if collected.collected_ok or collected.collected_failed:
        for line in batch_lines(collected, "collected from open batch jobs"):
            click.echo(line)


def check_endpoints(model: Any, given: tuple[str, ...], key: str | None) -> tuple[str, ...]:
    """An endpoint pool: every endpoint must answer GET /models and serve the model, before anything is read."""
    from .pool import check_models

    urls = [u.rstrip("/") for u in given] or model.endpoints()
    if given and not model.endpoints():
        raise ConfigFailure(f"--base-url is for OpenAI-compatible models (-m openai/NAME); {model.model_id} has one "
                            "server")
    if given or len(urls) > 1:
        problem = check_models(urls, getattr(model, "api_model", model.model_id), key)
        if problem:
            raise ConfigFailure(for_terminal(problem))
    return tuple(u.rstrip("/") for u in given)


def run_batch(paths: tuple[str, ...], model: Any, settings: RunSettings, db: str | None, batch_size: int,
              wait: bool, poll_interval: float, as_json: bool) -> None:
    """`caption --batch`: collect what is ready, submit the rest, and (unless --no-wait) wait for it."""
    import asyncio

    from . import batch_mode
    from .batch_api import BatchUnavailable

    try:
        batch_mode.batch_api_of(model)
    except BatchUnavailable as exc:
        raise ConfigFailure(str(exc)) from exc
    with contextlib.closing(open_store(db or config.default_db())) as store, batch_api_errors():
        # This model's open jobs first (the same command collects what an earlier one submitted).
        earlier = [job["id"] for job in store.batch_jobs(open_only=True) if job["model"] == model.model_id]
        collected = batch_mode.BatchSummary(model.model_id)
        if earlier:
            collected = asyncio.run(batch_mode.collect(store, resolve_model, lambda m: settings.key, earlier, False, 0))
        submitted = asyncio.run(batch_mode.submit(store, model, settings, list(paths), batch_size))
        final = submitted
        waiting_for = [job["id"] for job in store.batch_jobs(open_only=True) if job["model"] == model.model_id]
        if wait and waiting_for:  # this run's jobs and earlier ones still open: the same command collects
            try:
                final = asyncio.run(batch_mode.collect(store, resolve_model, lambda m: settings.key,
                                                       waiting_for, True, poll_interval, _batch_progress))
            except KeyboardInterrupt:
                click.echo(f"stopped waiting; the jobs keep running at the provider. Collect them with: "
                           f"captioner batches collect {' '.join(map(str, waiting_for))}", err=True)
                sys.exit(EXIT_INTERRUPTED)
    report_batch(collected, submitted, final, as_json)


def _batch_progress(event: dict[str, Any]) -> None:
    counts = ", ".join(f"{k} {v:,}" for k, v in event.get("counts", {}).items())
    click.echo(f"job {event['job']}: {event['status']}" + (f" ({counts})" if counts else ""), err=True)


def report_batch(collected: Any, submitted: Any, final: Any, as_json: bool) -> None:
    if as_json:
        print_json({"collected_before": collected.to_dict(), "submitted": submitted.to_dict(),
                    "collected": final.to_dict() if final is not submitted else None})
    else:
        for line in batch_lines(collected, "collected from earlier jobs") if collected.collected_ok + \
                collected.collected_failed else []:
            click.echo(line)
        click.echo(f"{submitted.model}: {submitted.submitted:,} photos submitted in "
                   f"{report.plural(len(submitted.jobs), 'batch job')}, {submitted.skipped_done:,} already done, "
                   f"{submitted.in_open_jobs:,} in open jobs, {submitted.not_sent:,} not sent")
        if final is not submitted:
            for line in batch_lines(final, "collected"):
                click.echo(line)
        for message in submitted.messages + (final.messages if final is not submitted else []):
            click.echo(for_terminal(message))
        if submitted.jobs and (final is submitted or final.still_running):
            click.echo(f"collect later with: captioner batches collect {' '.join(map(str, submitted.jobs))}")
    if submitted.budget_stop or final.collected_failed or submitted.failed_to_prepare:
        sys.exit(EXIT_SOME_FAILED)


def batch_lines(summary: Any, what: str) -> list[str]:
    lines = [f"{what}: {summary.collected_ok:,} ok, {summary.collected_failed:,} failed, "
             f"{summary.expired:,} expired or cancelled (submitted again next time)"]
    if summary.collected_ok or summary.collected_failed:
        lines.append(f"cost: {report.money(summary.cost_usd)} at batch prices "
                     f"(the same work synchronously: {report.money(summary.list_price_usd)})")
    return lines


def _with_key_source(message: str, model: Any, key: str | None) -> str:
    """A rejected key: say where it came from (never the key itself)."""
    if "HTTP 401" not in message and "HTTP 403" not in message:
        return message
    found = config.key_and_source(model, key)
    if found is None:
        return message
    source = found[1]
    where = {"--key": "--key", "the keys file": f"the keys file {config.keys_path()}"}.get(source, f"${source}")
    return f"{message} (the key came from {where})"


def _progress_bar(total: int) -> Callable[[dict[str, Any]], None]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", file=sys.stderr, dynamic_ncols=True, disable=None, leave=True)
    state: dict[str, Any] = {"cost": 0.0, "retries": 0, "concurrency": None}

    def update(event: dict[str, Any]) -> None:
        if "message" in event:
            bar.write(event["message"], file=sys.stderr)
            return
        state["retries"] += event.get("retry", 0)
        state["cost"] = event.get("cost", state["cost"])
        state["concurrency"] = event.get("concurrency", state["concurrency"])
        postfix = {"cost": report.money(state["cost"]), "retries": state["retries"]}
        if state["concurrency"] is not None:
            postfix["conc"] = state["concurrency"]
        bar.set_postfix(postfix, refresh=False)
        bar.update(event.get("advance", 0))
        if bar.total is not None and bar.n >= bar.total:
            bar.close()

    return update


@cli.command()
@db_option
@click.option("--by", type=click.Choice(["model", "run", "day", "kind", "mode"]), default="model",
              show_default=True,
              help="Group the totals by model, run, day (UTC), kind (photos, videos) or mode (batch, sync)")
@json_option("the rows")
def cost(db, by, as_json):
    """What the stored captions cost, by model, run or day.

    \b
    Examples:
      captioner cost
      captioner cost --by day --json
    """
    with open_store(db or config.default_db(), readonly=True) as store:
        rows = report.cost_rows(store, by)
    if as_json:
        print_json(rows)
        return
    display, columns = report.cost_table(rows, by)
    print_table(display, columns)


@cli.group(invoke_without_command=True)
@click.option("--options", "show_options", is_flag=True, help="Also list each model's -o options")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON")
@click.pass_context
def models(ctx, show_options, as_json):
    """List the vision models the installed plugins provide.

    \b
    Examples:
      captioner models
      captioner models --options
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        rows = report.model_rows(listed_models() + discovered_models(), config.get_default_model())
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from exc
    if not show_options:
        for row in rows:
            del row["options"]
    if as_json:
        print_json(rows)
        return
    for row in rows:
        row["default"] = "*" if row["default"] else ""
    print_table(rows, ["default", "model", "provider", "input_per_m", "output_per_m", "batch_input_per_m",
                       "batch_output_per_m", "key"])
    if show_options:
        for row in rows:
            click.echo(f"\n{row['model']} options:")
            if row["options"] is None:
                click.echo("  (not declared: any -o KEY VALUE is passed to the model)")
            for option in row["options"] or []:
                click.echo(f"  -o {option['name']} {option['describe']}: {option['help']}")


@models.command("pull")
@click.argument("name")
def models_pull(name):
    """Download an in-process model's weights into the Hugging Face cache (the size is said first).

    \b
    Example:
      captioner models pull local/smolvlm-256m
    """
    model = resolve_model(name)
    if not model.in_process:
        raise ConfigFailure(f"{model.model_id} runs on a server: there are no weights to pull")
    if model.ready_offline():
        click.echo(f"{model.model_id} is already downloaded")
        return
    prepare_to_run(model)
    click.echo(f"{model.model_id} is ready")


@models.command("default")
@click.argument("name", required=False)
def models_default(name):
    """Show or set the model `caption` uses without -m."""
    if name is None:
        click.echo(config.get_default_model())
        return
    model = resolve_model(name)
    config.set_default_model(model.model_id)
    click.echo(f"default model: {model.model_id}")


@cli.group()
def keys():
    """Store API keys (in a 0600 file in the user config folder)."""


@keys.command("set")
@click.argument("name")
@click.option("--value", help="The key (default: prompt, hidden, or read from stdin)")
def keys_set(name, value):
    """Store the key NAME (openai, anthropic, gemini)."""
    if value is None:
        if sys.stdin.isatty():
            value = click.prompt(f"{name} key", hide_input=True)
        else:
            value = sys.stdin.read()
    value = value.strip()
    if not value:
        raise ConfigFailure("no key given")
    try:
        path = config.save_key(name, value)
    except (ConfigError, OSError) as exc:
        raise ConfigFailure(str(exc)) from exc
    click.echo(f"saved key {name!r} in {path}")


@keys.command("list")
def keys_list():
    """Names of the stored keys (never the keys)."""
    try:
        names = sorted(config.load_keys())
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from exc
    for name in names:
        click.echo(name)


@keys.command("path")
def keys_path():
    """Where keys are stored."""
    click.echo(str(config.keys_path()))


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-m", "--model", "model_names", multiple=True, help="Model id (repeatable)")
@recipe_options
@click.option("--output-tokens", type=click.IntRange(0, MAX_OUTPUT_TOKENS), default=DEFAULT_OUTPUT_TOKENS,
              show_default=True, help="Assumed length of each caption")
@max_side_option
@selection_options
@video_options
@click.option("--video-prompt", callback=utf8_text, help="What to ask about each video clip")
@json_option("the estimates")
def estimate(paths, model_names, prompt, system, options, template_name, schema_spec, output_tokens, max_side,
             include, exclude, max_file_mb,
             no_videos, max_video_seconds, video_prompt, as_json):
    """Predict the cost of captioning PATHS, offline (reads image headers and video containers only).

    \b
    Examples:
      captioner estimate ~/Pictures
      captioner estimate ~/Pictures -m gemini-2.5-flash-lite -m gpt-4.1-nano
    """
    from . import estimate as estimating

    _check_paths(paths)
    recipe = resolve_recipe(template_name, prompt, system, schema_spec, options, model_names)
    prompt = recipe.prompt
    models, _ = _models_and_keys(recipe.model_names)
    options = check_options(models, recipe.options)
    check_schema(models, recipe.schema)
    try:
        results = estimating.estimate(paths, models, prompt=prompt, system=recipe.system, options=options,
                                      schema=recipe.schema,
                                      output_tokens=output_tokens, max_side=max_side, include=include,
                                      exclude=exclude, max_bytes=max_file_mb * 2**20, videos=not no_videos,
                                      max_video_seconds=max_video_seconds,
                                      video_prompt=video_prompt or (prompt if prompt != DEFAULT_PROMPT
                                                                    else DEFAULT_VIDEO_PROMPT))
    except ConfigError as exc:
        raise ConfigFailure(str(exc)) from exc
    rows = [r.to_dict() for r in results]
    if as_json:
        print_json(rows)
        return
    print_table([report.readable(r, money_columns=("cost_usd", "cost_per_1000_images", "batch_cost_usd"))
                 for r in rows],
                ["model", "images", "videos", "input_tokens_per_image", "input_tokens", "output_tokens", "cost_usd",
                 "cost_per_1000_images", "batch_cost_usd"])


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-m", "--model", "model_names", multiple=True, required=True, help="Model id (at least two)")
@recipe_options
@click.option("--sample", "sample_size", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="How many photos to compare on (always the same ones for a folder)")
@db_option
@concurrency_option
@base_url_option
@selection_options
@click.option("--judge", "judge_name", metavar="MODEL",
              help="Also judge quality: this model compares every pair of captions of each photo, in both orders")
@click.option("--max-cost", type=FiniteFloat(min=0, min_open=True), metavar="USD",
              help="Stop before captions and judging together spend more than this")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True), metavar="FILE",
              help="Write a page with thumbnails and the captions side by side")
@json_option("the comparison")
def compare(paths, model_names, prompt, system, options, template_name, schema_spec, sample_size, db, concurrency,
            base_urls, include, exclude,
            max_file_mb, judge_name, max_cost, html_file, as_json):
    """Caption the same sample of photos with several models and compare cost and words;
    with --judge, quality too (pairwise, both orders, with honest intervals).

    \b
    Examples:
      captioner compare ~/Pictures -m gemini-2.5-flash-lite -m gpt-4.1-nano --html compare.html
      captioner compare ~/Pictures -m A -m B -m C --judge claude-sonnet-4-5 --sample 30
    """
    from .compare import COLUMNS as COMPARE_COLUMNS
    from .compare import compare as compare_models
    from .compare import judge_comparison, judged_page, render_page
    from .pipeline import RunSettings

    _check_paths(paths)
    if len({name.strip() for name in model_names}) < 2:
        raise ConfigFailure("compare needs at least two different models (-m A -m B)")
    if html_file:
        check_output_file(html_file, "--html")  # before paying for any caption
    recipe = resolve_recipe(template_name, prompt, system, schema_spec, options, model_names)
    models, keys = _models_and_keys(model_names, need_keys=True)
    check_schema(models, recipe.schema)
    for model in models:
        prepare_to_run(model)
    judge = judge_key = None
    if judge_name:
        (judge,), judge_keys = _models_and_keys((judge_name,), need_keys=True)
        judge_key = judge_keys[judge.model_id]
    pooled = [m for m in models if m.endpoints()]
    if base_urls and not pooled:
        raise ConfigFailure("--base-url is for OpenAI-compatible models (-m openai/NAME)")
    for model in pooled if base_urls else []:
        check_endpoints(model, base_urls, keys[model.model_id])
    settings = RunSettings(prompt=recipe.prompt, system=recipe.system, options=check_options(models, recipe.options),
                           schema=recipe.schema, concurrency=concurrency, include=include, exclude=exclude,
                           max_file_bytes=max_file_mb * 2**20, max_cost=max_cost)
    judged = None
    with open_store(db or config.default_db()) as store:
        result, summaries = compare_models(paths, models, keys, store, settings, sample_size,
                                           progress_factory=None if as_json else _progress_bar,
                                           base_urls=tuple(u.rstrip("/") for u in base_urls))
        for summary in summaries:
            if summary.status == "failed":
                raise ConfigFailure(summary.message or f"{summary.model} failed")
        if judge is not None:
            spent = sum(s.cost_usd for s in summaries)
            left = None if max_cost is None else max(0.0, max_cost - spent)
            judged = judge_comparison(store, result, models, settings, judge, judge_key, left)
    if html_file:
        with open(html_file, "w", encoding="utf-8") as fh:
            fh.write(judged_page(result, models, judged) if judged else render_page(result, models))
    if as_json:
        print_json({"sample": len(result.paths), "photos": result.total_photos, "models": result.rows,
                    "judged": None if judged is None else {
                        "judge": judged.judge, "models": judged.models, "pairs": judged.pairs,
                        "judgements_made": judged.judgements_made, "judgements_reused": judged.judgements_reused,
                        "judge_cost_usd": judged.cost_usd, "judge_estimate_usd": judged.estimated_usd,
                        "stopped": judged.stopped}})
        return
    click.echo(f"{len(result.paths)} sample photos of {result.total_photos}")
    money_columns = ("usd_per_image", "usd_per_1000", "projected_usd_all_photos")
    print_table([report.readable(r, money_columns) for r in result.rows], COMPARE_COLUMNS)
    if judged is not None:
        print_judged(judged)
    if html_file:
        click.echo(f"wrote {html_file}")


def print_judged(judged: Any) -> None:
    """The quality table: Bradley-Terry scores with bootstrap intervals, and pairwise win rates."""
    click.echo(f"\njudged by {judged.judge} ({judged.judgements_made} new judgements, "
               f"{judged.judgements_reused} reused, {report.money(judged.cost_usd)}, estimated "
               f"{report.money(judged.estimated_usd)}); a verdict counts only when "
               "both orders agree, otherwise it is a tie")
    rows = [{"model": r["model"], "quality (BT)": f"{r['bt_score']:+.2f}",
             "95% interval": "" if not r["bt_95ci"] else f"{r['bt_95ci'][0]:+.2f} .. {r['bt_95ci'][1]:+.2f}",
             "ties": r["ties"], "per 1,000": report.money(r["usd_per_1000"]),
             "pareto": "*" if r["pareto"] else ""} for r in judged.models]
    print_table(rows, ["model", "quality (BT)", "95% interval", "ties", "per 1,000", "pareto"])
    pairs = [{"model": p["model"], "vs": p["against"], "wins": p["wins"], "losses": p["losses"], "ties": p["ties"],
              "invalid": p["invalid"],
              "win rate [95% CI]": "" if p["win_rate"] is None else
              f"{p['win_rate']:.0%} [{p['win_rate_95ci'][0]:.0%}, {p['win_rate_95ci'][1]:.0%}]"}
             for p in judged.pairs]
    click.echo("")
    print_table(pairs, ["model", "vs", "wins", "losses", "ties", "invalid", "win rate [95% CI]"])
    if judged.stopped:
        click.echo(judged.stopped)


@cli.command()
@click.argument("paths", nargs=-1)
@db_option
@click.option("--format", "fmt", type=click.Choice(["xmp", "txt", "csv", "jsonl", "html"]), required=True,
              help="xmp/txt sidecars beside the photos, or one csv/jsonl/html file")
@click.option("-m", "--model", "model_name", help="Only captions by this model (default: the newest per photo)")
@click.option("--out", metavar="DIR|FILE",
              help="xmp/txt: folder for the sidecars [default: next to each photo]; "
                   "csv/jsonl/html: file [default: stdout]")
@click.option("--sidecar-name", type=click.Choice(["append", "replace"]), default="append", show_default=True,
              help="xmp: IMG_1234.jpg.xmp (append) or IMG_1234.xmp (replace)")
@click.option("--overwrite", is_flag=True,
              help="xmp: replace a description captioner did not write (by default it is kept)")
@click.option("--dry-run", is_flag=True, help="xmp/txt: list what would be written, write nothing")
def export(paths, db, fmt, model_name, out, sidecar_name, overwrite, dry_run):
    """Export stored captions: XMP sidecars photo apps read, .txt sidecars, CSV, JSON Lines or an HTML gallery.

    \b
    Examples:
      captioner export --format xmp
      captioner export ~/Pictures/2024 --format xmp --dry-run
      captioner export --format csv --out captions.csv

    PATHS limits the export to those files, or to the files under those folders.
    """
    from . import export as exporting

    if out and fmt in ("xmp", "txt"):
        check_output_folder(out, "--out")
    elif out:
        check_output_file(out, "--out")
    with open_store(db or config.default_db(), readonly=True) as store:
        if fmt in ("xmp", "txt"):
            export_sidecars(store, fmt, model_name, paths, out, sidecar_name, overwrite, dry_run)
            return
        # Written a row at a time: a library of any size takes the same memory.
        with open(out, "w", encoding="utf-8", newline="") if out else contextlib.nullcontext(sys.stdout) as fh:
            if fmt == "html":
                count = exporting.write_gallery(store, fh, model_name, paths, page_path=out)
            else:
                count = exporting.write_table(exporting.newest_rows(store, model_name, paths), fmt, fh)
    if out:
        click.echo(f"wrote {count} photos to {out}", err=True)


def export_sidecars(store: Store, fmt: str, model_name: str | None, paths: tuple[str, ...], out: str | None,
                    sidecar_name: str, overwrite: bool, dry_run: bool) -> None:
    """`export --format xmp|txt`: sidecars beside the photos (or under --out), and what was done."""
    from . import export as exporting

    options = exporting.SidecarOptions(out, sidecar_name == "replace", overwrite, dry_run)
    rows = lambda: exporting.newest_rows(store, model_name, paths)  # noqa: E731 (read once per pass: see _plan)
    report = exporting.write_xmp(rows, options) if fmt == "xmp" else exporting.write_txt(rows, options)
    for path, reason in report.skipped:
        click.echo(for_terminal(f"skipped {path}: {reason}"), err=True)
    if dry_run:
        for target in report.written:
            click.echo(for_terminal(f"would write {target}"))
        for target in report.merged:
            click.echo(for_terminal(f"would update {target}"))
    verbs = ("would be written", "would be updated") if dry_run else ("written", "updated")
    click.echo(f"{len(report.written)} {verbs[0]}, {len(report.merged)} {verbs[1]}, "
               f"{len(report.skipped)} skipped")
    if report.skipped:
        sys.exit(EXIT_SOME_FAILED)


@cli.command()
@click.argument("query", callback=utf8_text, required=False)
@db_option
@click.option("-m", "--model", "model_name", help="Only captions by this model")
@click.option("--tag", "tags", multiple=True, metavar="WORD",
              help="Only photos with this keyword (repeatable: all must match; see `captioner tags`)")
@click.option("--since", metavar="DATE", help="Taken on or after (YYYY-MM-DD)")
@click.option("--until", metavar="DATE", help="Taken on or before (YYYY-MM-DD)")
@click.option("--limit", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Show at most N matches")
@json_option("the matches")
def search(query, db, model_name, tags, since, until, limit, as_json):
    """Find photos by words in their captions, titles and keywords (full-text,
    "butterflies" finds "butterfly"), or by keyword with --tag.

    \b
    Examples:
      captioner search butterflies
      captioner search "dog AND beach" --since 2023-01-01
      captioner search --tag beach
    """
    if query is None and not tags:
        raise ConfigFailure("give words to search for, or --tag WORD")
    with read_query(db) as store:
        results = search_captions(store, query, model=model_name, since=since, until=until, limit=limit,
                                  tags=tags)
    if as_json:
        for row in results:
            row["snippet"] = row["snippet"].replace(MARK_START, "**").replace(MARK_END, "**")
        print_json(results)
        return
    if not results:
        click.echo("no matches")
    for row in results:
        snippet = row["snippet"]
        highlighted = "".join(
            click.style(for_terminal(part), bold=True) if i % 2 else for_terminal(part)
            for i, part in enumerate(snippet.replace(MARK_END, MARK_START).split(MARK_START))
        )
        taken = row["taken_at"][:10] if row["taken_at"] else "date unknown"
        click.echo(for_terminal(f"{row['path']}  ({row['model']}, {taken})"))
        click.echo(f"    {highlighted}")


@cli.command()
@db_option
@click.option("-m", "--model", "model_name", help="Only keywords from this model's captions")
@click.option("--limit", type=click.IntRange(1, 1_000_000), help="Show the N most used")
@json_option("the keyword counts")
def tags(db, model_name, limit, as_json):
    """Keywords of structured captions (--schema with keywords, -t keywords, -t photo-metadata)
    and how many photos carry each, most used first.

    \b
    Example:
      captioner tags --limit 20
    """
    from .search import tag_counts

    with read_query(db) as store:
        rows = tag_counts(store, model_name, limit)
    if as_json:
        print_json(rows)
    elif not rows:
        click.echo("no keywords yet (caption with -t photo-metadata or a --schema with keywords)")
    else:
        print_table(rows, ["tag", "photos"])


@cli.group()
def templates():
    """Saved recipes (prompt, system, schema, model, options) used with -t NAME."""


@templates.command("list")
@json_option("the templates")
def templates_list(as_json):
    """Every template, built-in and yours."""
    from . import templates as saved

    rows = []
    for name in saved.names():
        try:
            template = saved.load(name)
        except saved.TemplateError as exc:
            rows.append({"name": name, "source": "file", "prompt": f"(unreadable: {exc})", "schema": None})
            continue
        source = "built-in" if template.built_in else "file"
        rows.append({"name": name, "source": source, "prompt": (template.prompt or "")[:70],
                     "schema": template.schema if isinstance(template.schema, str) else
                     ("JSON schema" if template.schema is not None else None)})
    if as_json:
        print_json(rows)
    else:
        print_table([{**r, "schema": (r["schema"] or "").replace("\n", "; ")[:50]} for r in rows],
                    ["name", "source", "prompt", "schema"])


@templates.command("show")
@click.argument("name")
def templates_show(name):
    """Print a template as YAML."""
    from . import templates as saved

    try:
        click.echo(saved.text_of(name), nl=False)
    except saved.TemplateError as exc:
        raise ConfigFailure(str(exc)) from exc


@templates.command("edit")
@click.argument("name")
def templates_edit(name):
    """Open a template in $EDITOR (a new one, or a copy of the built-in one to change);
    it is checked when saved."""
    from . import schema as schemas
    from . import templates as saved

    try:
        path = saved.path_for(name)
        start = saved.text_of(name) if (path.exists() or name in saved.BUILT_IN) else saved.dump(
            {"prompt": DEFAULT_PROMPT, "schema": "title, description, keywords list[str], alt_text"})
    except saved.TemplateError as exc:
        raise ConfigFailure(str(exc)) from exc
    edited = click.edit(start, extension=".yaml", require_save=True)
    if edited is None:
        click.echo("not saved: nothing changed", err=True)
        return
    try:
        template = saved.from_text(name, edited, f"template {name}")
        if template.schema is not None:
            schemas.schema_from_value(template.schema, f"template {name}")
    except (saved.TemplateError, schemas.SchemaError) as exc:
        raise ConfigFailure(f"not saved: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(edited, encoding="utf-8")
    click.echo(f"saved {path}")


@templates.command("path")
@click.argument("name", required=False)
def templates_path(name):
    """The folder templates are kept in (or one template's file)."""
    from . import templates as saved

    try:
        click.echo(str(saved.path_for(name) if name else saved.templates_dir()))
    except saved.TemplateError as exc:
        raise ConfigFailure(str(exc)) from exc


@cli.command()
@click.argument("query", callback=utf8_text)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Rows as a JSON list of objects")
@click.option("--csv", "as_csv", is_flag=True, help="Rows as CSV")
def sql(query, db, as_json, as_csv):
    """Run a read-only SQL query (tables: images, runs, captions; view: photo_captions).

    \b
    Example:
      captioner sql "SELECT path, caption FROM photo_captions WHERE caption LIKE '%sunset%'" --csv
    """
    with read_query(db) as store:
        columns, records = run_sql(store, query)
        print_rows(columns, records, "json" if as_json else "csv" if as_csv else "table")


TABLE_ROWS_SHOWN = 1_000


def print_rows(columns: list[str], records: Iterator[tuple[Any, ...]], fmt: str) -> None:
    """Rows as they come: JSON and CSV stream every row; a table shows the first
    1,000 (it must see them all to size its columns) and says how to get the rest."""
    if fmt == "json":
        click.echo("[", nl=False)
        for n, record in enumerate(records):
            click.echo(("," if n else "") + "\n  " + json.dumps(dict(zip(columns, record)), ensure_ascii=False,
                                                               default=str), nl=False)
        click.echo("\n]")
    elif fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow([for_csv(value) for value in record])
    else:
        shown = list(itertools.islice(records, TABLE_ROWS_SHOWN))
        print_table([dict(zip(columns, r)) for r in shown], columns)
        if next(records, None) is not None:
            click.echo(f"(first {TABLE_ROWS_SHOWN:,} rows shown; use --csv or --json for all of them)")


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@db_option
@json_option("the captions")
def show(paths, db, as_json):
    """Print the captions of files (or of every file under a folder), per model.

    \b
    Examples:
      captioner show ~/Pictures/IMG_1234.HEIC
      captioner show ~/Pictures/2024 --json
    """
    with open_store(db or config.default_db(), readonly=True) as store:
        found = report.captions_of(store, list(paths))
    if as_json:
        print_json(found)
        return
    if not found:
        click.echo(f"no captions stored for {', '.join(paths)} in {os.path.abspath(store.path)}")
        sys.exit(EXIT_SOME_FAILED)
    current = None
    for row in found:
        if row["path"] != current:
            current = row["path"]
            taken = row["taken_at"][:10] if row["taken_at"] else "date unknown"
            click.echo(for_terminal(f"{current}  ({taken})"))
        text = row["caption"] if row["status"] == "ok" else f"[{row['status']}] {row['error'] or ''}"
        click.echo(for_terminal(f"  {row['model']}: {text}"))
        for label in ("title", "keywords", "alt_text"):
            if row["status"] == "ok" and row.get(label):
                click.echo(for_terminal(f"    {label.replace('_', ' ')}: {row[label]}"))


@cli.command()
@db_option
@json_option("the failures")
def failures(db, as_json):
    """List the files whose caption failed or was refused, with the reason and the model.

    \b
    Examples:
      captioner failures
      captioner caption ~/Pictures --retry-failed   # then try them again
    """
    with open_store(db or config.default_db(), readonly=True) as store:
        found = report.failure_rows(store)
    if as_json:
        print_json(found)
        return
    if not found:
        click.echo("no failures")
        return
    for row in found:
        click.echo(for_terminal(f"{row['path']}  ({row['model']}, {row['status']}): {row['error'] or ''}"))
    click.echo(f"{report.plural(len(found), 'file')}; try them again with: captioner caption PATH --retry-failed")


@cli.group()
def db():
    """Where the database is."""


@db.command("path")
def db_path():
    """Print the database `caption` and the other commands use by default."""
    click.echo(os.path.abspath(config.default_db()))


@cli.group(invoke_without_command=True)
@db_option
@json_option("the jobs")
@click.pass_context
def batches(ctx, db, as_json):
    """Provider batch jobs: list them, collect their results, cancel them.

    \b
    Examples:
      captioner batches
      captioner batches collect --wait
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = db
        return
    with open_store(db or config.default_db(), readonly=True) as store:
        jobs = store.batch_jobs()
    if as_json:
        print_json(jobs)
        return
    columns = ["id", "status", "provider_batch_id", "model", "items", "items_ok", "items_failed", "items_expired",
               "submitted_at", "finished_at", "estimated_cost_usd", "billed_cost_usd"]
    print_table([report.readable(j, ("estimated_cost_usd", "billed_cost_usd")) for j in jobs], columns)


@batches.command("collect")
@click.argument("ids", nargs=-1, type=int)
@click.option("--wait", is_flag=True, help="Wait until the jobs end")
@click.option("--poll-interval", type=FiniteFloat(0.01, 3600), default=30.0, show_default=True, metavar="S",
              help="Seconds between looks at a job while waiting")
@click.option("--key", help="API key of the jobs' provider (overrides the keys file and env vars)")
@json_option("the summary")
@click.pass_obj
def batches_collect(db, ids, wait, poll_interval, key, as_json):
    """Store the results of open jobs (all, or those named)."""
    import asyncio

    from . import batch_mode

    with contextlib.closing(open_store(db or config.default_db())) as store, batch_api_errors():
        if key:
            one_provider_for_key(store.batch_jobs(list(ids) or None, open_only=True))
        try:
            summary = asyncio.run(batch_mode.collect(store, resolve_model, lambda m: config.resolve_key(m, key),
                                                     list(ids) or None, wait, poll_interval, _batch_progress))
        except ConfigError as exc:
            raise ConfigFailure(f"batch API: {for_terminal(str(exc))}") from exc
        except KeyboardInterrupt:
            click.echo("stopped waiting; the jobs keep running at the provider", err=True)
            sys.exit(EXIT_INTERRUPTED)
    if as_json:
        print_json(summary.to_dict())
    else:
        for line in batch_lines(summary, "collected"):
            click.echo(line)
        if summary.still_running:
            click.echo(f"still running: {' '.join(map(str, summary.still_running))}")
    if summary.collected_failed:
        sys.exit(EXIT_SOME_FAILED)


def one_provider_for_key(jobs: list[dict[str, Any]]) -> None:
    """`--key` is one provider's key: it must never be sent to another provider's batch API."""
    providers = sorted({resolve_model(job["model"]).key_name or job["model"] for job in jobs})
    if len(providers) > 1:
        raise ConfigFailure(f"--key is one provider's key and these open jobs use {', '.join(providers)}; "
                            "name the jobs of one provider (see `captioner batches`)")


@batches.command("cancel")
@click.argument("job_id", type=int)
@click.option("--key", help="API key (overrides the keys file and env vars)")
@click.pass_obj
def batches_cancel(db, job_id, key):
    """Ask the provider to cancel a job (then collect it for any partial results)."""
    import asyncio

    from . import batch_mode

    with contextlib.closing(open_store(db or config.default_db())) as store, batch_api_errors():
        jobs = store.batch_jobs([job_id], open_only=True)
        if not jobs or not jobs[0]["provider_batch_id"]:
            raise ConfigFailure(f"no open batch job {job_id} (see `captioner batches`)")
        model = resolve_model(jobs[0]["model"])
        asyncio.run(batch_mode.cancel(store, batch_mode.batch_api_of(model), config.resolve_key(model, key),
                                      jobs[0]))
    click.echo(f"cancel requested for job {job_id}; `captioner batches collect {job_id}` stores what it finished")


@cli.command("eval")
@click.argument("paths", nargs=-1)
@click.option("--references", "references_file", required=True, type=click.Path(exists=True, dir_okay=False),
              metavar="FILE.csv", help="CSV of photo path and a human reference caption (several rows per photo ok)")
@click.option("-m", "--model", "model_names", multiple=True, required=True, help="Model id (repeatable)")
@recipe_options
@db_option
@json_option("the scores")
def eval_command(paths, references_file, model_names, prompt, system, options, template_name, schema_spec, db,
                 as_json):
    """Score models' captions against human references with BLEU-4 (a weak signal: see the README).

    \\b
    Example:
      captioner eval --references refs.csv -m gemini-2.5-flash-lite -m gpt-4.1-nano
    """
    from . import compare as compare_module
    from .pipeline import RunSettings

    try:
        references = compare_module.read_references(references_file)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigFailure(f"cannot read {references_file}: {exc}") from exc
    if paths:
        wanted = [os.path.abspath(p) for p in paths]
        references = {p: r for p, r in references.items()
                      if any(p == w or p.startswith(w.rstrip(os.sep) + os.sep) for w in wanted)}
    if not references:
        raise ConfigFailure(f"no references in {references_file} (rows of: path,reference caption)")
    recipe = resolve_recipe(template_name, prompt, system, schema_spec, options, model_names)
    models, keys = _models_and_keys(model_names, need_keys=True)
    check_schema(models, recipe.schema)
    for model in models:
        prepare_to_run(model)
    settings = RunSettings(prompt=recipe.prompt, system=recipe.system, options=check_options(models, recipe.options),
                           schema=recipe.schema)
    with open_store(db or config.default_db()) as store:
        table, _ = compare_module.evaluate(store, models, keys, settings, references)
    if as_json:
        print_json(table)
        return
    print_table(table, ["model", "photos", "bleu4", "mean_words"])
    click.echo("BLEU-4 counts shared word sequences with the references: it rewards wording, not truth. "
               "Prefer `compare --judge`.")


@batches.command("export")
@click.argument("paths", nargs=-1, required=True)
@click.option("-m", "--model", "model_name", required=True, help="Model id (openai/NAME for a self-hosted engine)")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Folder for the shards")
@click.option("--shard-lines", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True, metavar="N",
              help="Lines per shard (one shard per GPU job)")
@click.option("--images", type=click.Choice(["base64", "file-url"]), default="base64", show_default=True,
              help="Images inline, or as file:// paths (vllm run-batch --allowed-local-media-path)")
@recipe_options
@click.pass_obj
def batches_export(db, paths, model_name, out_dir, shard_lines, images, prompt, system, options, template_name,
                   schema_spec):
    """Write OpenAI batch input shards for `vllm run-batch` and record them as jobs of this database.

    \\b
    Example:
      captioner batches export ~/Pictures -m openai/Qwen/Qwen2.5-VL-7B-Instruct --out shards/
    """
    from . import batch_files
    from .pipeline import RunSettings

    _check_paths(paths)
    recipe = resolve_recipe(template_name, prompt, system, schema_spec, options, (model_name,))
    model = resolve_model(model_name)
    check_schema([model], recipe.schema)
    settings = RunSettings(prompt=recipe.prompt, system=recipe.system, options=check_options([model], recipe.options),
                           schema=recipe.schema)
    with open_store(db or config.default_db()) as store:
        try:
            summary = batch_files.export(store, model, settings, list(paths), out_dir, shard_lines, images)
        except ValueError as exc:
            raise ConfigFailure(str(exc)) from exc
    for shard in summary.shards:
        click.echo(shard)
    click.echo(f"{summary.items:,} requests in {report.plural(len(summary.shards), 'shard')}, "
               f"{summary.skipped_done:,} already done or in open jobs; run each shard with "
               "`vllm run-batch -i SHARD -o OUT --model ...`, then `captioner batches import OUT...`")


@batches.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@json_option("the summary")
@click.pass_obj
def batches_import(db, files, as_json):
    """Store results from batch output files (OpenAI batch output shape, as vllm run-batch writes it).
    Safe to run on the same files any number of times, in any order, partial or cut short."""
    from . import batch_files

    with open_store(db or config.default_db()) as store:
        summary = batch_files.import_files(store, resolve_model, list(files))
    if as_json:
        print_json(summary.to_dict())
        return
    click.echo(f"{summary.lines:,} lines: {summary.ok:,} captions stored, {summary.failed:,} failed, "
               f"{summary.ignored:,} already stored or not ours, {summary.unreadable:,} unreadable")
