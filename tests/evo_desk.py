"""An agent over whichever version of ``evo_msgs`` is on PYTHONPATH (tests/evolution/v1,
v2, v3), loaded by the ``kerna node`` processes of the mixed-version cluster test
(tests/test_cluster_versions.py): it answers a ``Quote`` with that version's reply
(v3 changed the reply type of ``Quote`` from ``Price`` to ``int``)."""

import evo_msgs  # type: ignore[import-not-found]

from kerna import Agent, handler

if isinstance(evo_msgs.REPLY, int):

    class Desk(Agent):
        @handler
        async def quote(self, msg: evo_msgs.Quote) -> int:
            return int(evo_msgs.REPLY)

else:

    class Desk(Agent):  # type: ignore[no-redef]
        @handler
        async def quote(self, msg: evo_msgs.Quote) -> evo_msgs.Price:
            return evo_msgs.REPLY
