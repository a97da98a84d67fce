"""Planning a run: which files need a caption. Reads the database, never writes it
(the `runs` row is opened when the run starts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .recipe import Recipe
from .scan import DEFAULT_MAX_FILE_BYTES, DONE, Found, Skipped, scan
from .store import DoneIndex, Store


@dataclass
class Plan:
    """The files to caption, and what was left out and why."""

    todo: list[Found] = field(default_factory=list)
    done: DoneIndex | None = None  # None with --force: nothing counts as done
    skipped_done: int = 0
    failed_before: int = 0  # of those skipped as done, how many only ever failed
    skipped: list[tuple[str, str]] = field(default_factory=list)
    over_limit: int = 0


def make_plan(
    store: Store,
    roots: Sequence[str],
    recipe: Recipe,
    *,
    force: bool = False,
    retry_failed: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    limit: int | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Plan:
    """Scan the roots against what the database already has for this recipe."""
    done = None if force else store.done_index(recipe.key, retry_failed=retry_failed)
    plan = Plan(done=done)
    for item in scan(roots, include, exclude, done.path_done if done else None, max_bytes):
        if isinstance(item, Skipped):
            if item.reason == DONE:
                plan.skipped_done += 1
                plan.failed_before += done is not None and item.path in done.failed_paths
            else:
                plan.skipped.append((item.path, item.reason))
        else:
            plan.todo.append(item)
    if limit is not None and len(plan.todo) > limit:
        plan.over_limit = len(plan.todo) - limit
        plan.todo = plan.todo[:limit]
    return plan
