#!/usr/bin/env python3
"""The comparison table of agent_vs_python.sh, from its results.jsonl (one JSON line per loadgen run,
written by record.py).

Usage: table.py RESULTS.jsonl META.json > agent_vs_python.md

Every figure is the median over the rounds (the range of the rounds follows in brackets); a ratio is
ours / Python of those medians. The labels of results.jsonl: `idle` (RSS per idle chat connection,
N held), `idle-big` (the same with many more, one run per stack), `seq` (one client, sequential
messages), `welcome` (connect -> welcome -> close, one at a time), `clients` (concurrent clients).
"""
import json
import statistics
import sys

OURS, PY = "ours", "python"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def runs(results, stack, label):
    return [r for r in results if r["stack"] == stack and r["label"] == label]


def values(results, stack, label, get):
    out = []
    for r in runs(results, stack, label):
        try:
            v = get(r)
        except (KeyError, IndexError, TypeError):
            v = None
        if v is not None:
            out.append(v)
    return out


def med(vs):
    return statistics.median(vs) if vs else None


def num(v, digits=0):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def cell(vs, digits=0, unit=""):
    """The median, with the rounds' range when there are several."""
    m = med(vs)
    if m is None:
        return "–"
    s = num(m, digits) + unit
    if len(vs) > 1:
        s += f" ({num(min(vs), digits)}–{num(max(vs), digits)})"
    return s


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def rx(v):
    return "–" if v is None else (f"{v:.2f}×" if v < 10 else f"{v:.1f}×")


def verdict(ok):
    return "–" if ok is None else ("met" if ok else "**MISSED**")


def main():
    results = load(sys.argv[1])
    with open(sys.argv[2]) as f:
        meta = json.load(f)
    rows = []

    def row(measure, ours, py, rat, goal, ok):
        rows.append(f"| {measure} | {ours} | {py} | {rat} | {goal} | {verdict(ok)} |")

    # 1. One client, sequential messages.
    seq_o = values(results, OURS, "seq", lambda r: r["p50_us"] / 1000)
    seq_p = values(results, PY, "seq", lambda r: r["p50_us"] / 1000)
    dur_o = values(results, OURS, "seq", lambda r: r["chat"]["agent_duration_ms_p50"])
    limit = None if med(dur_o) is None else med(dur_o) + 5
    n_seq = meta["settings"]["SEQ_MESSAGES"]
    row(f"1 · one client, {n_seq} sequential messages: answer p50 (user_message → agent_message)",
        cell(seq_o, 2, " ms"), cell(seq_p, 2, " ms"), rx(ratio(med(seq_o), med(seq_p))),
        "≤ agent duration_ms + 5 ms" + ("" if limit is None else f" (≤ {limit:.1f} ms)"),
        None if limit is None or med(seq_o) is None else med(seq_o) <= limit)
    row("  the agent's own `duration_ms` (its `completed` entry), p50", cell(dur_o, 1, " ms"),
        "not reported", "–", "–", None)

    # 2. RSS per idle chat connection.
    for label, what in (("idle", meta["settings"]["IDLE"]), ("idle-big", meta["settings"]["IDLE_BIG_N"])):
        if not runs(results, OURS, label) and not runs(results, PY, label):
            continue
        kib = lambda r: r["rss_bytes_per_connection"] / 1024  # noqa: E731
        edge = values(results, OURS, label, lambda r: r["rss_by_pid"][0]["rss_bytes_per_connection"] / 1024)
        agent = values(results, OURS, label, lambda r: r["rss_by_pid"][1]["rss_bytes_per_connection"] / 1024)
        both = values(results, OURS, label, kib)
        py = values(results, PY, label, kib)
        once = "" if label == "idle" else ", one run"
        row(f"2 · RSS per idle chat connection ({what:,} held{once}): edge", cell(edge, 1, " KiB"), "–", "–", "–", None)
        row("  agent", cell(agent, 1, " KiB"), "–", "–", "–", None)
        row("  edge + agent (ours) vs uvicorn (Python)", cell(both, 1, " KiB"), cell(py, 1, " KiB"),
            rx(ratio(med(both), med(py))), "≤ 16 KiB", None if med(both) is None else med(both) <= 16)

    # 3. connect -> welcome -> close, one at a time.
    n_w = meta["settings"]["WELCOMES"]
    w_o = values(results, OURS, "welcome", lambda r: r["per_second"])
    w_p = values(results, PY, "welcome", lambda r: r["per_second"])
    r_w = ratio(med(w_o), med(w_p))
    row(f"3 · connect → welcome → close, {n_w} one at a time: connections/s", cell(w_o), cell(w_p), rx(r_w),
        "≥ 2× Python", None if r_w is None else r_w >= 2)
    c_o = values(results, OURS, "welcome", lambda r: r["server_cpu_us_per_op"])
    c_p = values(results, PY, "welcome", lambda r: r["server_cpu_us_per_op"])
    r_c = ratio(med(c_o), med(c_p))
    row("  server CPU per connection", cell(c_o, 0, " µs"), cell(c_p, 0, " µs"), rx(r_c),
        "≤ 0.5× Python", None if r_c is None else r_c <= 0.5)
    l_o = values(results, OURS, "welcome", lambda r: r["p50_us"] / 1000)
    l_p = values(results, PY, "welcome", lambda r: r["p50_us"] / 1000)
    row("  connect → welcome p50", cell(l_o, 2, " ms"), cell(l_p, 2, " ms"), rx(ratio(med(l_o), med(l_p))), "–", None)

    # 4. Concurrent clients.
    s = meta["settings"]
    a_o = values(results, OURS, "clients", lambda r: r["per_second"])
    a_p = values(results, PY, "clients", lambda r: r["per_second"])
    r_a = ratio(med(a_o), med(a_p))
    row(f"4 · answers/s, {s['CLIENTS']} clients × {s['CLIENT_MESSAGES']} messages", cell(a_o), cell(a_p), rx(r_a),
        "≥ 10× Python", None if r_a is None else r_a >= 10)
    u_o = values(results, OURS, "clients", lambda r: r["server_cpu_us_per_op"])
    u_p = values(results, PY, "clients", lambda r: r["server_cpu_us_per_op"])
    r_u = ratio(med(u_o), med(u_p))
    row("  server CPU per answer", cell(u_o, 0, " µs"), cell(u_p, 0, " µs"), rx(r_u),
        "≤ 0.1× Python", None if r_u is None else r_u <= 0.1)
    p_o = values(results, OURS, "clients", lambda r: r["p50_us"] / 1000)
    p_p = values(results, PY, "clients", lambda r: r["p50_us"] / 1000)
    row("  answer p50 under that load", cell(p_o, 2, " ms"), cell(p_p, 2, " ms"), rx(ratio(med(p_o), med(p_p))), "–", None)

    # 5. Status log, from the sequential runs.
    st_o = values(results, OURS, "seq", lambda r: r["chat"]["progress_per_answer"])
    st_p = values(results, PY, "seq", lambda r: r["chat"]["progress_per_answer"])
    row("5 · status log: `agent_progress` entries per answer", cell(st_o, 1), cell(st_p, 1),
        rx(ratio(med(st_o), med(st_p))), "≥ Python's",
        None if med(st_o) is None or med(st_p) is None else med(st_o) >= med(st_p))
    # Every LLM call the fake Ollama served is reported, before and after, with its characters.
    def reported(r):
        c = r["chat"]
        served = r["llm_calls"]["chat"] + r["llm_calls"]["generate"]
        return (c["llm_requests_with_chars"], c["llm_responses_with_chars"], served)
    rep_o = values(results, OURS, "seq", reported)
    rep_p = values(results, PY, "seq", reported)

    def rep_cell(rep):
        if not rep:
            return "–"
        req, resp, served = (sum(x[i] for x in rep) for i in range(3))
        return f"{resp:,} of {served:,} calls"
    ok_rep = None if not rep_o else all(req == resp == served and served > 0 for req, resp, served in rep_o)
    row("  LLM calls reported with prompt and response characters", rep_cell(rep_o), rep_cell(rep_p), "–",
        "every call", ok_rep)
    k_o = values(results, OURS, "seq", lambda r: r["llm_calls_per_answer"])
    k_p = values(results, PY, "seq", lambda r: r["llm_calls_per_answer"])
    row("  LLM calls per answer (counted by the fake Ollama)", cell(k_o, 2), cell(k_p, 2), "–", "–", None)

    err_o = sum(r["errors"] for r in results if r["stack"] == OURS)
    err_p = sum(r["errors"] for r in results if r["stack"] == PY)
    row("errors (all measurements)", num(err_o), num(err_p), "–", "0", err_o == 0 and err_p == 0)

    def stages(stack):
        merged = {}
        answers = 0
        for r in runs(results, stack, "seq"):
            answers += r["chat"]["answers"]
            for k, v in r["chat"]["stages"].items():
                merged[k] = merged.get(k, 0) + v
        if not answers:
            return "–"
        return ", ".join(f"`{k}`" + ("" if v == answers else f" ×{v / answers:.2g}") for k, v in merged.items())

    def endpoint(stack):
        calls = {"chat": 0, "generate": 0}
        conns = 0
        for r in runs(results, stack, "seq") + runs(results, stack, "clients"):
            for k in calls:
                calls[k] += r["llm_calls"][k]
            conns += r["llm_calls"].get("connections", 0)
        total = sum(calls.values())
        s = ", ".join(f"`POST /api/{k}` ×{v:,}" for k, v in calls.items() if v) or "none"
        if total:
            s += f" over {conns:,} new TCP connections ({conns / total:.2f} per call)"
        return s

    m = meta
    out = []
    out.append("## Our stack vs Fluxion00API")
    out.append("")
    out.append(f"Run on {m['date']}: `{m['command']}`  ")
    out.append(f"Fluxion00API: commit `{m['commit']}` ({m['commit_subject']}); {m['python']}; "
               "`python run.py`: one uvicorn worker, reload off.  ")
    out.append(f"Ours: auth-proxy (edge, 1 worker thread) + agent-service, release build of `{m['ours_commit']}`.  ")
    busiest = max((int(x.strip().rstrip("%")) for x in m["busy"].split("/") if x.strip().rstrip("%").isdigit()), default=0)
    noisy = "; over 10 %: something else was sharing the CPUs, and the figures are noisy" if busiest > 10 else ""
    out.append(f"Machine: {m['machine']}. {m['pinning']} Other work: the CPUs were "
               f"{m['busy']} busy just before / after the rounds (2 s samples with none of the servers up{noisy}).  ")
    out.append(f"Both stacks: the same SQLite News Nexus database (`agent-service/demo/newsnexus-sqlite.sql`), "
               f"the same HS256 secret, the same fake Ollama (`loadgen fake-ollama`, a plain answer after "
               f"{m['settings']['LLM_DELAY_US']} µs), URL `/ws/<uuid>?token=…&provider=ollama&model=mistral:instruct`. "
               f"Each round starts each stack fresh; {m['settings']['ROUNDS']} rounds, stacks alternating "
               "(Python first in even rounds); figures are medians over the rounds, (range) of the rounds, ratios ours / Python.")
    out.append("")
    out.append("| measure | ours | Python | ours / Python | goal | |")
    out.append("|---|---:|---:|---:|---|---|")
    out.extend(rows)
    out.append("")
    out.append("What each stack did per answer (sequential runs):")
    out.append("")
    out.append(f"- ours: status-log stages {stages(OURS)}; fake Ollama served {endpoint(OURS)} "
               "(concurrent runs included); the user message and the answer stored in the agent's session store.")
    out.append(f"- Python: status-log stages {stages(PY)}; fake Ollama served {endpoint(PY)} "
               "(concurrent runs included); the conversation kept in memory. Its `OllamaProvider.generate` "
               "makes a new `httpx.AsyncClient` for every call, and creating one took "
               f"{m['httpx_client_ms']:.1f} ms of CPU here (httpx loads its CA bundle even for an `http://` URL): "
               "most of Python's time per answer.")
    out.append("")
    out.append("CPU is utime + stime from `/proc/PID/stat` (edge + agent for ours, the uvicorn process for Python) "
               f"over the whole loadgen run, in clock ticks of {1e6 / m['hz']:,.0f} µs, divided by the operations; "
               "RSS is `VmRSS` after − before, divided by the connections held, each connection having received its welcome.")
    print("\n".join(out))


main()
