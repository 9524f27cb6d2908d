"""Reading HTTP/1.1 answers off the wire in tests: h11's client side, so the server's
framing is checked by a real parser, not by splitting on blank lines."""

from __future__ import annotations

import h11


def responses(data: bytes, count: int | None = None) -> list[tuple[h11.Response, bytes]]:
    """The first `count` responses in `data` (all of them if None), read by h11's client."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    found: list[tuple[h11.Response, bytes]] = []
    head, body = None, b""
    while count is None or len(found) < count:
        if client.our_state is h11.IDLE:
            client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
        event = client.next_event()
        if isinstance(event, h11.Response):
            head, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            found.append((head, body))
            if client.our_state is not h11.DONE or client.their_state is not h11.DONE:
                break  # the connection ends here
            client.start_next_cycle()
        else:
            break
    return found
