"""The judge's prompt and how its answer is read.

A strong vision model sees the photo and two captions and says which describes
the photo better: accuracy first (no invented objects, text or people), then
coverage of what matters, then usefulness for search; length is not a merit.
The pair is judged in both orders; `compare` counts a verdict only when both
orders agree, which cancels a judge's position bias.
"""

from __future__ import annotations

import hashlib
import json
import re

JUDGE_PROMPT = """You compare two captions of the photo shown. Decide which caption describes this photo better.

Judge in this order of importance:
1. Accuracy: a caption that mentions objects, people, text or places that are not in the photo is worse.
2. Coverage: the main subject, the setting and any legible text.
3. Usefulness for finding the photo by searching: concrete nouns, places, visible text.
A longer caption is not better for being longer. If they are equally good, say tie.

Caption 1: {caption_1}

Caption 2: {caption_2}

Answer with JSON only: {{"winner": "1" or "2" or "tie", "reason": "one short sentence"}}"""

FIRST, SECOND, TIE, INVALID = "first", "second", "tie", "invalid"


def judge_prompt(caption_1: str, caption_2: str) -> str:
    return JUDGE_PROMPT.format(caption_1=caption_1.strip(), caption_2=caption_2.strip())


def prompt_id() -> str:
    """Which version of the prompt a judgement was made with (stored on it; a new prompt judges again)."""
    return "judge-v1-" + hashlib.sha256(JUDGE_PROMPT.encode()).hexdigest()[:12]


def parse_verdict(text: str | None) -> tuple[str, str]:
    """(FIRST, SECOND, TIE or INVALID, the judge's reason). Anything off-format is INVALID, never a win."""
    if not text:
        return INVALID, "no answer"
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        return INVALID, f"not JSON: {text.strip()[:200]}"
    try:
        answer = json.loads(match.group())
    except json.JSONDecodeError:
        return INVALID, f"not JSON: {text.strip()[:200]}"
    if not isinstance(answer, dict):
        return INVALID, f"not a JSON object: {text.strip()[:200]}"
    winner = str(answer.get("winner", "")).strip().lower()
    reason = str(answer.get("reason", ""))[:500]
    verdict = {"1": FIRST, "2": SECOND, "tie": TIE}.get(winner)
    return (verdict, reason) if verdict else (INVALID, f"winner {winner!r}: {reason}"[:500])
