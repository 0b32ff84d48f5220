"""The labcheck exception tree.

    LabcheckError
     +-- ConfigError              bad configuration: a usage error, exit code 4
     +-- CatalogueError           a bad scenario file: a usage error, exit code 4
     +-- Unknown                  we could not check: the result is UNKNOWN
          +-- ProbeError          a probe could not talk to its target
          |    +-- ProbeTimeout       connect or read timed out
          |    +-- ProbeRefused       connection refused
          |    +-- ProbeUnreachable   DNS or routing failure
          |    +-- ProbeTLSError      the certificate is not trusted
          |    +-- ProbeAuthError     the target rejected our credentials (401/403)
          |    +-- ProbeBadResponse   the target answered something we cannot read
          +-- NoData              the target answered, but with no data to judge
          +-- NotConfigured       the target is not configured
          +-- DeadlineReached     the run-wide triage deadline passed
          +-- Interrupted         the run was interrupted

An assertion failure means the platform is unhealthy (FAILED); any other
exception means we could not check (UNKNOWN). ``Unknown`` and its children
carry a reason that already names the target.
"""

from __future__ import annotations


class LabcheckError(Exception):
    """Base class of every labcheck error."""


class UsageError(Exception):
    """A command-line usage problem found after parsing (the CLI exits 2 with one line)."""


class ConfigError(LabcheckError):
    """A configuration value is invalid; the message names the key and its source."""


class CatalogueError(LabcheckError):
    """A scenario catalogue file is invalid; the message names the file and the key."""


class Unknown(LabcheckError):
    """We could not check: the result is neither healthy nor unhealthy."""

    def __init__(self, reason: str, *, target: str | None = None) -> None:
        self.target = target
        self.reason = reason
        super().__init__(f"{target}: {reason}" if target and target not in reason else reason)


class ProbeError(Unknown):
    """A probe could not talk to its target."""


class ProbeTimeout(ProbeError):
    """Timed out while talking to the target."""


class ProbeRefused(ProbeError):
    """The target refused the connection."""


class ProbeUnreachable(ProbeError):
    """The target's name did not resolve or its address is unreachable."""


class ProbeTLSError(ProbeError):
    """The target's TLS certificate is not trusted."""


class ProbeAuthError(ProbeError):
    """The target rejected our credentials."""


class ProbeBadResponse(ProbeError):
    """The target answered with something we cannot read."""


class NoData(Unknown):
    """The target answered, but there is no data to judge."""


class NotConfigured(Unknown):
    """The target this check needs is not configured."""


class DeadlineReached(Unknown):
    """The run-wide triage deadline passed before this check ran."""


class Interrupted(Unknown):
    """The run was interrupted before this check finished."""
