"""A stand-in for the cloud: a python-socketio 5.x server behind aiohttp with mutual TLS
(ssl.CERT_REQUIRED), plus a plain-HTTP control endpoint on loopback so tests can make it
emit events (and wait for the acks), send raw packets, refuse connects, and read what
it received (clients with their certificate CN and serial, heartbeats).

Also serves POST /orchestrators/enroll (multipart field `csr`) for the enrolment tests:
signs the CSR with --signer-cert/--signer-key through the `openssl` command line.

Prints one line `READY {"port": P, "control": C}` on stdout when both listen.
"""

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time

import engineio
import socketio
from aiohttp import web

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, default=0)
p.add_argument("--host", default="127.0.0.1", help="address the Socket.IO site binds (the control endpoint stays on loopback)")
p.add_argument("--cert", required=True)
p.add_argument("--key", required=True)
p.add_argument("--client-ca", required=True)
p.add_argument("--tls", choices=["1.2", "1.3", "any"], default="any")
p.add_argument("--ping-interval", type=float, default=25)
p.add_argument("--ping-timeout", type=float, default=20)
p.add_argument("--max-payload", type=int, default=1_000_000)
p.add_argument("--signer-cert")
p.add_argument("--signer-key")
p.add_argument("--enroll-fail", default="")
p.add_argument("--no-client-cert", action="store_true", help="enrolment: the device has no certificate yet")
args = p.parse_args()

sio = socketio.AsyncServer(
    async_mode="aiohttp",
    ping_interval=args.ping_interval,
    ping_timeout=args.ping_timeout,
    max_http_buffer_size=args.max_payload,
    logger=False,
    engineio_logger=False,
)
state = {"clients": [], "heartbeats": [], "events": [], "refuse": None}


@web.middleware
async def peer_middleware(request, handler):
    # Read the certificate here: by the time the connect handler runs the transport can be gone.
    ssl_obj = request.transport.get_extra_info("ssl_object") if request.transport else None
    if ssl_obj is not None:
        cert = ssl_obj.getpeercert() or {}
        cn = None
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    cn = v
        request["peer"] = {"cn": cn, "serial": cert.get("serialNumber"), "tls": ssl_obj.version()}
    return await handler(request)


@sio.event
async def connect(sid, environ, auth=None):
    req = environ.get("aiohttp.request")
    peer = req.get("peer") if req is not None else None
    if state["refuse"] is not None:
        raise socketio.exceptions.ConnectionRefusedError(state["refuse"])
    state["clients"].append({"sid": sid, "connected_at": time.time(), "auth": auth, **(peer or {})})


@sio.event
async def disconnect(sid, *a):
    for c in state["clients"]:
        if c["sid"] == sid:
            c["disconnected_at"] = time.time()


@sio.on("heartbeat")
async def heartbeat(sid, data):
    state["heartbeats"].append({"sid": sid, "data": data, "at": time.time()})


@sio.on("*")
async def any_event(event, sid, data=None):
    state["events"].append({"sid": sid, "event": event, "data": data})


def current_sid(body):
    if body.get("sid"):
        return body["sid"]
    live = [c for c in state["clients"] if "disconnected_at" not in c]
    if not live:
        raise web.HTTPConflict(text="no client connected")
    return live[-1]["sid"]


async def ctl_state(request):
    return web.json_response({k: state[k] for k in ("clients", "heartbeats", "events")})


async def ctl_emit(request):
    body = await request.json()
    sid = current_sid(body)
    try:
        ack = await sio.call(body["event"], body.get("data"), to=sid, timeout=body.get("timeout", 10))
        return web.json_response({"ack": ack})
    except socketio.exceptions.TimeoutError:
        return web.json_response({"timeout": True})


async def ctl_raw(request):
    """Sends one raw Engine.IO packet (anything, even invalid; `pad` more "a"s) to the client."""
    body = await request.json()
    sid = current_sid(body)
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    pkt = engineio.packet.Packet(engineio.packet.MESSAGE)
    pkt.encode_cache = body["text"] + "a" * int(body.get("pad", 0))
    await sio.eio._get_socket(eio_sid).send(pkt)
    return web.json_response({"sent": True})


async def ctl_refuse(request):
    body = await request.json()
    state["refuse"] = body.get("message")
    return web.json_response({"refuse": state["refuse"]})


async def ctl_disconnect(request):
    body = await request.json()
    await sio.disconnect(current_sid(body))
    return web.json_response({"ok": True})


async def enroll(request):
    if args.enroll_fail:
        return web.json_response({"success": False, "error": args.enroll_fail}, status=400)
    form = await request.post()
    csr = form.get("csr")
    if csr is None:
        return web.json_response({"success": False, "error": "no csr field"}, status=400)
    data = csr.file.read() if hasattr(csr, "file") else csr.encode()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "r.csr"), "wb") as f:
            f.write(data)
        r = subprocess.run(
            ["openssl", "x509", "-req", "-in", "r.csr", "-CA", args.signer_cert, "-CAkey",
             args.signer_key, "-CAcreateserial", "-days", "30", "-out", "c.pem", "-copy_extensions", "copy"],
            cwd=d, capture_output=True)
        if r.returncode != 0:
            return web.json_response({"success": False, "error": r.stderr.decode()}, status=400)
        subject = subprocess.run(["openssl", "req", "-in", "r.csr", "-noout", "-subject", "-text"],
                                 cwd=d, capture_output=True).stdout.decode()
        cert = open(os.path.join(d, "c.pem")).read()
    state["events"].append({"event": "enroll", "data": subject})
    return web.json_response({"success": True, "data": {"certificate": cert}})


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(args.client_ca)
    ctx.verify_mode = ssl.CERT_NONE if args.no_client_cert else ssl.CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if args.tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    elif args.tls == "1.3":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


async def main():
    app = web.Application(middlewares=[peer_middleware])
    sio.attach(app)
    app.router.add_post("/orchestrators/enroll", enroll)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=tls_context(), reuse_address=True)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]

    ctl = web.Application(client_max_size=64 << 20)
    ctl.router.add_get("/state", ctl_state)
    ctl.router.add_post("/emit", ctl_emit)
    ctl.router.add_post("/raw", ctl_raw)
    ctl.router.add_post("/refuse", ctl_refuse)
    ctl.router.add_post("/disconnect", ctl_disconnect)
    crunner = web.AppRunner(ctl, handle_signals=False)
    await crunner.setup()
    csite = web.TCPSite(crunner, "127.0.0.1", 0)
    await csite.start()
    cport = csite._server.sockets[0].getsockname()[1]
    print("READY " + json.dumps({"port": port, "control": cport}), flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
