"""The luna-train command line: one thin module per command group."""
