"""The score log's writer adds consecutive requests' `Score` blocks as one run (`_Columns.add_scores`): the table
is row for row the one built block by block."""

from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa

from inference_api.domain.score_log import _Block, to_table
from tests.unit.test_score_log import fake_model, score


def test_runs_of_score_blocks_give_the_rows_of_block_by_block() -> None:
    model, other = fake_model(), fake_model("fraud_v3", version=7)
    now = time.time()
    shadow = score(other, "t2", 0.9, [1.0, math.nan], role="shadow")
    blocks = [
        _Block("r1", now, [score(model, "t1", 0.25, [1.5, math.nan])]),
        _Block("r2", now + 0.1, [score(model, "t2", 0.5, [2.0, 3.0], shadow=shadow), shadow]),  # two models
        _Block(None, now + 0.2, [score(model, "t3", 0.75, [4.0, 5.0]), score(model, "t4", 0.1, [6.0, 7.0])]),
        _Block("r4", now + 0.3, [], model, np.array([[8.0, 9.0]]), np.array([0.8])),  # OIP's matrix between runs
        _Block("r5", now + 0.4, [score(model, "t5", 0.2, [1.0, 1.0])]),
        _Block("r6", now + 0.5, [score(model, "t6", 0.3, [2.0, 2.0])]),
    ]
    blocks[-1].scores[0].vector = None  # a score without its vector: row by row within the run
    whole = to_table(blocks)
    one_by_one = pa.concat_tables([to_table([block]) for block in blocks])
    rows = whole.to_pylist()
    assert rows == one_by_one.to_pylist()
    assert [r["request_id"] for r in rows] == ["r1", "r2", "r2", None, None, "r4", "r5", "r6"]
    assert [r["version"] for r in rows] == [3, 3, 7, 3, 3, 3, 3, 3]
