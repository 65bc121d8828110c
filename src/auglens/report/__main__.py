"""``python -m auglens.report RUN_DIR``: write RUN_DIR/report/{index.html, summary.md}."""

from __future__ import annotations

import sys

from ..errors import AuglensError
from .build import build_report


def main(argv: list[str] | None = None) -> int:
    """Build the report of one run directory; print the paths and what is missing."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m auglens.report RUN_DIR", file=sys.stderr)
        return 2
    try:
        out = build_report(args[0])
    except AuglensError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {out['html']}\nsummary: {out['markdown']}")
    for sid, status in out["sections"].items():
        print(f"  {out['titles'][sid]}: {status}")
        for reason in out["missing"].get(sid, []):
            print(f"    - {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
