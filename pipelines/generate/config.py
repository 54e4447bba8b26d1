"""Configuration and result of a generator run."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Fraud patterns, in the order of their integer codes (0 is genuine traffic).
PATTERNS: tuple[str, ...] = ("none", "card_testing", "account_takeover", "compromised_merchant", "ring")
GENUINE, CARD_TESTING, ACCOUNT_TAKEOVER, COMPROMISED_MERCHANT, RING = range(len(PATTERNS))

DAY_MS = 86_400_000
DEFAULT_END = datetime(2026, 11, 15, tzinfo=UTC)


@dataclass(frozen=True)
class GenerateConfig:
    """What to generate. The generated period is [end - days, end); the same config gives the same bytes.

    Incident rates are per card and day; they are tuned for an overall fraud rate of about 1%.
    """

    seed: int = 7
    cards: int = 1000
    days: int = 14
    end: datetime = DEFAULT_END
    merchants: int | None = None  # default: max(150, cards // 8)
    tx_per_card_day: float = 1.3  # median of the cards' daily transaction rates (mean is about 1.7)
    card_testing_rate: float = 0.00032
    account_takeover_rate: float = 0.0011
    ring_burst_rate: float = 0.00033
    compromised_share: float = 0.0022  # expected share of all transactions stolen via compromised merchants
    fraud_label_rate: float = 0.93  # share of fraud transactions that get labeled fraud
    genuine_label_rate: float = 0.08  # share of genuine transactions that get a confirmed-genuine label
    cards_per_chunk: int = 50_000  # a day is generated in card ranges of this size (fixed: part of the seed)
    rows_per_write: int = 100_000  # rows converted to Arrow/JSON at a time

    def __post_init__(self) -> None:
        if self.end.tzinfo is None or self.end.utcoffset() is None:
            raise ValueError("end must be a timezone-aware datetime")
        if self.cards < 1 or self.days < 1:
            raise ValueError("cards and days must be at least 1")
        if self.merchants is not None and self.merchants < 20:
            raise ValueError("merchants must be at least 20")
        if self.cards_per_chunk < 1 or self.rows_per_write < 1:
            raise ValueError("cards_per_chunk and rows_per_write must be at least 1")
        for name in ("fraud_label_rate", "genuine_label_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")

    @property
    def merchant_count(self) -> int:
        """Number of merchants in the world."""
        return self.merchants if self.merchants is not None else max(150, self.cards // 8)

    @property
    def end_ms(self) -> int:
        """End of the period as epoch milliseconds (exclusive)."""
        end = self.end.astimezone(UTC)
        return int((end - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1))

    @property
    def start_ms(self) -> int:
        """Start of the period as epoch milliseconds (inclusive)."""
        return self.end_ms - self.days * DAY_MS


@dataclass(frozen=True)
class GenerateSummary:
    """What a run wrote."""

    transactions: int
    labels: int
    fraud_transactions: int
    fraud_rate: float
    start: datetime
    end: datetime
    files: dict[str, Path]
    seconds: float
    pattern_counts: dict[str, int] = field(default_factory=dict)  # transactions per pattern, "none" included
    incidents: dict[str, int] = field(default_factory=dict)  # fraud incidents per pattern
    fraud_labels: int = 0
