"""A business system's first call to sekimori, in Python with grpcio (docs/integration.md).

Generate the stubs once:
    python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen proto/sekimori/v1/access.proto
Then:
    PYTHONPATH=gen python docs/examples/check_client.py --addr 127.0.0.1:7443 \
        --cacert data/dev/ca.pem --cert data/dev/clients/juki.pem --key data/dev/clients/juki-key.pem \
        --token "$(cargo run -q -- dev token --sub e1010 --section shimin --amr pwd,fpt)"
"""
import argparse
import sys

import grpc

from sekimori.v1 import access_pb2, access_pb2_grpc


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("--addr", "--cacert", "--cert", "--key", "--token"):
        p.add_argument(name, required=True)
    a = p.parse_args()

    # 1. Mutual TLS: the client certificate names the calling system.
    with open(a.cacert, "rb") as f:
        ca = f.read()
    with open(a.cert, "rb") as f:
        cert = f.read()
    with open(a.key, "rb") as f:
        key = f.read()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    channel = grpc.secure_channel(a.addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
    stub = access_pb2_grpc.AccessStub(channel)

    # 2. Ask before the access, forwarding the person's token.
    request = access_pb2.CheckRequest(
        subject_token=a.token,
        asset="juki-main",
        action="read",
        env=access_pb2.Environment(device_issued=True, purpose="jumin-kiroku"),
        request_id="madoguchi-0002",
    )
    try:
        decision = stub.Check(request, timeout=5).decision
    except grpc.RpcError as e:
        # 3. Any error, UNAVAILABLE included, means: refuse the access.
        print(f"refusing access: sekimori answered {e.code().name}", file=sys.stderr)
        return 1

    # 4. Allow only with every obligation carried out.
    print(f"{'ALLOW' if decision.allow else 'DENY'} {decision.reason} — {decision.message_ja}")
    for o in decision.obligations:
        print(f"obligation: {o.kind} {o.text}")
    print(f"decision id: {decision.decision_id}")
    return 0 if decision.allow else 5


if __name__ == "__main__":
    sys.exit(main())
