"""Per-sender order across nodes under a flapping link (real etcd, tcp through a
``FaultProxy`` that resets the connection mid-stream): a node streams numbered tells to
an agent on another; the agent sees strictly increasing numbers (no duplicate, no
reordering), and what was lost with a connection is counted by the receiver's
``delivery_stats().gaps``: exactly the tells sent without an error that never arrived."""

from __future__ import annotations

import itertools

import pytest

from kerna import Kernel
from kerna.testing import EtcdMember, FaultProxy, free_ports

from .cluster import SECRET, TCP, cluster_name, hosting
from .numbered_tells import OPTIONS, SEEN, Recorder, tell_through_resets

pytestmark = pytest.mark.anyio


async def test_tells_across_a_flapping_link_between_nodes_keep_order_and_each_loss_is_counted(
    etcd_server: EtcdMember,
) -> None:
    (port,) = free_ports(1)
    name = cluster_name()
    async with FaultProxy(("127.0.0.1", port)) as proxy:
        b = Kernel(state=etcd_server.url, transport=f"tcp://127.0.0.1:{port}", cluster=name,
                   node_id="b", secret=SECRET, lease_ttl=2.0, stop_grace=0.2,
                   transport_options={**OPTIONS, "advertise": f"tcp://{proxy.endpoint}"},
                   )  # fmt: skip
        a = Kernel(state=etcd_server.url, transport=TCP, cluster=name, node_id="a",
                   secret=SECRET, lease_ttl=2.0, stop_grace=0.2,
                   transport_options=OPTIONS)  # fmt: skip
        async with b, a:
            b.register(Recorder)
            await a.wait_members(hosting("Recorder", b), 5)
            ref = a.ref("Recorder", "t")
            # refused: by error type (MailboxFull: parked too many while b was lost)
            sent, failed, refused = await tell_through_resets(ref, proxy, (Exception,))
            stats = b.delivery_stats()
    assert all(x < y for x, y in itertools.pairwise(SEEN)), "a duplicate or reordering"
    missing = set(range(1, sent + 1)) - failed - set(SEEN)
    assert missing, "no tell was lost: the resets did not cut the stream mid-flight"
    assert set(refused) <= {"MailboxFull"}, refused  # while b was lost, beyond MAX_PARKED
    assert stats.out_of_order == 0
    assert stats.gaps == len(missing), (stats, sorted(missing)[:20])  # each loss, once
