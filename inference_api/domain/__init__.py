"""The service layer: feature plans, the online feature source, loaded models and scoring. No HTTP in here."""
