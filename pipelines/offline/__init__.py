"""The offline (backfill) pipeline: raw events to every feature, point in time, into Feast's offline store."""
