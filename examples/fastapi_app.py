"""A FastAPI app that embeds a kerna Kernel: one agent per shopping cart.

The kernel lives in the app's lifespan: it starts before the first request and stops
(draining its agents) when the server shuts down. Each cart is an agent keyed by user,
so two requests for one cart are handled one at a time, without locks; requests for
different carts run concurrently.

Replies are kerna Messages (msgspec Structs). ``MessageResponse`` is the recipe to
return one as JSON: msgspec encodes it directly (FastAPI's own encoder only knows
pydantic), and request bodies decode straight into a Message with
``msgspec.json.decode(body, type=...)``, whose validation errors become 422 answers.

Run it (``pip install "kerna[examples]"``, from the repository root)::

    uvicorn examples.fastapi_app:app
    curl -X POST localhost:8000/carts/ann/items -d '{"sku": "tea", "quantity": 2}'
    curl localhost:8000/carts/ann
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from kerna import Agent, Kernel, Message, handler

# -- the agent ---------------------------------------------------------------------------


class Line(msgspec.Struct, frozen=True):
    sku: str
    quantity: int


class Cart(msgspec.Struct, frozen=True):
    """A cart agent's state: frozen, saved with ``await self.save(...)``."""

    lines: tuple[Line, ...] = ()


class AddItem(Message, tag="cart.add"):
    sku: Annotated[str, msgspec.Meta(min_length=1)]
    quantity: Annotated[int, msgspec.Meta(gt=0, le=100)] = 1


class GetCart(Message, tag="cart.get"):
    pass


class CartView(Message, tag="cart.view"):
    user: str
    lines: tuple[Line, ...]
    items: int


class CartAgent(Agent, state=Cart):
    @handler
    async def add(self, msg: AddItem) -> CartView:
        counts = {line.sku: line.quantity for line in self.state.lines}
        counts[msg.sku] = counts.get(msg.sku, 0) + msg.quantity
        await self.save(Cart(lines=tuple(Line(sku, n) for sku, n in sorted(counts.items()))))
        return self.view()

    @handler
    async def get(self, msg: GetCart) -> CartView:
        return self.view()

    def view(self) -> CartView:
        lines: tuple[Line, ...] = self.state.lines
        return CartView(user=self.id.key, lines=lines, items=sum(x.quantity for x in lines))


# -- the recipe: kerna Messages in and out of FastAPI ---------------------------------------


class MessageResponse(Response):
    """A JSON response rendered by msgspec: any Message or msgspec Struct (also plain data).

    The body carries the message's tag as ``"type"`` (``{"type": "cart.view", ...}``),
    so a client can tell replies apart.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def kernel_of(request: Request) -> Kernel:
    """The kernel the lifespan started (a FastAPI dependency)."""
    kernel: Kernel = request.state.kernel
    return kernel


KernelDep = Annotated[Kernel, Depends(kernel_of)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Kernel]]:
    # Default state is memory://, private to the kernel; a durable store is one argument
    # away: Kernel(state="sqlite:////var/lib/shop/carts.db") or "etcd://10.0.0.1:2379".
    async with Kernel(ask_timeout=5.0) as kernel:
        kernel.register(CartAgent, name="Cart")
        yield {"kernel": kernel}  # lifespan state: request.state.kernel in every request


app = FastAPI(lifespan=lifespan)


@app.exception_handler(msgspec.DecodeError)
async def bad_body(request: Request, exc: msgspec.DecodeError) -> Response:
    """A body that is not JSON or does not validate: 422, naming the field."""
    return JSONResponse({"detail": str(exc)}, status_code=422)


@app.post("/carts/{user}/items", response_class=MessageResponse)
async def add_item(user: str, request: Request, kernel: KernelDep) -> MessageResponse:
    msg = msgspec.json.decode(await request.body(), type=AddItem)
    return MessageResponse(await kernel.ref("Cart", user).ask(msg))


@app.get("/carts/{user}", response_class=MessageResponse)
async def get_cart(user: str, kernel: KernelDep) -> MessageResponse:
    return MessageResponse(await kernel.ref("Cart", user).ask(GetCart()))


@app.get("/stats", response_class=MessageResponse)
async def stats(kernel: KernelDep) -> MessageResponse:
    """The kernel's counters per agent type (``kernel.stats()``, a msgspec Struct)."""
    return MessageResponse(kernel.stats())
