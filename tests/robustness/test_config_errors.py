"""Bad configuration: a one-line usage error (exit 4) naming the key and its source, before any probe runs; reports still written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def kubeconfig(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    return str(path)


GOOD_KUBECONFIG = ("apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters: [{name: c, cluster: {server: "
                   "'https://127.0.0.1:1'}}]\ncontexts: [{name: a, context: {cluster: c}}]\nusers: []\n")

CASES = {
    "malformed-url": ({"LABCHECK_API_URL": "htp:/api"}, [], "environment variable LABCHECK_API_URL: not an http(s) URL"),
    "unknown-profile-key": ({}, ["--profile", "{tmp}/p.toml"], "profile p.toml, key colour: unknown key"),
    "missing-profile": ({}, ["--profile", "{tmp}/nope.toml"], "nope.toml: file not found"),
    "non-numeric-threshold": ({"LABCHECK_P95_LATENCY_S": "fast"}, [],
                              "environment variable LABCHECK_P95_LATENCY_S: not a number: 'fast'"),
    "negative-timeout": ({}, ["--probe-timeout", "-5"], "command line --probe-timeout: must be greater than 0"),
    "dsn-bad-scheme": ({"DATABASE_URL": "mysql://u:pw@db/x"}, [],
                       "environment variable DATABASE_URL: not a PostgreSQL DSN (scheme 'mysql'"),
    "empty-bucket": ({}, ["--set", "s3_bucket="], "command line --set s3_bucket: empty bucket name"),
    "kubeconfig-missing": ({"KUBECONFIG": "{tmp}/none"}, [], "environment variable KUBECONFIG: file not found"),
    "kubeconfig-malformed": ({"KUBECONFIG": "{tmp}/kubeconfig"}, [], "is not valid YAML"),
    "kubeconfig-unknown-context": ({"KUBECONFIG": "{tmp}/kubeconfig"}, ["--kube-context", "prod"],
                                   "command line --kube-context: context 'prod' not in kubeconfig"),
    "unknown-set-key": ({}, ["--set", "colour=blue"], "command line --set colour: unknown key"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_configuration_is_one_line_exit_4(tmp_path: Path, case: str) -> None:
    env_extra, args, expected = CASES[case]
    (tmp_path / "p.toml").write_text("colour = 'blue'\n")
    kubeconfig(tmp_path, "{{{ not: yaml" if case == "kubeconfig-malformed" else GOOD_KUBECONFIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABCHECK_") and k != "KUBECONFIG"}
    env.update({k: v.replace("{tmp}", str(tmp_path)) for k, v in env_extra.items()})
    reports = tmp_path / "reports"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--no-sandbox", f"--reports-dir={reports}",
           *[a.replace("{tmp}", str(tmp_path)) for a in args], "checks"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and "INTERNALERROR" not in out
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    data = json.loads((reports / "triage.json").read_text())
    assert expected in data["error"]
    results = list((reports / "allure-results").glob("*-result.json"))
    assert results and json.loads(results[0].read_text())["status"] == "broken"
