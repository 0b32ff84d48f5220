"""The redactor's patterns: secret values masked, the words around a label with no value kept."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from labcheck.evidence import MASK, Redactor, mask_params


@pytest.mark.parametrize(("text", "shown"), [
    ("JWT_SECRET: s3cr3tvalue", "JWT_SECRET: ***"),
    ("db-password: hunter2", "db-password: ***"),
    ("password: hunter2", "password: ***"),
    ("JWT_SECRET=s3cr3tvalue", "JWT_SECRET=***"),
    ('{"jwt_secret": "s3cr3tvalue"}', '{"jwt_secret": "***"}'),
    ("postgresql://labcheck:pw123456@db:5432/x", "postgresql://labcheck:***@db:5432/x"),
    ("Authorization: Bearer abcdefgh12345", "Authorization: Bearer ***"),
    # a value that merely starts like a state word is still a value
    ("JWT_SECRET: missingpass", "JWT_SECRET: ***"),
    ("JWT_SECRET: none.abc", "JWT_SECRET: ***"),
])
def test_secret_values_are_masked(text: str, shown: str) -> None:
    assert Redactor()(text) == shown


@pytest.mark.parametrize("text", [
    # labcheck's own message: the label is the end of the target, "observed" is prose (issue 13)
    "secret llm-research/llm-research-secrets key JWT_SECRET: observed missing; threshold present and non-empty",
    "key JWT_SECRET: missing",
    "keys JWT_SECRET: empty, ADMIN_KEY: present",
    "JWT_SECRET: not found",
    # a label that ends its line does not take the next line's first word
    "JWT_SECRET:\nmissing from the secret",
    "API_TOKEN: true",
])
def test_a_label_without_a_value_keeps_the_next_word(text: str) -> None:
    assert Redactor()(text) == text


def test_secret_parameters_are_masked_and_others_kept() -> None:
    shown = mask_params({"new_secret": "X1", "share": 0.3, "admin_key": "k", "db-password": "p", "seconds": 2})
    assert shown == {"new_secret": MASK, "share": 0.3, "admin_key": MASK, "db-password": MASK, "seconds": 2}


def test_fault_command_does_not_echo_a_secret_parameter(healed: Any) -> None:
    planted = "planted-rotation-value-4711"
    out = subprocess.run(
        [sys.executable, "-m", "labcheck.cli", "sandbox", "fault", "auth-secret-rotated",
         "--param", f"new_secret={planted}", "--param", "started_ago=5"],
        capture_output=True, text=True, timeout=60, check=False)  # inherits LABCHECK_SANDBOX_DIR
    assert out.returncode == 0, out.stderr
    assert "fault auth-secret-rotated" in out.stdout
    assert planted not in out.stdout + out.stderr
    assert '"new_secret": "***"' in out.stdout and '"started_ago": 5' in out.stdout


def test_the_same_evidence_for_many_checks_is_redacted_and_written_once(tmp_path):
    # Every failing API check records the API's pods: serialised, redacted and written once, the
    # other checks' files are links to it; a later, different body never writes through the link.
    from labcheck.evidence import Evidence

    calls = []

    class Counting(Redactor):
        def __call__(self, text):
            calls.append(text)
            return super().__call__(text)

    evidence = Evidence(tmp_path, Counting(["s3cr3t-value"]))
    pods = [{"name": f"api-{i}", "env": "s3cr3t-value"} for i in range(3)]
    first = evidence.record("checks/a.py::check_one", "pods", pods)
    again = evidence.record("checks/a.py::check_two", "pods", pods)
    assert first == again and "s3cr3t-value" not in first and len(calls) == 1
    one, two = tmp_path / "checks_a.py_check_one" / "pods.json", tmp_path / "checks_a.py_check_two" / "pods.json"
    assert one.read_text() == two.read_text() == first
    evidence.record("checks/a.py::check_two", "pods", {"other": True})
    assert one.read_text() == first and '"other"' in two.read_text()
