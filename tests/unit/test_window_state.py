"""The stream's window-state plan: what the fold script is told, and the text it is given."""

from __future__ import annotations

import json
import random

from pipelines.features.catalog import load_catalog
from pipelines.stream.window_state import compact_json, plan_entity

# The declaration ids of the built-in entities as the state written before the script wrote Feast's rows recorded
# them (commit f0d5341). A state whose id differs is folded again from its kept events, once per entity: a change of
# what the script is told about rows must not change the id of what the state holds.
BUILT_IN_SPEC_IDS = {"card": "1529ee337211", "device": "ae1c1bdc8ba0", "ip": "e3cd1d691d46", "merchant": "4475a1fe04a8"}


def test_the_built_in_states_keep_their_declaration_ids() -> None:
    catalog = load_catalog()
    ids = {e.name: plan_entity(e, catalog.views_of(e)).spec_id for e in catalog.window_entities}
    assert ids == BUILT_IN_SPEC_IDS


def test_compact_json_is_the_text_json_dumps_writes() -> None:
    rnd = random.Random(5)
    pool: list[object] = [None, True, 0, -3, 2**53, 0.1, -0.0, 1e300, 12.5, "", 'q"uote', "back\\slash", "é中", "t-1"]
    for _ in range(2000):
        value: list[object] = [rnd.choice(pool) for _ in range(rnd.randrange(0, 6))]
        assert compact_json(value) == json.dumps(value, separators=(",", ":"))
    routes = {"merchant": "m1", "category": "5411"}
    assert compact_json(routes) == json.dumps(routes, separators=(",", ":"))
