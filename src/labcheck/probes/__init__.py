"""Probes: one module per backend (http, prometheus, postgres, s3, kube)."""
