"""Authentication: is the JWT secret there, are valid tokens accepted, missing ones refused, clocks in sync?"""

from __future__ import annotations

import pytest

from labcheck.errors import NoData, Unknown

REJECTED = (401, 403)


@pytest.mark.sev1
@pytest.mark.auth
@pytest.mark.scenario("auth-failure")
def check_jwt_secret_present(kube, settings, secret_key, expect):
    # Without the signing secret the API refuses all credentials: auth is down for everyone (SEV-1).
    # Only presence and non-emptiness are read; the value never reaches any output.
    found = kube.secret_keys(settings.secret_name)
    presence = found or {}
    state = ("secret not found" if found is None else "missing" if secret_key not in presence
             else "non-empty" if presence[secret_key] else "empty")
    expect(state == "non-empty",
           target=f"secret {settings.namespace}/{settings.secret_name} key {secret_key}",
           observed=state, threshold="present and non-empty",
           detail="keys present: " + (", ".join(sorted(presence)) or "none"),
           evidence={"name": settings.secret_name, "keys_non_empty": presence})


@pytest.mark.sev1
@pytest.mark.auth
@pytest.mark.scenario("auth-failure")
def check_test_token_accepted(auth_signals, settings, request, expect):
    # "Auth rejects valid tokens" is the playbook's SEV-1 authentication failure.
    # (Check sources avoid the words the redactor masks: a traceback shows them.)
    attempt = auth_signals.with_test_token()
    if attempt.result is None:
        assert attempt.error is not None
        raise attempt.error  # the API itself does not answer: the API gateway checks own that
    status = attempt.result.status
    if status >= 500:
        raise NoData(f"HTTP {status}: the API failed before it judged the token", target=attempt.url)
    rejected = status in REJECTED
    detail = ""
    if rejected:
        detail = _challenge(attempt.result.headers.get("www-authenticate", "")) + _secret_rotation(
            request, settings, expect)
    else:
        expect.fact("secret_rotation", False)
    # The target does not end in the word before a colon that the redactor masks.
    expect(not rejected, target=f"GET {attempt.url} with the configured test_token as bearer",
           observed=attempt.describe(), threshold="accepted (not HTTP 401/403)", detail=detail,
           evidence=attempt.result.exchange())


def _challenge(header: str) -> str:
    """What the API's WWW-Authenticate challenge says about the token, in redaction-safe words."""
    lowered = header.lower()
    if "expired" in lowered:
        return "the API says the token has expired (clock skew, or an old token)\n"
    if "invalid_token" in lowered or "invalid" in lowered:
        return "the API says the token is invalid (bad signature or claims)\n"
    return ""


def _secret_rotation(request, settings, expect) -> str:
    """Refused: does the secret still exist? Then the secret was rotated under the credential."""
    try:
        # Asked lazily: the verdict on the credential must not depend on Kubernetes.
        presence = request.getfixturevalue("kube").secret_key_presence(settings.secret_name)
    except Exception as exc:  # noqa: BLE001 - only the rotation hint is lost
        reason = exc.reason if isinstance(exc, Unknown) else f"{type(exc).__name__}: {exc}"
        return f"could not read the secret to tell rotation from loss: {reason}"
    keys = list(settings.secret_keys)
    if keys and all(presence.get(k) for k in keys):
        expect.fact("secret_rotation", True)
        return (f"secret {settings.secret_name} ({', '.join(keys)}) exists and is not empty: the token "
                "was most likely signed with a previous secret (secret rotation)")
    return f"secret {settings.secret_name} lacks {', '.join(k for k in keys if not presence.get(k))}"


@pytest.mark.sev1
@pytest.mark.auth
@pytest.mark.scenario("auth-failure")
def check_request_without_token_rejected(api, expect):
    # An endpoint that answers without credentials exposes every experiment to anyone who can
    # reach it: a data breach in the making, which the playbook classes as SEV-1 and escalates to
    # Security + Legal. Any 401 or 403 counts as refused; 5xx or no answer cannot tell.
    attempt = api.attempt("/experiments")
    if attempt.result is None:
        assert attempt.error is not None
        raise attempt.error
    status = attempt.result.status
    if status >= 500:
        raise NoData(f"HTTP {status}: cannot tell whether the endpoint enforces authentication",
                     target=attempt.url)
    detail = ""
    if 200 <= status < 400:
        detail = "the endpoint answers without credentials: it is open to anyone who can reach it"
    elif status not in REJECTED:
        detail = "not an authentication refusal: check the route and the auth middleware"
    expect(status in REJECTED, target=f"GET {attempt.url} with no Authorization header",
           observed=attempt.describe(), threshold="refused with HTTP 401 (or 403)", detail=detail,
           condition="auth_bypass" if 200 <= status < 400 else None,
           evidence=attempt.result.exchange())


@pytest.mark.sev2
@pytest.mark.auth
@pytest.mark.scenario("auth-failure")
def check_auth_error_ratio(auth_signals, settings, expect):
    # A 401/403 spike that leaves valid tokens working (those are checked at SEV-1 above) is
    # significant, not total, impairment: part of the users are locked out.
    offset = settings.auth_baseline_offset
    auth_signals.start(None, offset)
    ratio = auth_signals.error_ratio()
    try:
        before = auth_signals.error_ratio(offset)
        baseline = f"{before.value:.1%} {offset} earlier"
    except NoData:
        baseline = f"no data {offset} earlier to compare with"
    limit = settings.auth_error_ratio
    m = ratio.signals
    target = f"API 401/403 ratio over {ratio.window} ({m.requests} by {m.status_label})"
    if ratio.bound and ratio.value > limit:
        # Status grouped into classes: 4xx over the limit may be 404s or 422s as well as refusals.
        raise NoData(f"{m.status_label} is grouped into classes (4xx), so 401/403 cannot be told apart: "
                     f"4xx is {ratio.value:.1%} of requests, above the {limit:.0%} limit", target=target)
    what = "4xx, an upper bound of 401/403 (status grouped into classes)" if ratio.bound else "401/403"
    expect(ratio.value <= limit, target=target,
           observed=f"{ratio.value:.1%} ({baseline})" + (" as 4xx: an upper bound" if ratio.bound else ""),
           threshold=f"<= {limit:.0%}",
           detail=f"{ratio.errors:.2f} of {ratio.total:.2f} requests/s were {what}")


@pytest.mark.sev2
@pytest.mark.auth
@pytest.mark.scenario("auth-failure")
def check_clock_skew(auth_signals, settings, expect):
    # Skew past the threshold breaks JWT checks of issue and expiry times (iat/nbf/exp):
    # intermittent refusals for part of the users (SEV-2). When every token fails, the SEV-1 token
    # check above fails too; this check names the cause (the playbook's NTP mitigation).
    skew = auth_signals.clock_skew()
    limit = settings.clock_skew_s
    skewed = abs(skew.skew_s) > limit
    expect.fact("clock_skew", skewed)
    direction = "ahead of" if skew.skew_s > 0 else "behind"
    expect(not skewed, target=f"Date header of GET {skew.url} against the local clock",
           observed=f"{abs(skew.skew_s):.0f} s {direction} the local clock (Date: {skew.date})",
           threshold=f"<= {limit:g} s", detail="check NTP sync on the pods and on this host",
           evidence=skew.exchange)
