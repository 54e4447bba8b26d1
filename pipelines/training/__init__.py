"""Training from Feast: a point-in-time training set from a feature service, then LightGBM or XGBoost."""
