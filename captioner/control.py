"""Run control: the one place that decides a run stops, and why.

Four things end a run early: the user (Ctrl-C), the budget (`--max-cost`), a
fatal fault (a bad key, an unknown model, an exhausted quota) and early
failures (the first few requests all failing with no answer, which says the
fault is the run's, not the images'). Every stage asks `control.stopping`
before it starts new work; nothing else sets or clears that state.
"""

from __future__ import annotations

COMPLETED = "completed"
BUDGET = "budget"
INTERRUPTED = "interrupted"
FAILED = "failed"

# When several reasons arrive, the most serious one names how the run ended.
SEVERITY = {COMPLETED: 0, BUDGET: 1, INTERRUPTED: 2, FAILED: 3}

# If this many requests fail in a row before any succeeds, the fault is the
# run's (wrong URL, bad option), not the images': stop instead of trying them all.
EARLY_FAILURE_LIMIT = 3


class RunControl:
    """Why and when a run stops. `status` is what the `runs` row records."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.status = COMPLETED
        self.message: str | None = None
        self.interrupts = 0
        self.answered = False
        self.unanswered = 0

    @property
    def stopping(self) -> bool:
        """No new request may start."""
        return self.status != COMPLETED

    @property
    def run_at_fault(self) -> bool:
        """The run (not its images) failed: failures held back are not the images' fault."""
        return self.status == FAILED

    def _stop(self, status: str, message: str | None) -> None:
        if SEVERITY[status] > SEVERITY[self.status]:
            self.status = status
            if message is not None:
                self.message = message

    def interrupt(self) -> bool:
        """Ctrl-C. Returns True from the second one on: abandon the requests in flight."""
        self.interrupts += 1
        self._stop(INTERRUPTED, None)
        return self.interrupts > 1

    def budget_reached(self, max_cost: float) -> None:
        """The next request could take spending past `--max-cost`."""
        self._stop(BUDGET, f"stopped before exceeding --max-cost ${max_cost:g}")

    def fatal(self, message: str) -> None:
        """A fault that would fail every image the same way."""
        self._stop(FAILED, message)

    def crashed(self, message: str) -> None:
        """An unexpected error in captioner itself: the run is recorded failed, never completed."""
        self._stop(FAILED, message)

    def answered_ok(self) -> None:
        self.answered = True

    def failed_without_answer(self, error: str) -> bool:
        """A request that got no answer after its retries. Until one request
        has worked, such a failure may be the run's fault rather than the
        image's: returns True to hold it back. The first few all failing stop
        the run as fatal."""
        if self.answered or self.stopping:
            return False  # the run already worked, or stopped for another reason
        self.unanswered += 1
        if self.unanswered >= EARLY_FAILURE_LIMIT:
            self.fatal(f"the first {EARLY_FAILURE_LIMIT} requests to {self.model_id} all failed: {error}")
        return True
