"""Canary for the uvicorn internals ``service.http.connections`` relies on: it fails the build as soon
as a uvicorn or httptools release changes one of them, before a limit silently stops holding.

The behaviour itself (read deadline, connection cap, 431/414) is tested against real servers in
this folder; this file only pins the shape of the code those limits hook into."""

from __future__ import annotations

import inspect

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


def source(function) -> str:
    return inspect.getsource(function)


def test_parser_errors_are_answered_through_send_400_response():
    """A callback of ours raises to stop the parser; uvicorn must answer through send_400_response."""
    text = source(HttpToolsProtocol.data_received)
    assert "self.parser.feed_data(data)" in text
    assert "except httptools.HttpParserError" in text and "self.send_400_response(" in text
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)
    assert list(inspect.signature(HttpToolsProtocol.send_400_response).parameters) == ["self", "msg"]


def test_the_url_is_read_from_self_url_when_the_headers_are_complete():
    """Our on_url keeps the pieces in a list and sets self.url once, before uvicorn's on_headers_complete."""
    assert "self.url += url" in source(HttpToolsProtocol.on_url)
    assert "httptools.parse_url(self.url)" in source(HttpToolsProtocol.on_headers_complete)
    assert 'self.url = b""' in source(HttpToolsProtocol.on_message_begin)


def test_requests_start_through_start_asgi_task():
    text = source(HttpToolsProtocol.on_headers_complete)
    assert "self._start_asgi_task(self.cycle, app)" in text
    assert list(inspect.signature(HttpToolsProtocol._start_asgi_task).parameters) == ["self", "cycle", "app"]


def test_headers_reach_on_header_and_the_cycle_has_its_flags():
    assert "self.headers.append((name, value))" in source(HttpToolsProtocol.on_header)
    cycle = source(RequestResponseCycle.__init__)
    for flag in ("self.disconnected", "self.response_started", "self.response_complete", "self.message_event"):
        assert flag in cycle, flag
    assert "self.connections.add(self)" in source(HttpToolsProtocol.connection_made)


def test_flow_control_and_connection_lost_release_a_blocked_send():
    """The send deadline: asyncio's pause/resume_writing reach uvicorn's flow control, and an aborted
    transport's connection_lost marks the cycle disconnected and releases a send waiting to drain."""
    assert "self.flow.pause_writing()" in source(HttpToolsProtocol.pause_writing)
    assert "self.flow.resume_writing()" in source(HttpToolsProtocol.resume_writing)
    lost = source(HttpToolsProtocol.connection_lost)
    assert "self.cycle.disconnected = True" in lost and "self.flow.resume_writing()" in lost


def test_a_body_over_the_high_water_mark_pauses_reading_until_the_next_receive():
    """Why on_message_complete resumes reading: uvicorn resumes it only in receive()."""
    assert "self.flow.pause_reading()" in source(HttpToolsProtocol.on_body)
    assert "self.flow.resume_reading()" in source(RequestResponseCycle.receive)
