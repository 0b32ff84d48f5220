"""labcheck: pytest health checks and incident triage for the LLM Research Lab platform."""
