"""What the fault-injection suite did, collected across its tests and printed once at the end of the session.

The issue asks for the totals, not only pass/fail: how many faults were injected, how many requests were sent
through them, and that no answer was wrong and no event lost. The tests add to `SUMMARY`; tests/conftest.py prints
it in pytest's terminal summary when any fault test ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FaultSummary:
    faults: list[str] = field(default_factory=list)  # one line per fault injected
    requests: int = 0
    wrong_answers: int = 0
    events_lost: int = 0

    def lines(self) -> list[str]:
        return [
            f"faults injected: {len(self.faults)}",
            *(f"  - {fault}" for fault in self.faults),
            f"requests sent: {self.requests}",
            f"wrong answers: {self.wrong_answers}",
            f"events lost: {self.events_lost}",
        ]


SUMMARY = FaultSummary()
