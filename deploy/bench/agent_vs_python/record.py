#!/usr/bin/env python3
"""Adds what the harness measured around one loadgen run to loadgen's JSON report, and prints a line.

Reads loadgen's JSON report (one line) on stdin; appends one JSON line to --results with:
  stack, label, round           which measurement this is
  server_cpu_us_per_op          (utime+stime delta of the server processes) / ok operations
  llm_calls                     the fake Ollama's counters, delta over the run: calls per endpoint and
                                the TCP connections the stack opened to it
  llm_calls_per_answer          /api/chat + /api/generate calls per answer (chat scenarios)
and prints a one-line summary for the person watching.
"""
import argparse
import json
import sys


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--results", required=True)
    p.add_argument("--stack", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--ticks", type=int, required=True, help="CPU clock ticks the servers used")
    p.add_argument("--hz", type=int, required=True, help="clock ticks per second (getconf CLK_TCK)")
    p.add_argument("--llm-before", default="{}", help="the fake LLM's /stats before the run")
    p.add_argument("--llm-after", default="{}", help="the fake LLM's /stats after the run")
    a = p.parse_args()

    r = json.loads(sys.stdin.read())
    r.update(stack=a.stack, label=a.label, round=a.round)
    if r.get("ok"):
        r["server_cpu_us_per_op"] = a.ticks * 1e6 / a.hz / r["ok"]
    before, after = json.loads(a.llm_before or "{}"), json.loads(a.llm_after or "{}")
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in ("chat", "generate", "tags", "connections")}
    if after:
        calls["connections"] -= 1  # the connection of the /stats request that read `after`
    r["llm_calls"] = calls
    answers = (r.get("chat") or {}).get("answers", 0)
    if answers:
        r["llm_calls_per_answer"] = (calls["chat"] + calls["generate"]) / answers
    with open(a.results, "a") as f:
        f.write(json.dumps(r) + "\n")

    line = "    %-7s %-16s round %d: %6d ok %3d errors  %9.1f/s  p50 %8d us" % (
        a.stack, a.label, a.round, r["ok"], r["errors"], r["per_second"], r["p50_us"])
    if "server_cpu_us_per_op" in r:
        line += "  cpu %8.1f us/op" % r["server_cpu_us_per_op"]
    if r.get("rss_bytes_per_connection") is not None:
        line += "  %.1f KiB/conn" % (r["rss_bytes_per_connection"] / 1024)
        for pr in r.get("rss_by_pid") or []:
            line += " [pid %d %.1f]" % (pr["pid"], pr["rss_bytes_per_connection"] / 1024)
    c = r.get("chat")
    if c:
        line += "  %.1f status/answer" % c["progress_per_answer"]
        if c.get("agent_duration_ms_p50") is not None:
            line += "  agent %.1f ms" % c["agent_duration_ms_p50"]
        if "llm_calls_per_answer" in r:
            line += "  %.2f LLM calls/answer" % r["llm_calls_per_answer"]
    print(line, flush=True)


main()
