#!/usr/bin/env python3
"""Turns deploy/bench/run.sh's results.jsonl into the Markdown tables of BENCHMARKS.md.

    table.py RESULTS MACHINE COMMAND DATE [pinned]    print the tables
    table.py --splice BENCHMARKS.md TABLE.md          replace what lies between the bench markers
"""
import json
import sys

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ORDER = [
    "direct",
    "auth-proxy-cached",
    "auth-proxy-nocache-sqlite",
    "auth-proxy-nocache-postgres",
    "haproxy-jwt_verify",
    "nginx-proxy_pass",
]


def load(path):
    rows = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            rows[(r["target"], r["label"])] = r
    return rows


def fmt(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"


def per_round(rows, prefix, value):
    """`value(round)` for every round labelled `prefix`N, sorted; rounds missing a figure are skipped."""
    rounds = {l for (_, l) in rows if l.startswith(prefix)}
    return sorted(v for v in map(value, rounds) if v is not None)


def alternating(rows, a, b, key, prefix="alt-"):
    """Per-round ratios a/b of `key` over the `prefix`N rounds (alt-: handshakes, altmsg-: messages), sorted."""

    def ratio_of(r):
        va, vb = rows.get((a, r), {}).get(key), rows.get((b, r), {}).get(key)
        return va / vb if va and vb else None

    return per_round(rows, prefix, ratio_of)


def added_over_direct(rows, target, prefix, key):
    """Per-round `key` of `target` minus direct's, at one client, over the `prefix`N rounds
    (altlat-: handshakes, altrt-: message round trips)."""

    def over_direct(r):
        t, d = rows.get((target, r), {}).get(key), rows.get(("direct", r), {}).get(key)
        return t - d if t is not None and d is not None else None

    return per_round(rows, prefix, over_direct)


def span(xs, unit="×", digits=2):
    """`median M (rounds LO–HI)` of sorted per-round figures."""
    f = lambda v: f"{v:,.{digits}f}"  # noqa: E731
    return f"median {f(median(xs))}{unit} (rounds {f(xs[0])}–{f(xs[-1])}{unit})"


def median(xs):
    n = len(xs)
    return (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2) if n else None


def table(rows, machine, command, date, pinned):
    g = lambda t, l, k: rows.get((t, l), {}).get(k)  # noqa: E731
    targets = [t for t in ORDER if any(k[0] == t for k in rows)]
    out = [
        f"Run on {date}: `{command}`  ",
        f"Machine: {machine}  ",
        (
            "Each proxy ran alone with one worker thread, pinned to CPU 0; loadgen (one thread) and the "
            "echo upstream shared CPU 1."
            if pinned
            else "Not pinned (fewer than 2 CPUs)."
        ),
        "",
        "| target | handshakes/s | handshake p50 / p99 (1 client) | messages/s | round trip p50 / p99 (1 client) | round trip p50 / p99 (under load) | HTTP req/s | proxy CPU per handshake | proxy RSS per idle tunnel | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in targets:
        errors = sum(r.get("errors", 0) for (tt, _), r in rows.items() if tt == t)
        held = g(t, "idle", "held")
        rss = g(t, "idle", "rss_bytes_per_connection")
        out.append(
            f"| {t} | {fmt(g(t, 'handshakes', 'per_second'))} "
            f"| {fmt(g(t, 'handshake-latency', 'p50_us'))} / {fmt(g(t, 'handshake-latency', 'p99_us'))} µs "
            f"| {fmt(g(t, 'roundtrip', 'per_second'))} "
            f"| {fmt(g(t, 'roundtrip-latency', 'p50_us'))} / {fmt(g(t, 'roundtrip-latency', 'p99_us'))} µs "
            f"| {fmt(g(t, 'roundtrip', 'p50_us'))} / {fmt(g(t, 'roundtrip', 'p99_us'))} µs "
            f"| {fmt(g(t, 'http-bearer', 'per_second'))} "
            f"| {fmt(g(t, 'handshakes', 'proxy_cpu_us_per_op'), 1) + ' µs' if g(t, 'handshakes', 'proxy_cpu_us_per_op') else '–'} "
            f"| {fmt(rss / 1024, 1) + ' KiB (' + fmt(held) + ' held)' if rss is not None else '–'} "
            f"| {errors} |"
        )
    out += [
        "",
        "Ratios (handshakes/s and messages/s against direct and against HAProxy; CPU per handshake against HAProxy). "
        "Under load means the same connections as the messages/s column.",
        "",
        "| target | handshakes/s vs direct | vs HAProxy | messages/s vs direct | vs HAProxy | CPU/handshake vs HAProxy | added handshake p99 vs direct | round trip p50 vs direct (1 client) | (under load) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    hx = "haproxy-jwt_verify"
    for t in targets:
        if t == "direct":
            continue
        added = None
        if g(t, "handshake-latency", "p99_us") is not None and g("direct", "handshake-latency", "p99_us"):
            added = g(t, "handshake-latency", "p99_us") - g("direct", "handshake-latency", "p99_us")
        out.append(
            f"| {t} | {ratio(g(t, 'handshakes', 'per_second'), g('direct', 'handshakes', 'per_second'))} "
            f"| {ratio(g(t, 'handshakes', 'per_second'), g(hx, 'handshakes', 'per_second'))} "
            f"| {ratio(g(t, 'roundtrip', 'per_second'), g('direct', 'roundtrip', 'per_second'))} "
            f"| {ratio(g(t, 'roundtrip', 'per_second'), g(hx, 'roundtrip', 'per_second'))} "
            f"| {ratio(g(t, 'handshakes', 'proxy_cpu_us_per_op'), g(hx, 'handshakes', 'proxy_cpu_us_per_op'))} "
            f"| {fmt(added) + ' µs' if added is not None else '–'} "
            f"| {ratio(g(t, 'roundtrip-latency', 'p50_us'), g('direct', 'roundtrip-latency', 'p50_us'))} "
            f"| {ratio(g(t, 'roundtrip', 'p50_us'), g('direct', 'roundtrip', 'p50_us'))} |"
        )
    c = "auth-proxy-cached"
    alt_hs = alternating(rows, c, hx, "per_second")
    alt_cpu = alternating(rows, c, hx, "proxy_cpu_us_per_op")
    if alt_hs:
        out += [
            "",
            f"Alternating rounds ({len(alt_hs)} × auth-proxy-cached and haproxy-jwt_verify, handshakes at "
            "the same connections, back to back, HAProxy first in even rounds): auth-proxy / HAProxy handshakes/s "
            f"{span(alt_hs)}"
            + (f"; CPU per handshake {span(alt_cpu)}." if alt_cpu else "."),
        ]
    alt_msg = alternating(rows, c, hx, "per_second", "altmsg-")
    alt_msg_cpu = alternating(rows, c, hx, "proxy_cpu_us_per_op", "altmsg-")
    if alt_msg:
        out += [
            "",
            f"Alternating rounds of messages under load ({len(alt_msg)} × auth-proxy-cached and "
            f"haproxy-jwt_verify, at the connections of the messages/s column): auth-proxy / HAProxy messages/s {span(alt_msg)}"
            + (f"; CPU per message {span(alt_msg_cpu)}." if alt_msg_cpu else "."),
        ]
    lat = {t: added_over_direct(rows, t, "altlat-", "p99_us") for t in (c, hx)}
    rtt = {t: added_over_direct(rows, t, "altrt-", "p50_us") for t in (c, hx)}
    if lat[c]:
        spans = {t: span(v, " µs", 0) for t, v in lat.items() if v}
        rt_spans = {t: span(v, " µs", 0) for t, v in rtt.items() if v}
        out += [
            "",
            f"Alternating rounds at one client ({len(lat[c])} × direct, auth-proxy-cached, haproxy-jwt_verify): "
            f"added handshake p99 over direct, auth-proxy {spans[c]}"
            + (f"; HAProxy {spans[hx]}" if hx in spans else "")
            + (
                f". Added message round trip p50 over direct, auth-proxy {rt_spans[c]}; HAProxy {rt_spans[hx]}."
                if c in rt_spans and hx in rt_spans
                else "."
            ),
        ]
    goals = []
    hs, hhs = g(c, "handshakes", "per_second"), g(hx, "handshakes", "per_second")
    if hs and hhs:
        goals.append(("handshakes/s ≥ HAProxy jwt_verify", hs >= hhs, f"{hs / hhs:.2f}× HAProxy"))
    if alt_hs:
        m = median(alt_hs)
        goals.append(("handshakes/s ≥ HAProxy jwt_verify (alternating rounds, median)", m >= 1, f"{m:.3f}×"))
    cpu, hcpu = g(c, "handshakes", "proxy_cpu_us_per_op"), g(hx, "handshakes", "proxy_cpu_us_per_op")
    if cpu and hcpu:
        goals.append(("proxy CPU per handshake ≤ HAProxy's", cpu <= hcpu, f"{cpu:.1f} µs vs {hcpu:.1f} µs"))
    if alt_cpu:
        m = median(alt_cpu)
        goals.append(("proxy CPU per handshake ≤ HAProxy's (alternating rounds, median)", m <= 1, f"{m:.3f}×"))
    p99, dp99 = g(c, "handshake-latency", "p99_us"), g("direct", "handshake-latency", "p99_us")
    if p99 is not None and dp99 is not None:
        goals.append(("added handshake p99 ≤ 1 ms (cached user)", p99 - dp99 <= 1000, f"{p99 - dp99} µs"))
    if lat[c]:
        m = median(lat[c])
        goals.append(("added handshake p99 ≤ 1 ms (alternating rounds, median)", m <= 1000, f"{m:,.0f} µs"))
    ms, hms = g(c, "roundtrip", "per_second"), g(hx, "roundtrip", "per_second")
    if ms and hms:
        goals.append(("messages/s under load ≥ HAProxy", ms >= hms, f"{ms / hms:.2f}× HAProxy"))
    if alt_msg:
        m = median(alt_msg)
        goals.append(("messages/s under load ≥ HAProxy (alternating rounds, median)", m >= 1, f"{m:.3f}×"))
    rt, hrt = g(c, "roundtrip-latency", "p50_us"), g(hx, "roundtrip-latency", "p50_us")
    drt = g("direct", "roundtrip-latency", "p50_us")
    if rt and hrt and drt is not None:
        goals.append(
            ("added one-client round trip ≤ HAProxy's (p50)", rt <= hrt, f"{rt - drt} µs vs {hrt - drt} µs")
        )
    if rtt[c] and rtt[hx]:
        a, h = median(rtt[c]), median(rtt[hx])
        goals.append(
            ("added one-client round trip ≤ HAProxy's (alternating rounds, median p50)", a <= h, f"{a:,.0f} µs vs {h:,.0f} µs")
        )
    hr, hhr = g(c, "http-bearer", "per_second"), g(hx, "http-bearer", "per_second")
    if hr and hhr:
        goals.append(("authenticated HTTP req/s ≥ HAProxy (loadgen)", hr >= hhr, f"{hr / hhr:.2f}× HAProxy"))
    rss, held = g(c, "idle", "rss_bytes_per_connection"), g(c, "idle", "held")
    if rss is not None:
        goals.append(("≤ 4 KiB RSS per idle tunnel", rss <= 4 * 1024, f"{rss / 1024:.1f} KiB over {held:,} tunnels"))
    out += ["", "Goals (auth-proxy, cached user):", ""]
    out += [f"- {'met' if ok else 'MISSED'}: {name} — {val}" for name, ok, val in goals]
    return "\n".join(out) + "\n"


def splice(md_path, table_path):
    md = open(md_path).read()
    new = open(table_path).read()
    a, b = md.index(BEGIN) + len(BEGIN), md.index(END)
    open(md_path, "w").write(md[:a] + "\n" + new + md[b:])


if __name__ == "__main__":
    if sys.argv[1] == "--splice":
        splice(sys.argv[2], sys.argv[3])
    else:
        print(table(load(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], len(sys.argv) > 5 and sys.argv[5]))
