"""Reading HTTP/1.1 answers off the wire in tests: h11's client side, so the server's
framing is checked by a real parser, not by splitting on blank lines."""

from __future__ import annotations

import h11


def responses(data: bytes, count: int) -> list[tuple[int, bytes]]:
    """The first `count` responses in `data`, read by h11's client side."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    found: list[tuple[int, bytes]] = []
    status, body = 0, b""
    while len(found) < count:
        if client.our_state is h11.IDLE:
            client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
        event = client.next_event()
        if isinstance(event, h11.Response):
            status, body = event.status_code, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            found.append((status, body))
            if len(found) < count:
                client.start_next_cycle()
        else:
            break
    return found
