"""Follow this pod's leadership through the agent's event stream.

Standard library only. Each server-sent event carries the same JSON as
GET /v1/leader; act on `leading`, and stamp external writes with
`fencingToken` (see docs/INTEGRATION.md). Prints one line per event;
`--events N` stops after N events (the tests use it).
"""
import argparse
import json
import os
import urllib.request


def events(port):
    url = f"http://127.0.0.1:{port}/v1/leader/watch"
    # No read timeout: the agent sends a keep-alive comment every 15 s and an
    # event whenever leadership changes, including when a term ends by time.
    with urllib.request.urlopen(url) as stream:
        data = []
        for raw in stream:
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif line == "" and data:
                yield json.loads("\n".join(data))
                data = []


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("ZEN_LEAD_AGENT_PORT", "9466")))
    parser.add_argument("--events", type=int, default=0, help="stop after N events (0: never)")
    args = parser.parse_args()
    for n, view in enumerate(events(args.port), start=1):
        if view["leading"]:
            print(f"leading token={view['fencingToken']}", flush=True)
        else:
            print(f"following holder={view['holder']}", flush=True)
        if args.events and n >= args.events:
            return


if __name__ == "__main__":
    main()
