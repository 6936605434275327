"""kerna's state backends pass the conformance suite it ships (``kerna.testing``).

``backend`` is conftest's fixture: memory, sqlite and etcd (the session's server; a
backend that cannot run here skips with the reason, or fails under
KERNA_REQUIRE_SERVERS=1).
"""

from __future__ import annotations

from kerna.testing import StateBackendSuite


class TestStateBackends(StateBackendSuite):
    pass
