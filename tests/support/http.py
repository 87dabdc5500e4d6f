"""A small HTTP client for the tests of the broker's HTTP listener: plain
`http.client`, so that every header sent is the one the test wrote."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Http:
    """Requests to 127.0.0.1:`port`, with the token as a bearer unless told otherwise."""

    port: int
    token: str | None = None
    timeout: float = 30.0
    host_header: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        token: str | bool | None = True,
    ) -> Response:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            sent = {"Host": self.host_header or f"127.0.0.1:{self.port}", **self.extra}
            bearer = self.token if token is True else token
            if bearer:
                sent["Authorization"] = f"Bearer {bearer}"
            sent.update(headers or {})
            connection.request(method, path, body=body, headers=sent)
            reply = connection.getresponse()
            return Response(
                reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
            )
        finally:
            connection.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def get_json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status == 200, (response.status, response.body)
        return response.json()

    def post_json(self, path: str, value: Any, **kw: Any) -> Response:
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return self.request("POST", path, body=json.dumps(value), headers=headers, **kw)
