#!/usr/bin/env python3
"""Upload a folder as an app version and deploy it to a site, through Statiko's gRPC API.

The client code comes from the contract in proto/ (see docs/sdk.md): generate it with

    python3 -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/statiko/v1/*.proto

and put `gen` on PYTHONPATH. Connection settings come from the same variables `stk` reads:
STATIKO_ENDPOINT (default https://127.0.0.1:2265), STATIKO_TOKEN or STATIKO_TOKEN_FILE, and
STATIKO_CA (the control plane's certificate, PEM). The token is never printed.

Usage: deploy.py SITE DIR NAME VERSION [--alias DOMAIN ...]
Exit codes: 0 deployed and served by every live edge; 1 the API refused or failed (the gRPC
status is printed); 2 bad usage.
"""

import argparse
import io
import os
import sys
import tarfile
from urllib.parse import urlparse

import grpc

from statiko.v1 import app_service_pb2, app_service_pb2_grpc
from statiko.v1 import deployment_service_pb2, deployment_service_pb2_grpc
from statiko.v1 import site_service_pb2, site_service_pb2_grpc
from statiko.v1 import types_pb2

CHUNK = 64 * 1024


def token() -> str:
    """The bearer token, from STATIKO_TOKEN or the file STATIKO_TOKEN_FILE names."""
    value = os.environ.get("STATIKO_TOKEN", "")
    path = os.environ.get("STATIKO_TOKEN_FILE", "")
    if not value and path:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    if not value:
        sys.exit("deploy.py: set STATIKO_TOKEN or STATIKO_TOKEN_FILE")
    return value


def channel() -> grpc.Channel:
    """A TLS channel to control that sends the token with every call."""
    endpoint = urlparse(os.environ.get("STATIKO_ENDPOINT", "https://127.0.0.1:2265"))
    root = None
    ca = os.environ.get("STATIKO_CA", "")
    if ca:
        with open(ca, "rb") as f:
            root = f.read()
    tls = grpc.ssl_channel_credentials(root_certificates=root)
    auth = grpc.access_token_call_credentials(token())  # "authorization: Bearer <token>"
    creds = grpc.composite_channel_credentials(tls, auth)
    # Control's self-signed certificate names the host it runs on; 127.0.0.1 and localhost are in it.
    return grpc.secure_channel(f"{endpoint.hostname}:{endpoint.port or 2265}", creds)


def pack(folder: str) -> bytes:
    """The folder as a .tar.gz whose root is the folder's content."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for entry in sorted(os.listdir(folder)):
            tar.add(os.path.join(folder, entry), arcname=entry)
    return buf.getvalue()


def upload_requests(name: str, version: str, archive: bytes):
    """The upload stream: metadata first, then the archive in chunks."""
    yield app_service_pb2.UploadAppRequest(
        metadata=app_service_pb2.UploadMetadata(
            name=name, version=version, format=types_pb2.BUNDLE_FORMAT_TAR_GZ
        )
    )
    for start in range(0, len(archive), CHUNK):
        yield app_service_pb2.UploadAppRequest(chunk=archive[start : start + CHUNK])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site")
    parser.add_argument("dir")
    parser.add_argument("name")
    parser.add_argument("version")
    parser.add_argument("--alias", action="append", default=[])
    args = parser.parse_args()

    with channel() as ch:
        sites = site_service_pb2_grpc.SiteServiceStub(ch)
        apps = app_service_pb2_grpc.AppServiceStub(ch)
        deployments = deployment_service_pb2_grpc.DeploymentServiceStub(ch)
        try:
            try:
                sites.CreateSite(
                    site_service_pb2.CreateSiteRequest(domain=args.site, aliases=args.alias)
                )
                print(f"created site {args.site}")
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
                print(f"site {args.site} exists")

            app = apps.UploadApp(upload_requests(args.name, args.version, pack(args.dir))).app
            print(f"uploaded {app.name}@{app.version} {app.digest}")

            deployed = deployments.Deploy(
                deployment_service_pb2.DeployRequest(
                    domain=args.site,
                    app=types_pb2.AppRef(name=args.name, version=args.version),
                    wait=True,
                )
            )
            print(
                f"deployed {args.name}@{args.version} to {args.site} at revision "
                f"{deployed.revision}; served by {', '.join(deployed.ready_nodes)}"
            )
        except grpc.RpcError as err:
            print(f"deploy.py: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
