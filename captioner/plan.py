"""Planning a run: which files need a caption. Reads the database, never writes it
(the `runs` row is opened when the run starts)."""

from __future__ import annotations

import os
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
    video_recipe: Recipe | None = None,
    videos: bool = True,
    live_photos: str = "skip",
    force: bool = False,
    retry_failed: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    limit: int | None = None,
    max_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Plan:
    """Scan the roots against what the database already has for these recipes (photos, clips)."""
    done = None
    if not force:
        done = store.done_index(recipe.key, retry_failed=retry_failed)
        if video_recipe is not None and videos:
            done = done.union(store.done_index(video_recipe.key, retry_failed=retry_failed))
    plan = Plan(done=done)
    stills: set[tuple[str, str]] = set()
    for item in scan(roots, include, exclude, done.path_done if done else None, max_bytes, videos=videos):
        if isinstance(item, Skipped):
            if item.reason == DONE:
                plan.skipped_done += 1
                plan.failed_before += done is not None and item.path in done.failed_paths
            else:
                plan.skipped.append((item.path, item.reason))
        else:
            plan.todo.append(item)
        if not isinstance(item, Skipped) or item.reason == DONE:
            stills.add(_moment(item.path))
    if live_photos == "skip":
        plan.todo = [item for item in plan.todo if not _motion_part(item, stills, plan)]
    if limit is not None and len(plan.todo) > limit:
        plan.over_limit = len(plan.todo) - limit
        plan.todo = plan.todo[:limit]
    return plan



def without_motion_parts(found: list[Found]) -> list[Found]:
    """Found files less the clips that are the motion part of a Live Photo (for estimates)."""
    stills = {_moment(item.path) for item in found}
    return [item for item in found if not _motion_part(item, stills, Plan())]


STILL_SUFFIXES = {".heic", ".heif", ".jpg", ".jpeg", ".dng", ".avif"}


def _moment(path: str) -> tuple[str, str]:
    """A Live Photo's still and motion share a folder and a name: that pair is the moment."""
    folder, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    return (folder, stem.lower()) if suffix.lower() in STILL_SUFFIXES else ("", "")


def _motion_part(item: Found, stills: set[tuple[str, str]], plan: Plan) -> bool:
    """A short clip beside a still of the same name is the still's motion: skipped (the still is captioned)."""
    if item.kind != "video":
        return False
    folder, name = os.path.split(item.path)
    stem = os.path.splitext(name)[0]
    if (folder, stem.lower()) not in stills:
        return False
    still = next((n for n in sorted(os.listdir(folder)) if os.path.splitext(n)[0].lower() == stem.lower()
                  and os.path.splitext(n)[1].lower() in STILL_SUFFIXES), stem)
    plan.skipped.append((item.path, f"motion part of {still}"))
    return True
