"""Minimal Alertmanager webhook sink for the local stack: prints one line per alert it receives.

Runs in the `alert-webhook` compose service (python image, standard library only). It stands in for a
pager or chat integration so that `docker compose logs -f alert-webhook` shows what would have paged.
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server naming)
        length = int(self.headers.get("Content-Length", "0"))
        try:
            payload = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self.send_response(400)
            self.end_headers()
            return
        for alert in payload.get("alerts", []):
            labels = alert.get("labels", {})
            summary = alert.get("annotations", {}).get("summary", "")
            print(f"[{alert.get('status', '?')}] {labels.get('alertname', '?')} "
                  f"severity={labels.get('severity', '?')} {summary}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # the per-alert lines above are the log
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args()
    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
