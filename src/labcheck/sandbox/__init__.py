"""The local platform used by the demo and the tests."""
