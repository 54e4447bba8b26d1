"""Feature pipelines: event schema, feature definitions, the offline backfill and the data generator."""
