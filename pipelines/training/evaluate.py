"""Honest evaluation: ranking metrics, recall at 1 % false-positive rate, a rules baseline, label thresholds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from core.models.manifest import Metrics, Thresholds

FPR_BUDGET = 0.01
SUSPICIOUS_PRECISION = 0.2  # a review queue: one case in five is fraud
HIGHLY_SUSPICIOUS_PRECISION = 0.6  # decline-worthy: most are fraud
FALLBACK_SHARE = (0.02, 0.005)  # top 2 % / top 0.5 % of validation scores when a precision is out of reach


def metrics(labels: np.ndarray, scores: np.ndarray) -> Metrics:
    """ROC-AUC, PR-AUC (average precision) and recall at 1 % FPR; None where the rows hold one class only."""
    labels = labels.astype(bool)
    positives = int(labels.sum())
    if positives == 0 or positives == len(labels):
        return Metrics(rows=len(labels), positives=positives, roc_auc=None, pr_auc=None, recall_at_1pct_fpr=None)
    fpr, tpr, _ = roc_curve(labels, scores)
    return Metrics(
        rows=len(labels),
        positives=positives,
        roc_auc=float(roc_auc_score(labels, scores)),
        pr_auc=float(average_precision_score(labels, scores)),
        recall_at_1pct_fpr=float(tpr[fpr <= FPR_BUDGET].max()),
    )


@dataclass(frozen=True)
class Rule:
    feature: str
    at_least: float

    def __str__(self) -> str:
        return f"{self.feature} >= {self.at_least:g}"


# The rules a fraud team writes before it has a model: big amounts, velocity, new merchants, risky places.
BASELINE_RULES = (
    Rule("amount", 500.0),
    Rule("amount_to_card_mean_7d", 4.0),
    Rule("card_txn_count_1h", 4),
    Rule("card_distinct_merchants_24h", 5),
    Rule("card_distinct_countries_24h", 2),
    Rule("merchant_fraud_rate_30d", 0.05),
    Rule("device_distinct_cards_24h", 3),
    Rule("ip_distinct_cards_24h", 4),
)


def baseline_rules(features: list[str]) -> list[Rule]:
    return [r for r in BASELINE_RULES if r.feature in features]


def baseline_scores(frame: pd.DataFrame, rules: list[Rule]) -> np.ndarray:
    """The share of rules that fire, with the amount as a tie-breaker so that the score ranks every row."""
    fired = np.zeros(len(frame))
    for rule in rules:
        fired += (frame[rule.feature].astype("float64").fillna(-np.inf) >= rule.at_least).to_numpy()
    amount = frame["amount"].astype("float64").fillna(0).to_numpy() if "amount" in frame else np.zeros(len(frame))
    return np.asarray((fired + amount / (amount.max() + 1.0) * 0.5) / (len(rules) + 1), dtype=np.float64)


def choose_thresholds(labels: np.ndarray, scores: np.ndarray) -> Thresholds:
    """The lowest score reaching each target precision on the validation rows (a score quantile as fallback)."""
    precision, _, cut = precision_recall_curve(labels.astype(bool), scores)
    chosen: list[float] = []
    methods: list[str] = []
    for target, share in zip((SUSPICIOUS_PRECISION, HIGHLY_SUSPICIOUS_PRECISION), FALLBACK_SHARE, strict=True):
        reach = np.flatnonzero(precision[:-1] >= target)
        if reach.size:
            chosen.append(float(cut[reach[0]]))
            methods.append(f"precision >= {target:g} on validation")
        else:
            chosen.append(float(np.quantile(scores, 1 - share)))
            methods.append(f"top {share:.1%} of validation scores (precision {target:g} not reached)")
    suspicious, highly = chosen[0], max(chosen)
    return Thresholds(
        suspicious=suspicious, highly_suspicious=highly, method=f"suspicious: {methods[0]}; highly: {methods[1]}"
    )
