"""Features: the catalog read from the Feast repo (`catalog`) and the pure semantics of each function (`semantics`)."""
