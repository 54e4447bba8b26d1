"""Incremental window state: each entity's aggregates kept in Redis and updated by the events, not recomputed.

Per entity (one Redis Cluster hash tag, `{card:c1}`), one server-side script call per batch folds the new events and
labels into running state and returns every feature of the entity's window views at its latest event time t, the
values `pipelines.features.semantics.evaluate` gives over the whole history:

- `...:st` (hash): t, the previous distinct event time (seconds_since_prev), and per window the event count, the
  fraud count and, per column, the non-null count, the sum as a double-double (hi, lo: adding and evicting never
  loses the small terms) and the min/max as monotonic deques (`ts:value,...`, usually a handful of entries).
- `...:win` (sorted set by event time): one compact member per event still inside the longest window,
  `[transaction id, value, ...]` (the columns the sums, counts and deques read): what is evicted when t moves on.
  An entity whose features need no eviction (only `seconds_since_prev` and `count_distinct`) keeps none.
- `...:seen:<column>` (sorted set): each distinct value's last event time; a window's distinct count is a ZCOUNT.
- `...:lab` (hash): transaction id -> `event time;,label time:fraud,...`, and `...:plab` (sorted set): labels
  whose time is after t (not yet in force), applied when t passes them.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipelines.features.catalog import NO_COLUMN, Agg, EntitySpec, WindowFeature, WindowView

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
    spec: str  # the script's JSON description
    spec_id: str

    @property
    def keeps_events(self) -> bool:
        return bool(json.loads(self.spec)["r"] == 1)

    def keys(self, key: str) -> list[str]:
        base = f"fraudserve:{{{self.entity.name}:{key}}}"
        legacy = [f"{base}:events", f"{base}:labels"]  # the recomputing updater's history and label set
        return [f"{base}:st", f"{base}:win", f"{base}:lab", f"{base}:plab", *legacy] + [
            f"{base}:seen:{column}" for column in self.distinct
        ]

    def event_args(self, transaction_id: str, ts_ms: int, record: dict[str, Any]) -> tuple[int, str, str]:
        """An event as the script reads it: its time, its window member and its distinct-counted values."""
        member = json.dumps([transaction_id, *(record.get(c) for c in self.columns)], separators=(",", ":"))
        distinct = json.dumps([record.get(c) for c in self.distinct], separators=(",", ":")) if self.distinct else ""
        return ts_ms, member, distinct


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
        "a": [[wi, ci, "".join(sorted(accumulators[wi, ci]))] for wi, ci in acc_list],
        "d": len(distinct),
        "f": sorted({windows.index(f.window_ms) + 1 for f in features if f.agg is Agg.FRAUD_RATE}),
        "s": slots,
        "c": list(columns),
    }
    text = json.dumps(spec, separators=(",", ":"), sort_keys=True)
    return EntityPlan(entity, features, windows, columns, distinct, text, hashlib.sha1(text.encode()).hexdigest()[:12])


def decode(plan: EntityPlan, values: Sequence[bytes | None]) -> list[int | float | None]:
    """The script's answers as feature values (counts as ints, the rest as floats, nil as None)."""
    out: list[int | float | None] = []
    for feature, raw in zip(plan.features, values, strict=True):
        if raw is None:
            out.append(None)
        elif feature.dtype == "int64":
            out.append(int(float(raw)))
        else:
            out.append(float(raw))
    return out


# KEYS: 1 state, 2 window events, 3 labels, 4 pending labels, 5 legacy history, 6 legacy labels, 7.. seen sets.
# ARGV: 1 spec, 2 spec id, 3 mode ("" normal, "seed": ignore legacy keys), 4 previous-time hint ("" none),
#       5 labels as JSON [[tid, ts, fraud 0|1], ...], then triples (event time, member, distinct values as a JSON
#       array in the order of `EntityPlan.distinct`) of the new events.
# Returns {version, t, value...} (nil values as nil), or {"legacy"} / {"respec"} / {"none"} (nothing to write).
FOLD = r"""
local spec = cjson.decode(ARGV[1])
local H, R, L, P = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local stored_spec = redis.call('HGET', H, 'spec')
if stored_spec and stored_spec ~= ARGV[2] then return {'respec'} end
if (not stored_spec) and ARGV[3] ~= 'seed' then
  if redis.call('EXISTS', KEYS[5]) == 1 or redis.call('EXISTS', KEYS[6]) == 1 then return {'legacy'} end
end

local function fmt(x) return string.format('%.17g', x) end
local st, dirty = {}, {}
local flat = redis.call('HGETALL', H)
for i = 1, #flat, 2 do st[flat[i]] = flat[i + 1] end
local function num(name) return tonumber(st[name]) or 0 end
local function set(name, x) st[name] = x; dirty[name] = true end

local W = spec.w
local NW = #W
local wmax = W[NW] or 0
local raw = spec.r == 1
local accs = spec.a
local fraudw = {}
for _, wi in ipairs(spec.f) do fraudw[#fraudw + 1] = wi end

local t0 = tonumber(st.t)
local p = tonumber(st.p)
if p == nil and ARGV[4] ~= '' then p = tonumber(ARGV[4]) end

-- new events: triples (ts, member, distinct values) from ARGV[6]
local events = {}
for i = 6, #ARGV, 3 do events[#events + 1] = {tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]} end
local t1 = t0
for _, e in ipairs(events) do if t1 == nil or e[1] > t1 then t1 = e[1] end end
-- the previous distinct event time: the latest one before t1
local function prev_candidate(ts) if t1 and ts < t1 and (p == nil or ts > p) then p = ts end end
if t0 then prev_candidate(t0) end
for _, e in ipairs(events) do prev_candidate(e[1]) end

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

-- deques: "ts:v,ts:v" ascending ts, values strictly decreasing in sgn order
local dq = {}
local function deque(name)
  local d = dq[name]
  if d then return d end
  d = {ts = {}, v = {}}
  local s = st[name]
  if s and s ~= '' then
    for ts, v in s:gmatch('([^:,]+):([^,]+)') do d.ts[#d.ts + 1] = tonumber(ts); d.v[#d.v + 1] = tonumber(v) end
  end
  dq[name] = d
  dirty[name] = true
  return d
end
local function dq_insert(d, ts, v, sgn)
  local n = #d.ts
  local k = n
  while k >= 1 and d.ts[k] > ts do k = k - 1 end
  if k < n and sgn * d.v[k + 1] >= sgn * v then return end
  local j = k
  while j >= 1 and sgn * d.v[j] <= sgn * v do j = j - 1 end
  for _ = j + 1, k do table.remove(d.ts, j + 1); table.remove(d.v, j + 1) end
  table.insert(d.ts, j + 1, ts); table.insert(d.v, j + 1, v)
end
local function dq_evict(d, lo)
  local m = 0
  while m < #d.ts and d.ts[m + 1] <= lo do m = m + 1 end
  if m > 0 then
    local ts, v = {}, {}
    for i = m + 1, #d.ts do ts[#ts + 1] = d.ts[i]; v[#v + 1] = d.v[i] end
    d.ts, d.v = ts, v
  end
end

local function sum_add(a, x)
  local hi, lo = num('s' .. a), num('e' .. a)
  local s = hi + x
  local bb = s - hi
  lo = lo + ((hi - (s - bb)) + (x - bb))
  local s2 = s + lo
  set('s' .. a, s2); set('e' .. a, lo - (s2 - s))
end

-- fold one event into window wi (sign +1) or out of it (-1)
local function fold(wi, vals, sign, fr)
  set('n' .. wi, num('n' .. wi) + sign)
  for a, acc in ipairs(accs) do
    if acc[1] == wi then
      local v = vals[acc[2] + 1]
      if v ~= nil and v ~= cjson.null then
        local kinds = acc[3]
        if kinds:find('c', 1, true) then
          local c = num('c' .. a) + sign
          set('c' .. a, c)
          if kinds:find('s', 1, true) then
            if c == 0 then set('s' .. a, 0); set('e' .. a, 0) else sum_add(a, sign * v) end
          end
        end
        if sign > 0 then
          if kinds:find('x', 1, true) then dq_insert(deque('x' .. a), vals.ts, v, 1) end
          if kinds:find('m', 1, true) then dq_insert(deque('m' .. a), vals.ts, v, -1) end
        end
      end
    end
  end
  if fr ~= nil then set('f' .. wi, num('f' .. wi) + sign * fr) end
end
local is_fraud_window = {}
for _, wi in ipairs(fraudw) do is_fraud_window[wi] = true end

-- 1. t moves from t0 to t1: evict what leaves each window (flags as they stood at t0)
if t0 and t1 > t0 then
  for wi = 1, NW do
    local lo0, lo1 = t0 - W[wi], t1 - W[wi]
    if raw then
      local gone = redis.call('ZRANGEBYSCORE', R, '(' .. fmt(lo0), fmt(lo1), 'WITHSCORES')
      for i = 1, #gone, 2 do
        local vals = cjson.decode(gone[i])
        vals.ts = tonumber(gone[i + 1])
        local fr = nil
        if is_fraud_window[wi] then fr = flag(redis.call('HGET', L, vals[1]), t0) end
        fold(wi, vals, -1, fr)
        if wi == NW and #fraudw > 0 then redis.call('HDEL', L, vals[1]) end
      end
    end
    for a, acc in ipairs(accs) do
      if acc[1] == wi then
        if acc[3]:find('x', 1, true) then dq_evict(deque('x' .. a), lo1) end
        if acc[3]:find('m', 1, true) then dq_evict(deque('m' .. a), lo1) end
      end
    end
  end
  if raw then redis.call('ZREMRANGEBYSCORE', R, '-inf', fmt(t1 - wmax)) end
  for i = 1, spec.d do redis.call('ZREMRANGEBYSCORE', KEYS[6 + i], '-inf', fmt(t1 - wmax)) end
  -- 2. labels due in (t0, t1]: events already in a window may change their verdict
  if #fraudw > 0 then
    local due = redis.call('ZRANGEBYSCORE', P, '(' .. fmt(t0), fmt(t1))
    local seen = {}
    for _, m in ipairs(due) do
      local tid = m:match('^(.*)|[^|]*|[^|]*$')
      if tid and not seen[tid] then
        seen[tid] = true
        local rec = redis.call('HGET', L, tid)
        local ets = event_time(rec)
        if ets then
          local d = flag(rec, t1) - flag(rec, t0)
          if d ~= 0 then
            for _, wi in ipairs(fraudw) do
              if ets > t1 - W[wi] then set('f' .. wi, num('f' .. wi) + d) end
            end
          end
        end
      end
    end
  end
end
if #fraudw > 0 and t1 then redis.call('ZREMRANGEBYSCORE', P, '-inf', fmt(t1)) end

-- 3. new events join the windows they fall in; a member already stored is a redelivery
for _, e in ipairs(events) do
  local ts, member, distinct = e[1], e[2], e[3]
  if ts > t1 - wmax or NW == 0 then
    local fresh = true
    if raw then fresh = redis.call('ZADD', R, 'NX', fmt(ts), member) == 1 end
    if fresh then
      local vals = cjson.decode(member)
      vals.ts = ts
      local dv = nil
      if spec.d > 0 then dv = cjson.decode(distinct) end
      for i = 1, spec.d do
        local v = dv[i]
        if v ~= nil and v ~= cjson.null then
          if type(v) == 'number' then v = fmt(v) end
          redis.call('ZADD', KEYS[6 + i], 'GT', fmt(ts), v)
        end
      end
      local rec = nil
      if #fraudw > 0 then
        rec = redis.call('HGET', L, vals[1])
        if rec then rec = fmt(ts) .. rec:sub(rec:find(';', 1, true)) else rec = fmt(ts) .. ';' end
        redis.call('HSET', L, vals[1], rec)
      end
      if raw then
        for wi = 1, NW do
          if ts > t1 - W[wi] then
            local fr = nil
            if is_fraud_window[wi] then fr = flag(rec, t1) end
            fold(wi, vals, 1, fr)
          end
        end
      end
    end
  end
end

-- 4. new labels: in force now (ts <= t1) or pending until t passes them
local labels = cjson.decode(ARGV[5])
for _, lab in ipairs(labels) do
  local tid, ts, f = lab[1], lab[2], lab[3]
  local key = ',' .. string.format('%d', ts) .. ':' .. string.format('%d', f)
  local rec = redis.call('HGET', L, tid) or ';'
  local labs = rec:sub(rec:find(';', 1, true) + 1)
  if not (labs .. ','):find(key .. ',', 1, true) then
    local before = flag(rec, t1)
    local rec2 = rec .. key
    redis.call('HSET', L, tid, rec2)
    if t1 == nil or ts > t1 then
      redis.call('ZADD', P, fmt(ts), tid .. '|' .. string.format('%d', ts) .. '|' .. string.format('%d', f))
    else
      local ets = event_time(rec2)
      local d = flag(rec2, t1) - before
      if ets and d ~= 0 then
        for _, wi in ipairs(fraudw) do
          if ets > t1 - W[wi] then set('f' .. wi, num('f' .. wi) + d) end
        end
      end
    end
  end
end

if t1 == nil then return {'none'} end

-- 5. write the state back and answer every feature at t1
set('t', t1)
if p then set('p', p) end
if not stored_spec then set('spec', ARGV[2]); set('cols', cjson.encode(spec.c)) end
local out = {}
for name, d in pairs(dq) do
  local parts = {}
  for i = 1, #d.ts do parts[#parts + 1] = fmt(d.ts[i]) .. ':' .. fmt(d.v[i]) end
  st[name] = table.concat(parts, ',')
end
local args = {}
for name in pairs(dirty) do
  local v = st[name]
  if type(v) == 'number' then v = fmt(v) end
  args[#args + 1] = name; args[#args + 1] = v
end
if #args > 0 then redis.call('HSET', H, unpack(args)) end
local version = redis.call('HINCRBY', H, 'v', 1)
out[1] = version
out[2] = fmt(t1)
for i, slot in ipairs(spec.s) do
  local code, wi, ci, a = slot[1], slot[2], slot[3], slot[4]
  local value = false
  if code == 'n' then value = fmt(num('n' .. wi))
  elseif code == 'c' then value = fmt(num('c' .. a))
  elseif code == 'sum' then value = fmt(num('s' .. a) + num('e' .. a))
  elseif code == 'mean' then
    local c = num('c' .. a)
    if c > 0 then value = fmt((num('s' .. a) + num('e' .. a)) / c) end
  elseif code == 'max' or code == 'min' then
    local d = deque((code == 'max' and 'x' or 'm') .. a)
    if #d.v > 0 then value = fmt(d.v[1]) end
  elseif code == 'dist' then
    value = fmt(redis.call('ZCOUNT', KEYS[6 + ci], '(' .. fmt(t1 - W[wi]), '+inf'))
  elseif code == 'fraud' then
    local n = num('n' .. wi)
    if n > 0 then value = fmt(num('f' .. wi) / n) else value = '0' end
  elseif code == 'prev' then
    if p then value = fmt((t1 - p) / 1000) end
  end
  out[2 + i] = value
end
return out
"""
