"""Container health check: exit 0 when the server's /readyz answers 200, else 1.

Standard library only, so the image needs no curl. Reads the same RBN_SERVE_PORT the server binds,
and always asks the loopback interface (the server listens on 0.0.0.0 in the container).

    python /app/healthcheck.py [--path /readyz] [--timeout 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="probe the rbn-serve readiness route")
    parser.add_argument("--path", default="/readyz")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    port = os.environ.get("RBN_SERVE_PORT", "8000")
    url = f"http://127.0.0.1:{port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
            ok = response.status == 200
    except urllib.error.HTTPError as exc:  # 503 while loading or draining
        print(f"{url}: {exc.code}", file=sys.stderr)
        return 1
    except OSError as exc:  # not listening yet, or gone
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
