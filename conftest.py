"""Site-level overrides only: hooks live in labcheck.plugin, fixtures in src/labcheck."""
