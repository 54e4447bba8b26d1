"""Seeded synthetic generator of card transactions, late labels and fraud ground truth.

    summary = generate(Path("data/raw"), GenerateConfig(seed=7, cards=1000, days=14))

The same config always gives byte-identical files; see `GenerateConfig` for the knobs.
"""

from pipelines.generate.config import PATTERNS, GenerateConfig, GenerateSummary
from pipelines.generate.generator import generate
from pipelines.generate.writer import FILE_NAMES, GROUND_TRUTH_SCHEMA

__all__ = ["FILE_NAMES", "GROUND_TRUTH_SCHEMA", "PATTERNS", "GenerateConfig", "GenerateSummary", "generate"]
