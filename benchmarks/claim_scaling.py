"""Claim cost as the library grows: every photo a run sends is first claimed
(`Store.claim`: is it done already? is another process on it?). Measured on
databases holding 1,000 to 50,000 captions of the same recipe, against the
query the claim used before (joined from the captions side), in the same run.

    python benchmarks/claim_scaling.py [--sizes 1000,10000,50000]
"""

from __future__ import annotations

import argparse
import time

from captioner.store import Store

from _common import machine, workdir

# The done-check `claim` ran before: SQLite walked every caption of the recipe.
BEFORE = ("SELECT 1 FROM captions c JOIN images i ON i.id = c.image_id WHERE i.sha256 = ? AND c.recipe = ? "
          "AND c.status IN ('ok', 'refused', 'blocked', 'failed', 'malformed') LIMIT 1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,50000")
    args = parser.parse_args()
    print(f"{machine()}; ms per claim of a new photo, mean of 200 (before: of 50)")
    print(f"{'captions':>9}  {'before ms':>9}  {'now ms':>7}  {'ratio':>7}")
    for size in map(int, args.sizes.split(",")):
        store = Store(str(workdir() / f"claims{size}.db"))
        conn = store.conn
        conn.execute("BEGIN")
        for n in range(size):
            image_id = conn.execute("INSERT INTO images (path, sha256) VALUES (?, ?)",
                                    (f"/photos/IMG_{n:06d}.jpg", f"{n:064x}")).lastrowid
            conn.execute("INSERT INTO captions (image_id, model, prompt, status, recipe) "
                         "VALUES (?, 'gpt-4o-mini', 'p', 'ok', 'recipe')", (image_id,))
        conn.execute("COMMIT")
        started = time.perf_counter()
        for n in range(50):
            conn.execute(BEFORE, (f"new-{n}", "recipe")).fetchone()
        before = (time.perf_counter() - started) / 50 * 1000
        started = time.perf_counter()
        for n in range(200):
            store.claim(f"new-{n}", "recipe", retry_failed=False, force=False)
        now = (time.perf_counter() - started) / 200 * 1000
        store.close()
        print(f"{size:9,d}  {before:9.3f}  {now:7.3f}  {before / now:6.0f}x")


if __name__ == "__main__":
    main()
