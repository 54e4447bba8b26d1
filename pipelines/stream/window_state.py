"""Incremental window state: each entity's aggregates kept in Redis and updated by the events, not recomputed.

Per entity (one Redis Cluster hash tag, `{card:c1}`), the server-side script FOLD folds a batch's new events and
labels into running state and answers every feature of the entity's window views at its latest event time t, the
values `pipelines.features.semantics.evaluate` gives over the whole history. One call takes any number of entities
(a chunk of a batch on a single Redis, one entity on a cluster), decodes each plan's description once, and on a
single Redis writes each entity's Feast rows itself (ValueProto and Timestamp bytes, as `pipelines.online_layout`
encodes them). Per entity:

- `...:st` (hash): the declaration's id, and the state as one MessagePack array: t, the previous distinct event time
  (seconds_since_prev), per window the event count and fraud count and, per column, the non-null count, the sum as
  a double-double (hi, lo: adding and evicting never loses the small terms) and the min/max as monotonic deques
  (usually a handful of entries).
- `...:win` (sorted set by event time): one compact member per event still inside the longest window,
  `[transaction id, value, ...]` (the columns the sums, counts and deques read): what is evicted when t moves on.
  An entity whose features need no eviction (only `seconds_since_prev` and `count_distinct`) keeps none.
- `...:seen:<column>` (sorted set): each distinct value's last event time; a window's distinct count is a ZCOUNT.
- `...:lab` (hash): transaction id -> `event time;,label time:fraud,...`, only for transactions with labels (an
  unlabelled event keeps nothing here: a label that comes after its event carries the event's time, and the script
  finds the event in `...:win` at that time; one that comes first leaves `;,label...` until the event), and
  `...:plab` (sorted set): labels whose time is after t (not yet in force), applied when t passes them.

When t advances from t0 to t1, each window W evicts the members with time in (t0-W, t1-W] (read by range, so the
cost per event is the same for an entity with ten events in its window as for one with a million), then labels
due in (t0, t1] are applied, then the new events are added to every window they fall in (late ones included).
A redelivered event is a member already there (ZADD NX answers 0) and changes nothing; the script runs atomically,
so two workers on one entity need no lock. This is Chronon's and Tecton's split (raw events only where eviction
needs them, running aggregates, distinct counts by last-seen time) with exact millisecond windows.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from pipelines.features.catalog import NO_COLUMN, Agg, EntitySpec, WindowFeature, WindowView
from pipelines.online_layout import feature_field, ts_field

# Slot codes the script understands, by function.
_CODES = {
    Agg.SUM: "sum",
    Agg.MEAN: "mean",
    Agg.MIN: "min",
    Agg.MAX: "max",
    Agg.DISTINCT: "dist",
    Agg.FRAUD_RATE: "fraud",
    Agg.SECONDS_SINCE_PREV: "prev",
}


# Compact JSON, the text json.dumps(obj, separators=(",", ":")) writes, from one C encoder made once: json.dumps and
# JSONEncoder.encode build a new one on every call, which cost more than the encoding of a short member.
_JSON = json.JSONEncoder(separators=(",", ":"))
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)  # CPython's C encoder (absent from typeshed)
_C_ENCODER = (
    _MAKE_ENCODER(None, _JSON.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    if _MAKE_ENCODER is not None
    else None
)


def compact_json(obj: list[Any] | dict[str, Any]) -> str:
    """`json.dumps(obj, separators=(",", ":"))` of a flat list or dict (no cycle check: nothing here nests)."""
    if _C_ENCODER is None:
        return _JSON.encode(obj)
    return "".join(_C_ENCODER(obj, 0))


def _column(feature: WindowFeature) -> str | None:
    return None if feature.column is None or feature.column in NO_COLUMN else feature.column


@dataclass(frozen=True)
class EntityPlan:
    """What one entity's state holds and how the script computes each of its features (in view order)."""

    entity: EntitySpec
    features: tuple[WindowFeature, ...]
    windows: tuple[int, ...]  # distinct window lengths, ms
    columns: tuple[str, ...]  # values kept per event in `...:win`
    distinct: tuple[str, ...]  # columns with a `...:seen:<column>` set
    spec: bytes  # the script's description (MessagePack)
    spec_id: str  # changes with the declaration: the state records the one it was folded under
    keeps_events: bool  # a `...:win` set (some feature evicts per event)

    def keys(self, key: str) -> list[str]:
        base = f"fraudserve:{{{self.entity.name}:{key}}}"
        legacy = [f"{base}:events", f"{base}:labels"]  # the recomputing updater's history and label set
        return [f"{base}:st", f"{base}:win", f"{base}:lab", f"{base}:plab", *legacy] + [
            f"{base}:seen:{column}" for column in self.distinct
        ]

    def event_args(
        self, transaction_id: str, ts_ms: int, record: dict[str, Any]
    ) -> tuple[int, str, list[Any], list[Any]]:
        """An event as the script reads it: its time, its window member and the member's values
        (`window_member`), and its distinct-counted values."""
        text, values = window_member(transaction_id, self.columns, record)
        return ts_ms, text, values, [record.get(c) for c in self.distinct]


def window_member(transaction_id: str, columns: tuple[str, ...], record: dict[str, Any]) -> tuple[str, list[Any]]:
    """An event's window member for an entity that keeps `columns`: the text kept in `...:win` and the same values as
    a list (`[transaction id, value, ...]`: the script folds them without parsing the text). Entities that keep the
    same columns share it (the updater builds it once per event and column layout)."""
    values = [transaction_id, *[record.get(c) for c in columns]]
    return compact_json(values), values


def plan_entity(entity: EntitySpec, views: Sequence[WindowView]) -> EntityPlan:
    features = tuple(f for view in views for f in view.features)
    windows = tuple(sorted({f.window_ms for f in features if f.window is not None}))
    evicted = [f for f in features if f.window is not None and f.agg not in (Agg.DISTINCT,)]
    columns = tuple(sorted({c for f in evicted if (c := _column(f)) is not None and f.agg is not Agg.FRAUD_RATE}))
    distinct = tuple(sorted({c for f in features if f.agg is Agg.DISTINCT and (c := _column(f)) is not None}))
    accumulators: dict[tuple[int, int], set[str]] = {}
    slots: list[list[Any]] = []
    for f in features:
        column = _column(f)
        wi = windows.index(f.window_ms) + 1 if f.window is not None else 0
        if f.agg is Agg.COUNT and column is None:
            slots.append(["n", wi, 0])
            continue
        if f.agg in (Agg.FRAUD_RATE, Agg.SECONDS_SINCE_PREV):
            slots.append([_CODES[f.agg], wi, 0])
            continue
        if f.agg is Agg.DISTINCT:
            assert column is not None
            slots.append(["dist", wi, distinct.index(column) + 1])
            continue
        assert column is not None
        ci = columns.index(column) + 1
        need = {Agg.COUNT: "c", Agg.SUM: "cs", Agg.MEAN: "cs", Agg.MIN: "m", Agg.MAX: "x"}[f.agg]
        accumulators.setdefault((wi, ci), set()).update(need)
        slots.append(["c" if f.agg is Agg.COUNT else _CODES[f.agg], wi, ci])
    acc_list = sorted(accumulators)
    for slot in slots:
        if slot[0] in ("c", "sum", "mean", "min", "max"):
            slot.append(acc_list.index((slot[1], slot[2])) + 1)
    spec = {
        "w": list(windows),
        "r": 1 if evicted else 0,
        # [window, column, counts, sums, min deque, max deque] (flags 0/1)
        "a": [[wi, ci, *(int(kind in accumulators[wi, ci]) for kind in ("c", "s", "m", "x"))] for wi, ci in acc_list],
        "d": len(distinct),
        "f": sorted({windows.index(f.window_ms) + 1 for f in features if f.agg is Agg.FRAUD_RATE}),
        "s": slots,
        "c": list(columns),
    }
    spec_id = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    # Feast's rows, written by the script on a single Redis (not part of the state's id: the state is the same):
    # per view [version field, timestamp field, [feature field...], kinds ("i" int64, "d" float64, one a feature)].
    spec["v"] = [
        [
            f"_v:{view.view}",
            ts_field(view.view),
            [feature_field(view.view, f.name) for f in view.features],
            "".join("i" if f.dtype == "int64" else "d" for f in view.features),
        ]
        for view in views
    ]
    packed = msgpack.packb(spec, use_bin_type=False)  # field names as plain strings: the script's cmsgpack has no bin
    return EntityPlan(entity, features, windows, columns, distinct, packed, spec_id, bool(evicted))


def decode(plan: EntityPlan, answer: Sequence[Any]) -> tuple[int, int, list[int | float | None]]:
    """An entity's answer from FOLD: the state version, t, and each feature's value (counts as ints, the rest as
    floats)."""
    version, latest, *values = answer
    out: list[int | float | None] = []
    for feature, value in zip(plan.features, values, strict=True):
        if value is None or value is False:
            out.append(None)
        elif feature.dtype == "int64":
            out.append(int(value))
        else:
            out.append(float(value))
    return int(version), int(latest), out


def state_of(blob: bytes) -> dict[str, Any]:
    """The fields of a stored state (`...:st` field `b`) that a rebuild needs."""
    state = msgpack.unpackb(blob)
    return {"t": state[0] or None, "previous": state[1] or None, "version": state[9]}


# The state is one MessagePack array in the state hash's field `b`:
#   [t, previous time, [events per window], [fraud per window], [non-null per accumulator], [sum hi], [sum lo],
#    [max deque per accumulator: [[ts...], [value...]]], [min deque], version]
# An entity's keys (`EntityPlan.keys`): 1 state, 2 window events, 3 labels, 4 pending labels, 5 legacy history,
# 6 legacy labels, 7.. seen sets.
_ENTITY = r"""
local function fmt(x) return string.format('%.17g', x) end
-- times (integer milliseconds) as text: %d is several times cheaper than %.17g and writes the same digits
local function ms(x) return string.format('%d', x) end
-- labels: "ets;,ts:f,ts:f"
local function flag(rec, t)
  if not rec or t == nil then return 0 end
  local labs = rec:match(';(.*)$') or ''
  local best_ts, best_f = nil, 0
  for ts, f in labs:gmatch(',(%d+):(%d)') do
    ts = tonumber(ts); f = tonumber(f)
    if ts <= t and (best_ts == nil or ts > best_ts or (ts == best_ts and f > best_f)) then best_ts, best_f = ts, f end
  end
  return best_f
end
local function event_time(rec)
  if not rec then return nil end
  return tonumber(rec:match('^([^;]*)'))
end
-- whether the window set R holds transaction tid's event (time ets): a label's event may be folded already
local function holds(R, tid, ets)
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', R, ets, ets)) do
    if cjson.decode(m)[1] == tid then return true end
  end
  return false
end

-- Feast's bytes (pipelines.online_layout.encode_value / encode_ts): ValueProto int64_val (field 4, varint) of a
-- count, double_val (field 5, little-endian) of anything else, b"" for null; a Timestamp (seconds, nanos).
local function varint(v)
  local out = {}
  while v >= 128 do out[#out + 1] = string.char(v % 128 + 128); v = math.floor(v / 128) end
  out[#out + 1] = string.char(v)
  return table.concat(out)
end
local function encode_value(v, kind)
  if v == false or v == nil then return '' end
  if kind == 'i' then return '\32' .. varint(v) end
  return '\41' .. struct.pack('<d', v)
end
local function encode_ts(t)
  local seconds, nanos = math.floor(t / 1000), (t % 1000) * 1000000
  local out = ''
  if seconds ~= 0 then out = '\8' .. varint(seconds) end
  if nanos ~= 0 then out = out .. '\16' .. varint(nanos) end
  return out
end

-- monotonic deques: ascending ts, values strictly decreasing in sgn order
local function dq_insert(d, ts, v, sgn)
  local dts, dv = d[1], d[2]
  local k = #dts
  local m = k
  while k >= 1 and dts[k] > ts do k = k - 1 end
  if k < m and sgn * dv[k + 1] >= sgn * v then return end
  local j = k
  while j >= 1 and sgn * dv[j] <= sgn * v do j = j - 1 end
  for _ = j + 1, k do table.remove(dts, j + 1); table.remove(dv, j + 1) end
  table.insert(dts, j + 1, ts); table.insert(dv, j + 1, v)
end
local function dq_evict(d, bound)
  local dts = d[1]
  local m = 0
  while m < #dts and dts[m + 1] <= bound do m = m + 1 end
  if m > 0 then
    local ts, v = {}, {}
    for i = m + 1, #dts do ts[#ts + 1] = dts[i]; v[#v + 1] = d[2][i] end
    d[1], d[2] = ts, v
  end
end


-- One entity: K its keys (state, window, labels, pending labels, legacy history, legacy labels, seen sets...),
-- spec_id, mode, prevhint, labels_json, ev: flat (time, member, values, distinct values) quads; row: Feast's row key
-- of the entity (nil: the caller writes the row). Returns {version, t} when it wrote the row, else
-- {version, t, value...}; or {status} ('respec', 'legacy', 'none') with nothing written.
local function fold_entity(spec, K, spec_id, mode, prevhint, labels_json, ev, row)
local H, R, L, P = K[1], K[2], K[3], K[4]
local head = redis.call('HMGET', H, 'spec', 'b')
local stored_spec, blob = head[1], head[2]
if stored_spec and stored_spec ~= spec_id then return {'respec'} end
if (not stored_spec) and mode ~= 'seed' then
  if redis.call('EXISTS', K[5], K[6]) > 0 then return {'legacy'} end
end

local W, accs, slots = spec.w, spec.a, spec.s
local NW, NA, ND = #W, #accs, spec.d
local wmax = W[NW] or 0
local raw = spec.r == 1
local fraudw = spec.f
local is_fraud_window = {}
for _, wi in ipairs(fraudw) do is_fraud_window[wi] = true end

local S
if blob then S = cmsgpack.unpack(blob) else S = {false, false, {}, {}, {}, {}, {}, {}, {}, 0} end
local n, fr, cnt, hi, lo, dmax, dmin = S[3], S[4], S[5], S[6], S[7], S[8], S[9]
for wi = 1, NW do n[wi] = n[wi] or 0; fr[wi] = fr[wi] or 0 end
for a = 1, NA do
  cnt[a] = cnt[a] or 0; hi[a] = hi[a] or 0; lo[a] = lo[a] or 0
  dmax[a] = dmax[a] or {{}, {}}; dmin[a] = dmin[a] or {{}, {}}
end

local t0 = S[1] or nil
-- label records (`...:lab`) exist only for transactions with labels: most entities have none, and then the
-- per-event look-ups below are skipped (a rebuild's seeding writes one per event, so it looks them up)
local labelled = #fraudw > 0 and (mode == 'seed' or redis.call('EXISTS', L) == 1)
local p = S[2] or nil
if p == nil and prevhint ~= '' then p = tonumber(prevhint) end

-- new events: quads (ts, member, values as the member holds them, distinct values)
local events = {}
local t1 = t0
for i = 1, #ev, 4 do
  local ts = tonumber(ev[i])
  events[#events + 1] = {ts, ev[i + 1], ev[i + 2], ev[i + 3]}
  if t1 == nil or ts > t1 then t1 = ts end
end
-- the previous distinct event time: the latest one before t1
if t1 then
  if t0 and t0 < t1 and (p == nil or t0 > p) then p = t0 end
  for _, e in ipairs(events) do
    if e[1] < t1 and (p == nil or e[1] > p) then p = e[1] end
  end
end

-- fold one event into window wi (sign +1) or out of it (-1); f: its fraud verdict (fraud windows)
local function fold(wi, vals, ts, sign, f)
  n[wi] = n[wi] + sign
  for a = 1, NA do
    local acc = accs[a]
    if acc[1] == wi then
      local v = vals[acc[2] + 1]
      if v ~= nil and v ~= cjson.null then
        if acc[3] == 1 then
          local c = cnt[a] + sign
          cnt[a] = c
          if acc[4] == 1 then
            if c == 0 then hi[a], lo[a] = 0, 0 else
              local x = sign * v
              local h = hi[a]
              local s = h + x
              local bb = s - h
              local l = lo[a] + ((h - (s - bb)) + (x - bb))
              local s2 = s + l
              hi[a], lo[a] = s2, l - (s2 - s)
            end
          end
        end
        if sign > 0 then
          if acc[6] == 1 then dq_insert(dmax[a], ts, v, 1) end
          if acc[5] == 1 then dq_insert(dmin[a], ts, v, -1) end
        end
      end
    end
  end
  if f ~= nil then fr[wi] = fr[wi] + sign * f end
end

-- a transaction's verdict at t1 changed by d: every fraud window still holding its event (time ets) follows
local function reverdict(ets, d)
  if d == 0 then return end
  for _, wi in ipairs(fraudw) do
    if ets > t1 - W[wi] then fr[wi] = fr[wi] + d end
  end
end

-- 1. t moves from t0 to t1: evict what leaves each window (verdicts as they stood at t0)
local due_any = false
if t0 and t1 > t0 then
  local left = false
  for wi = 1, NW do
    local lo0, lo1 = t0 - W[wi], t1 - W[wi]
    -- a window that holds no event has nothing to evict (most entities' short windows, most of the time)
    if raw and n[wi] > 0 then
      local gone = redis.call('ZRANGEBYSCORE', R, '(' .. ms(lo0), ms(lo1), 'WITHSCORES')
      if wi == NW and #gone > 0 then left = true end
      for i = 1, #gone, 2 do
        local vals = cjson.decode(gone[i])
        local f = nil
        if is_fraud_window[wi] then
          f = 0
          if labelled then f = flag(redis.call('HGET', L, vals[1]), t0) end
        end
        fold(wi, vals, tonumber(gone[i + 1]), -1, f)
        if wi == NW and labelled then redis.call('HDEL', L, vals[1]) end
      end
    end
    for a = 1, NA do
      if accs[a][1] == wi then
        if accs[a][6] == 1 then dq_evict(dmax[a], lo1) end
        if accs[a][5] == 1 then dq_evict(dmin[a], lo1) end
      end
    end
  end
  -- every kept member is counted in the longest window, so nothing is older unless something just left it
  if left then redis.call('ZREMRANGEBYSCORE', R, '-inf', ms(t1 - wmax)) end
  -- last-seen times older than the longest window count nowhere (a ZCOUNT reads inside it): trimmed when events
  -- leave it (an entity that keeps events), else on every move
  if left or not raw then
    for i = 1, ND do redis.call('ZREMRANGEBYSCORE', K[6 + i], '-inf', ms(t1 - wmax)) end
  end
  -- 2. labels due in (t0, t1]: events already in a window may change their verdict
  if #fraudw > 0 then
    local due = redis.call('ZRANGEBYSCORE', P, '(' .. ms(t0), ms(t1))
    due_any = #due > 0
    local seen = {}
    for _, m in ipairs(due) do
      local tid = m:match('^(.*)|[^|]*|[^|]*$')
      if tid and not seen[tid] then
        seen[tid] = true
        local rec = redis.call('HGET', L, tid)
        local ets = event_time(rec)
        if ets then reverdict(ets, flag(rec, t1) - flag(rec, t0)) end
      end
    end
  end
end
-- pending labels up to t1 are in force now (those up to t0 were removed when t reached t0)
if #fraudw > 0 and t1 and (t0 == nil or due_any) then redis.call('ZREMRANGEBYSCORE', P, '-inf', ms(t1)) end

-- 3. new events join the windows they fall in; a member already stored is a redelivery
for _, e in ipairs(events) do
  local ts, member, vals, dv = e[1], e[2], e[3], e[4]
  if ts > t1 - wmax or NW == 0 then
    local fresh = true
    if raw then fresh = redis.call('ZADD', R, 'NX', ms(ts), member) == 1 end
    if fresh then
      if ND > 0 then
        for i = 1, ND do
          local v = dv[i]
          if v ~= nil and v ~= cjson.null then
            if type(v) == 'number' then v = fmt(v) end
            redis.call('ZADD', K[6 + i], 'GT', ms(ts), v)
          end
        end
      end
      if raw then
        local rec = nil
        if labelled then
          -- a record only for a transaction with labels (they came first); seeding (a rebuild) keeps one for
          -- every event, as the labels of stored histories carry no event time
          rec = redis.call('HGET', L, vals[1])
          if rec then rec = ms(ts) .. rec:sub((rec:find(';', 1, true)))
          elseif mode == 'seed' then rec = ms(ts) .. ';' end
          if rec then redis.call('HSET', L, vals[1], rec) end
        end
        for wi = 1, NW do
          if ts > t1 - W[wi] then
            local f = nil
            if is_fraud_window[wi] then f = flag(rec, t1) end
            fold(wi, vals, ts, 1, f)
          end
        end
      end
    end
  end
end

-- 4. new labels: in force now (ts <= t1) or pending until t passes them
if labels_json ~= '[]' then
  for _, lab in ipairs(cjson.decode(labels_json)) do
    local tid, ts, f, ets = lab[1], lab[2], lab[3], lab[4]
    local key = ',' .. string.format('%d', ts) .. ':' .. string.format('%d', f)
    local rec = redis.call('HGET', L, tid)
    if not rec then
      -- no record: the event is not folded yet, or it is, unlabelled (its record is made now, from its time)
      rec = ';'
      if ets and raw and holds(R, tid, ms(ets)) then rec = ms(ets) .. ';' end
    end
    local labs = rec:sub(rec:find(';', 1, true) + 1)
    if rec == ';' and ets and t1 and ets <= t1 - wmax then
      -- its event is out of every window for good (or was never in one): nothing to keep
    elseif not (labs .. ','):find(key .. ',', 1, true) then
      local before = flag(rec, t1)
      local rec2 = rec .. key
      redis.call('HSET', L, tid, rec2)
      if t1 == nil or ts > t1 then
        redis.call('ZADD', P, ms(ts), tid .. '|' .. string.format('%d', ts) .. '|' .. string.format('%d', f))
      else
        local ets = event_time(rec2)
        if ets then reverdict(ets, flag(rec2, t1) - before) end
      end
    end
  end
end

if t1 == nil then return {'none'} end

-- 5. write the state back and answer every feature at t1
S[1] = t1
S[2] = p or false
S[10] = S[10] + 1
if stored_spec then
  redis.call('HSET', H, 'b', cmsgpack.pack(S))
else
  redis.call('HSET', H, 'b', cmsgpack.pack(S), 'spec', spec_id, 'cols', cjson.encode(spec.c))
end
local out = {S[10], t1}
for i = 1, #slots do
  local slot = slots[i]
  local code, wi, ci, a = slot[1], slot[2], slot[3], slot[4]
  local value = false
  if code == 'n' then value = n[wi]
  elseif code == 'c' then value = cnt[a]
  elseif code == 'sum' then value = hi[a] + lo[a]
  elseif code == 'mean' then
    if cnt[a] > 0 then value = (hi[a] + lo[a]) / cnt[a] end
  elseif code == 'max' then
    if #dmax[a][2] > 0 then value = dmax[a][2][1] end
  elseif code == 'min' then
    if #dmin[a][2] > 0 then value = dmin[a][2][1] end
  elseif code == 'dist' then
    value = redis.call('ZCOUNT', K[6 + ci], '(' .. ms(t1 - W[wi]), '+inf')
  elseif code == 'fraud' then
    if n[wi] > 0 then value = fr[wi] / n[wi] else value = 0 end
  elseif code == 'prev' then
    if p then value = (t1 - p) / 1000 end
  end
  out[2 + i] = value
end
if row and t1 >= 0 then
  -- Feast's rows, in this same atomic call: no other worker can write an older state after it
  local version, stamp, position = string.format('%d', S[10]), encode_ts(t1), 3
  for _, view in ipairs(spec.v) do
    local fields, kinds = view[3], view[4]
    local args = {view[1], version}
    for j = 1, #fields do
      args[#args + 1] = fields[j]
      args[#args + 1] = encode_value(out[position], kinds:sub(j, j))
      position = position + 1
    end
    args[#args + 1] = view[2]
    args[#args + 1] = stamp
    redis.call('HSET', row, unpack(args))
  end
  return {S[10], t1}
end
return out
end
"""

# FOLD: any number of entities in one call (one call per batch chunk on a single Redis; one entity per call on a
# cluster, where a call's keys must share a slot).
# KEYS: the entities' keys, one after the other.
# ARGV[1]: MessagePack [[spec (MessagePack), spec id], ...] of the plans the call uses.
# ARGV[2]: MessagePack [[spec index (1-based), first key index, key count, mode ("" or "seed": ignore legacy keys,
#   keep a label record per event), previous-time hint ("" none), labels as JSON [[tid, ts, fraud 0|1, the event's
#   time if known], ...], [event time, member, [transaction id, value, ...] as in the member, [distinct value, ...]
#   in the order of `EntityPlan.distinct`, ...] (`EntityPlan.event_args`), 1: Feast's row key follows the entity's
#   keys (the script writes the entity's rows; a single Redis) or 0 (the caller writes them; a cluster)], ...].
# Returns MessagePack: per entity [version, t] (it wrote the rows) or [version, t, value...] (false for null), or
# ["legacy"] / ["respec"] (nothing written: fold the stored history first) / ["none"] (labels only, no event yet).
FOLD = (
    _ENTITY
    + r"""
local specs = cmsgpack.unpack(ARGV[1])
local work = cmsgpack.unpack(ARGV[2])
local decoded = {}
local answers = {}
for i = 1, #work do
  local w = work[i]
  local si = w[1]
  local sp = decoded[si]
  if not sp then sp = cmsgpack.unpack(specs[si][1]); decoded[si] = sp end
  local K = {}
  for j = 1, w[3] do K[j] = KEYS[w[2] + j - 1] end
  local row = nil
  if w[8] == 1 then row = KEYS[w[2] + w[3]] end
  answers[i] = fold_entity(sp, K, specs[si][2], w[4], w[5], w[6], w[7], row)
end
return cmsgpack.pack(answers)
"""
)
