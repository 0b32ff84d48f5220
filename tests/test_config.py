"""Configuration: precedence CLI > environment > profile > sandbox state > defaults, and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labcheck import config
from labcheck.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_playbooks_values() -> None:
    s = config.load(environ={}, use_sandbox=False)
    assert s.timeout == 5.0 and s.connect_s == 5.0 and s.read_s == 5.0
    assert s.error_ratio_sev2 == 0.10 and s.endpoint_error_ratio_sev3 == 0.05
    assert s.p95_latency_s == 2.0 and s.db_idle_max_s == 600.0 and s.db_long_query_s == 30.0
    assert s.namespace == "llm-research" and s.label_selector == "app=llm-research-api"
    assert s.window == "5m"


def test_precedence_cli_over_env_over_profile(tmp_path: Path) -> None:
    profile = tmp_path / "staging.toml"
    profile.write_text('api_url = "http://profile:1"\nprometheus_url = "http://profile:2"\n'
                       'namespace = "from-profile"\n[thresholds]\np95_latency_s = 3\n')
    env = {"LABCHECK_PROMETHEUS_URL": "http://env:2", "LABCHECK_NAMESPACE": "from-env"}
    cli = {"namespace": ("from-cli", "command line --namespace")}
    s = config.load(cli=cli, profile=str(profile), environ=env, use_sandbox=False)
    assert s.api_url == "http://profile:1"
    assert s.prometheus_url == "http://env:2"
    assert s.namespace == "from-cli"
    assert s.p95_latency_s == 3.0
    assert s.sources["p95_latency_s"] == "profile staging.toml, key thresholds.p95_latency_s"
    assert s.sources["prometheus_url"] == "environment variable LABCHECK_PROMETHEUS_URL"


def test_playbook_variable_names_are_honoured() -> None:
    env = {"DATABASE_URL": "postgresql://app:pw@db:5432/x", "S3_BUCKET": "llm-datasets"}
    s = config.load(environ=env, use_sandbox=False)
    assert s.database_url == "postgresql://app:pw@db:5432/x" and s.s3_bucket == "llm-datasets"
    assert "postgresql://app:pw@db:5432/x" in s.secrets
    s = config.load(environ={**env, "LABCHECK_S3_BUCKET": "other-bucket"}, use_sandbox=False)
    assert s.s3_bucket == "other-bucket"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LABCHECK_API_URL": "not a url"}, "environment variable LABCHECK_API_URL: not an http(s) URL: 'not a url'"),
        ({"LABCHECK_TIMEOUT": "-1"}, "environment variable LABCHECK_TIMEOUT: must be greater than 0, got '-1'"),
        ({"LABCHECK_ERROR_RATIO_SEV2": "ten"}, "environment variable LABCHECK_ERROR_RATIO_SEV2: not a number: 'ten'"),
        ({"DATABASE_URL": "mysql://u:pw@h/db"}, "environment variable DATABASE_URL: not a PostgreSQL DSN (scheme 'mysql'"),
        ({"S3_BUCKET": ""}, None),
        ({"LABCHECK_S3_BUCKET": ""}, "environment variable LABCHECK_S3_BUCKET: empty bucket name"),
        ({"KUBECONFIG": "/nonexistent/kubeconfig"}, "environment variable KUBECONFIG: file not found: /nonexistent/kubeconfig"),
    ],
)
def test_bad_values_name_the_key_and_source(env: dict[str, str], message: str | None) -> None:
    if message is None:
        config.load(environ=env, use_sandbox=False)  # an empty playbook alias is simply unset
        return
    with pytest.raises(ConfigError) as info:
        config.load(environ=env, use_sandbox=False)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^profile /nope\.toml: file not found$"):
        config.load(profile="/nope.toml", environ={}, use_sandbox=False)
    bad = tmp_path / "staging.toml"
    bad.write_text("[prometheus]\nurl = 'ftp://x'\n")
    with pytest.raises(ConfigError, match=r"^profile staging.toml, key prometheus.url: not an http\(s\) URL"):
        config.load(profile=str(bad), environ={}, use_sandbox=False)
    bad.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match=r"^profile staging.toml, key colour: unknown key"):
        config.load(profile=str(bad), environ={}, use_sandbox=False)
    bad.write_text("this is = not toml =\n")
    with pytest.raises(ConfigError, match=r"^profile staging.toml: not valid TOML"):
        config.load(profile=str(bad), environ={}, use_sandbox=False)


def test_kubeconfig_is_validated(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text("apiVersion: v1\ncontexts: [{name: a, context: {cluster: c}}]\ncurrent-context: a\n")
    assert config.load(environ={"KUBECONFIG": str(kc)}, use_sandbox=False).kubeconfig == str(kc)
    with pytest.raises(ConfigError, match=r"context 'b' not in kubeconfig"):
        config.load(environ={"KUBECONFIG": str(kc), "LABCHECK_KUBE_CONTEXT": "b"}, use_sandbox=False)
    kc.write_text("{{{ not yaml")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        config.load(environ={"KUBECONFIG": str(kc)}, use_sandbox=False)


def test_sandbox_is_the_target_only_when_nothing_is_configured(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABCHECK_SANDBOX_DIR", str(tmp_path))
    (tmp_path / "state.json").write_text(json.dumps({"settings": {
        "api_url": "http://127.0.0.1:18080", "prometheus_url": "http://127.0.0.1:18090", "window": "10s",
        "test_token": "sandbox-token-123"}}))
    s = config.load(environ={}, use_sandbox=True)
    assert s.api_url == "http://127.0.0.1:18080" and s.window == "10s"
    assert s.target.startswith("sandbox")
    assert "sandbox-token-123" in s.secrets
    # Any explicitly configured target disables the sandbox entirely: never a mix of two platforms.
    s = config.load(environ={"LABCHECK_API_URL": "https://api.prod.example"}, use_sandbox=True)
    assert s.api_url == "https://api.prod.example" and s.prometheus_url is None
    assert s.target == "configured target"


def test_usage_error_is_one_line_exit_4_and_still_writes_triage(pytester: pytest.Pytester) -> None:
    pytester.mkdir("checks")
    pytester.path.joinpath("checks", "test_x.py").write_text(
        "import pytest\n@pytest.mark.sev1\n@pytest.mark.docs\ndef check_x():\n    pass\n")
    reports = pytester.path / "reports"
    result = pytester.runpytest_subprocess(f"--reports-dir={reports}", f"--scenarios-dir={REPO / 'scenarios'}",
                                           "--set", "timeout=-3", "checks")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert "command line --set timeout: must be greater than 0, got '-3'" in err
    assert "Traceback" not in err + result.stdout.str() and "INTERNALERROR" not in err
    data = json.loads((reports / "triage.json").read_text())
    assert "timeout" in data["error"] and data["severity"] is None


def test_kubeconfig_takes_a_list_as_kubectl_does(tmp_path: Path) -> None:
    first = tmp_path / "first.yaml"
    second = tmp_path / "second.yaml"
    first.write_text("current-context: staging\nclusters: []\nusers: []\n")
    second.write_text("contexts:\n- name: staging\n  context: {cluster: c}\n- name: prod\n  context: {cluster: p}\n")
    missing = tmp_path / "missing.yaml"
    listed = os.pathsep.join([str(first), str(missing), str(second)])
    settings = config.load(cli={}, environ={"KUBECONFIG": listed}, use_sandbox=False)
    assert settings.kubeconfig == os.pathsep.join([str(first), str(second)])  # missing files passed over
    merged = config.read_kubeconfig(str(settings.kubeconfig))
    assert merged["current-context"] == "staging" and [c["name"] for c in merged["contexts"]] == ["staging", "prod"]
    with pytest.raises(ConfigError, match="none of these kubeconfig files exists"):
        config.load(cli={}, environ={"KUBECONFIG": os.pathsep.join([str(missing), str(tmp_path / "nope")])},
                    use_sandbox=False)
