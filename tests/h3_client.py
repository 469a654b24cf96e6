#!/usr/bin/env python3
"""An independent HTTP/3 client for the e2e tests (tests/e2e/edge_http3.rs), on aioquic.

Opens one QUIC connection to ADDRESS (host:port) with SNI NAME, sends every request given as
a JSON list of {"path": "/x", "headers": {"range": "bytes=0-9"}} objects on it (one stream
each, in order), and prints one JSON object:

    {"alpn": "h3", "certificate_sha256": "<hex of the leaf's DER>",
     "responses": [{"status": 200, "headers": [["name", "value"], ...], "body_b64": "..."}]}

The server's certificate is not verified (the tests compare its fingerprint instead).
Exit status 1 with a message on stderr when the connection or a request fails.

Usage: h3_client.py ADDRESS NAME REQUESTS_JSON [--timeout SECONDS]
"""

import argparse
import asyncio
import base64
import hashlib
import json
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives.serialization import Encoding


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.pending = {}

    def quic_event_received(self, event):
        for http_event in self.http.handle_event(event):
            stream = self.pending.get(getattr(http_event, "stream_id", None))
            if stream is None:
                continue
            if isinstance(http_event, HeadersReceived):
                stream["headers"].extend(http_event.headers)
            elif isinstance(http_event, DataReceived):
                stream["body"] += http_event.data
            if getattr(http_event, "stream_ended", False) and not stream["done"].done():
                stream["done"].set_result(None)

    async def get(self, authority, path, headers):
        stream_id = self._quic.get_next_available_stream_id()
        fields = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"statiko-tests-aioquic"),
        ]
        fields += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        done = asyncio.get_running_loop().create_future()
        self.pending[stream_id] = {"headers": [], "body": b"", "done": done}
        self.http.send_headers(stream_id, fields, end_stream=True)
        self.transmit()
        await done
        stream = self.pending.pop(stream_id)
        status = None
        out_headers = []
        for name, value in stream["headers"]:
            if name == b":status":
                status = int(value)
            else:
                out_headers.append([name.decode(), value.decode()])
        return {
            "status": status,
            "headers": out_headers,
            "body_b64": base64.b64encode(stream["body"]).decode(),
        }


def leaf_sha256(protocol):
    # aioquic keeps the peer's leaf certificate (a cryptography x509 object) on its TLS context.
    cert = getattr(protocol._quic.tls, "_peer_certificate", None)
    if cert is None:
        return None
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("name")
    parser.add_argument("requests")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    requests = json.loads(args.requests)

    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.verify_mode = ssl.CERT_NONE
    configuration.server_name = args.name
    configuration.idle_timeout = args.timeout

    async def run():
        async with connect(
            host.strip("[]"),
            int(port),
            configuration=configuration,
            create_protocol=Client,
            wait_connected=True,
        ) as client:
            responses = []
            for request in requests:
                responses.append(
                    await client.get(args.name, request["path"], request.get("headers", {}))
                )
            return {
                "alpn": client._quic.tls.alpn_negotiated,
                "certificate_sha256": leaf_sha256(client),
                "responses": responses,
            }

    result = await asyncio.wait_for(run(), args.timeout)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as err:  # noqa: BLE001 - the test prints whatever went wrong
        print(f"h3_client: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)
