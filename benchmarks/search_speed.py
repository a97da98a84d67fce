"""Search speed: `captioner search` on a database with 100,000 captions.

Baseline in the same run: a plain LIKE scan over the same captions.

    python benchmarks/search_speed.py [--captions 100000]
"""

from __future__ import annotations

import argparse
import random
import time

from captioner.search import search
from captioner.store import Store

from _common import machine, workdir

WORDS = """
cat dog pug tabby rocket launch pad dusk espresso cup saucer table beach sunset mountain cairn
granite snow forest trail camera night flash ocelot elephant herd tree bicycle shop sign street
portrait woman man child uniform flag notebook handwriting sticky note pen phone desk office lamp
window river bridge boat butterflies butterfly flower garden bee bird sky cloud rain city car bus
train station market fruit
""".split()


def fill(store: Store, count: int) -> None:
    rng = random.Random(1)
    conn = store.conn
    conn.execute("BEGIN")
    run_id = conn.execute("INSERT INTO runs (model, prompt, status) VALUES ('gpt-4o-mini', 'p', 'completed')").lastrowid
    for n in range(count):
        image_id = conn.execute("INSERT INTO images (path, sha256, taken_at) VALUES (?, ?, ?)",
                                (f"/photos/{n // 1000:03d}/IMG_{n:06d}.jpg", f"{n:064x}",
                                 f"20{10 + n % 15}-{1 + n % 12:02d}-{1 + n % 28:02d}T12:00:00")).lastrowid
        text = "A " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))) + "."
        conn.execute("INSERT INTO captions (image_id, run_id, model, prompt, caption, status, input_tokens, "
                     "output_tokens, cost_usd) VALUES (?, ?, 'gpt-4o-mini', 'p', ?, 'ok', 1000, 30, 0.0002)",
                     (image_id, run_id, text))
    conn.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--captions", type=int, default=100_000)
    args = parser.parse_args()
    path = workdir() / "search.db"
    store = Store(str(path))
    started = time.perf_counter()
    fill(store, args.captions)
    print(f"{args.captions:,} captions written in {time.perf_counter() - started:.1f} s; {machine()}")
    for query in ("butterfly", "pug AND beach", "rocket launch", '"sticky note"'):
        started = time.perf_counter()
        hits = search(store, query, limit=20)
        fts = time.perf_counter() - started
        word = query.strip('"').split()[0]
        started = time.perf_counter()
        store.conn.execute("SELECT count(*) FROM captions WHERE caption LIKE ?", (f"%{word}%",)).fetchone()
        like = time.perf_counter() - started
        print(f"search {query!r:18s} {fts * 1000:7.1f} ms ({len(hits)} shown)   LIKE scan {like * 1000:7.1f} ms"
              f"   ratio {fts / like:.2f}")


if __name__ == "__main__":
    main()
