"""The CLI's commands, one module per group; `fraudserve.cli` assembles them."""
