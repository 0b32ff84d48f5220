"""The documentation site: the ``docs_site`` fixture."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from labcheck.errors import NotConfigured
from labcheck.lab import Lab
from labcheck.prefetch import Use, component, fact
from labcheck.probes import http


def _start_docs(docs: DocsSite, uses: Sequence[Use]) -> None:
    if docs.lab.settings.docs_url:
        http.start(docs.lab, docs.url)


@component("docs_site")
class DocsSite:
    """The documentation site."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def url(self) -> str:
        url = self.lab.settings.docs_url
        if not url:
            raise NotConfigured("docs_url is not configured", target="documentation site")
        return str(url)

    @fact(_start_docs)
    def attempt(self) -> http.Attempt:
        """GET the site once per run; no answer is returned as the observation."""
        return http.attempt(self.lab, self.url)


@pytest.fixture(scope="session")
def docs_site(lab: Lab) -> DocsSite:
    """The documentation site."""
    return DocsSite(lab)
