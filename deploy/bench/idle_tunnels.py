#!/usr/bin/env python3
"""RSS per idle WebSocket tunnel of a proxy, with a minimal upstream (answers 101 and holds).

Usage: idle_tunnels.py --listen-upstream PORT --proxy PORT --token JWT --pid PID [-n 4000]
The proxy must forward to 127.0.0.1:PORT (the upstream this script serves). Prints one JSON line:
{"tunnels": n, "rss_before_kib": .., "rss_after_kib": .., "kib_per_tunnel": ..}.
"""
import argparse, asyncio, base64, hashlib, json

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
held = []


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")


async def upstream(reader, writer):
    head = await reader.readuntil(b"\r\n\r\n")
    key = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    await writer.drain()
    held.append(writer)
    await reader.read()  # hold until the proxy closes


async def client(port, token):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /ws/idle?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(head.decode(errors="replace"))
    return writer


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen-upstream", type=int, required=True)
    p.add_argument("--proxy", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("-n", type=int, default=4000)
    a = p.parse_args()
    server = await asyncio.start_server(upstream, "127.0.0.1", a.listen_upstream, backlog=4096)
    # Warm up (worker scratch buffers, pools), then measure.
    warm = [await client(a.proxy, a.token) for _ in range(50)]
    await asyncio.sleep(1)
    before = rss_kib(a.pid)
    clients = []
    for i in range(0, a.n, 200):
        clients += await asyncio.gather(*(client(a.proxy, a.token) for _ in range(min(200, a.n - i))))
    await asyncio.sleep(2)
    after = rss_kib(a.pid)
    print(json.dumps({"tunnels": len(clients), "rss_before_kib": before, "rss_after_kib": after,
                      "kib_per_tunnel": round((after - before) / len(clients), 2)}))
    for w in clients + warm:
        w.close()
    server.close()


asyncio.run(main())
