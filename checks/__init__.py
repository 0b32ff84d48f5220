"""The labcheck suite: one module per platform component."""
