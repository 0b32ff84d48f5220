"""Documentation: does the documentation site answer?"""

from __future__ import annotations

import pytest


@pytest.mark.sev4
@pytest.mark.docs
def check_docs_site_answers(docs_site, expect):
    # Nobody's work stops when the docs are down: minimal impact (SEV-4).
    attempt = docs_site.attempt()
    ok = attempt.result is not None and attempt.result.status == 200
    location = attempt.result.headers.get("location") if attempt.result else None
    expect(ok, target=f"GET {attempt.url}", observed=attempt.describe(), threshold="HTTP 200",
           detail=f"redirects to {location}: set docs_url to the final address" if location else "",
           evidence=attempt.result.exchange() if attempt.result else None)
