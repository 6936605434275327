"""An event-sourced bank account, and its audit trail.

The account's state is never written directly: each change is an event appended to the
account's log (``await self.emit(event)``), and the state is the fold of the events
(``apply``). So the log is also the audit trail. Each record carries:

- ``seq``: its position in the account's log (1, 2, ...), and ``time``;
- ``correlation_id``: the conversation it belongs to: one request from outside and
  everything its handlers sent on. A transfer's withdrawal from one account and its
  deposit into the other share it;
- ``causation_id``: the message whose handler emitted the event.

``EventLog`` lists the records and rebuilds the state as of any sequence number.

Run it: ``python examples/event_sourced_account.py``. On memory:// the log lives as long
as the process; ``Kernel(state="sqlite:////abs/path/bank.db")`` (or ``etcd://...``)
keeps it, and a restarted account replays it.
"""

import asyncio
from typing import Annotated, Any

import msgspec

from kerna import Agent, Kernel, Message, RemoteError, handler
from kerna.state import EventLog, EventRecord

Amount = Annotated[int, msgspec.Meta(gt=0)]


class Balance(msgspec.Struct, frozen=True):
    amount: int = 0


# Events are stored: give them explicit, stable tags (the default tag is module.QualName,
# which changes when the code moves).
class Deposited(Message, tag="account.deposited"):
    amount: int
    source: str = ""  # the account it came from; "" for cash


class Withdrawn(Message, tag="account.withdrawn"):
    amount: int
    destination: str = ""  # the account it went to; "" for cash


# Commands (what callers send) and the reply.
class Deposit(Message, tag="account.deposit"):
    amount: Amount
    source: str = ""


class Withdraw(Message, tag="account.withdraw"):
    amount: Amount


class Transfer(Message, tag="account.transfer"):
    amount: Amount
    to: str


class GetBalance(Message, tag="account.get_balance"):
    pass


class BalanceIs(Message, tag="account.balance"):
    account: str
    amount: int


class InsufficientFunds(Exception):
    """Raised by a handler: the asker gets a RemoteError naming it; nothing is emitted."""


class Account(Agent, state=Balance, event_sourced=True, snapshot_every=100):
    @staticmethod
    def apply(state: Balance, event: Deposited | Withdrawn) -> Balance:
        if isinstance(event, Deposited):
            return Balance(state.amount + event.amount)
        return Balance(state.amount - event.amount)

    @handler
    async def deposit(self, msg: Deposit) -> BalanceIs:
        await self.emit(Deposited(amount=msg.amount, source=msg.source))
        return self.balance()

    @handler
    async def withdraw(self, msg: Withdraw) -> BalanceIs:
        self.check_funds(msg.amount)
        await self.emit(Withdrawn(amount=msg.amount))
        return self.balance()

    @handler
    async def transfer(self, msg: Transfer) -> BalanceIs:
        self.check_funds(msg.amount)
        await self.emit(Withdrawn(amount=msg.amount, destination=msg.to))
        # Sent from inside a handler, this ask carries the transfer's correlation id, and
        # its own id becomes the causation id of the deposit event it leads to. (Two
        # accounts are two agents: a transfer is not atomic. A deposit that fails after
        # the withdrawal needs a compensating event, which this example leaves out.)
        await self.ref(Account, msg.to).ask(Deposit(amount=msg.amount, source=self.id.key))
        return self.balance()

    @handler
    async def get(self, msg: GetBalance) -> BalanceIs:
        return self.balance()

    def check_funds(self, amount: int) -> None:
        if amount > self.state.amount:
            raise InsufficientFunds(f"{self.id.key} has {self.state.amount}, needs {amount}")

    def balance(self) -> BalanceIs:
        return BalanceIs(account=self.id.key, amount=self.state.amount)


def account_log(kernel: Kernel, key: str) -> EventLog[Any]:
    """The event log (audit trail) of account ``key`` in ``kernel``'s state backend."""
    return kernel.event_log(Account, key)


async def audit_trail(kernel: Kernel, key: str) -> list[EventRecord[Any]]:
    return [record async for record in account_log(kernel, key).events()]


async def scenario(kernel: Kernel) -> None:
    """Alice deposits 100 and sends 30 to Bob; Bob tries to withdraw more than he has."""
    alice, bob = kernel.ref(Account, "alice"), kernel.ref(Account, "bob")
    await alice.ask(Deposit(amount=100))
    await alice.ask(Transfer(amount=30, to="bob"))
    try:
        await bob.ask(Withdraw(amount=500))
    except RemoteError as exc:  # the handler's exception, by name, with its message
        print(f"refused: {exc.type_name}: {exc.message}")


async def main() -> None:
    async with Kernel() as kernel:
        kernel.register(Account)
        await scenario(kernel)
        for key in ("alice", "bob"):
            balance = await kernel.ref(Account, key).ask(GetBalance())
            print(f"{key}: balance {balance.amount}")
            for r in await audit_trail(kernel, key):
                print(
                    f"  #{r.seq} {r.event!r} correlation={r.correlation_id}"
                    f" causation={r.causation_id}"
                )
        state, seq = await account_log(kernel, "alice").state_at(1)
        print(f"alice as of #{seq}: balance {state.amount}")


if __name__ == "__main__":
    asyncio.run(main())
