"""`smartbinctl history`: the history requests' arguments from the command line, and their rows as a table, CSV
(for a spreadsheet) or JSON lines."""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HistoryKind:
    """One `smartbinctl history <kind>`: its request, where the rows are in the answer, and its options."""

    command: str
    rows_key: str
    options: tuple[str, ...]
    """The request args taken from the command line's options of the same name."""


KINDS: dict[str, HistoryKind] = {
    "fill": HistoryKind("history/fill", "points", ("compartment", "since", "until", "hours", "limit")),
    "health": HistoryKind("history/health", "points", ("since", "until", "hours", "limit")),
    "counts": HistoryKind("history/counts", "rows", ("since", "until", "hours", "period", "by")),
    "items": HistoryKind("history/items", "items",
                         ("since", "until", "hours", "limit", "category", "compartment", "outcome")),
}


def add_history_parser(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`smartbinctl history {fill,health,counts,items}` and its options."""
    p = sub.add_parser("history", parents=[common], help="fill, health, counts or last items, as a table, CSV or JSONL",
                       description="Ask the daemon for a history (history/fill, history/health, history/counts, "
                                   "history/items) and print it: a table, or --csv / --jsonl for a spreadsheet.")
    p.add_argument("kind", choices=tuple(KINDS), help="fill: a compartment's fill %%; health: the health figures; "
                                                       "counts: items per hour/day; items: the last items")
    p.add_argument("compartment", nargs="?", help="fill: the compartment (required); items: only this compartment")
    p.add_argument("--since", help="start: ISO-8601 (UTC without an offset) or Unix seconds")
    p.add_argument("--until", help="end (default now)")
    p.add_argument("--hours", type=float, help="the last N hours (default 24; not with --since)")
    p.add_argument("--limit", type=int, help="at most N points or items (max 500)")
    p.add_argument("--period", choices=("hour", "day"), help="counts: per UTC hour (default) or day")
    p.add_argument("--by", choices=("category", "compartment", "outcome"), help="counts: the key (default category)")
    p.add_argument("--category", help="items: only this category")
    p.add_argument("--outcome", choices=("sorted", "refused", "failed", "interrupted"), help="items: only this outcome")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV with a header row")
    out.add_argument("--jsonl", action="store_true", help="one JSON object per line")
    out.add_argument("--json", action="store_true", help="the whole answer as JSON")
    return p


def history_payload(args: argparse.Namespace) -> dict[str, Any]:
    """The request args of a `smartbinctl history` command line (options not given are left to the daemon)."""
    kind = KINDS[args.kind]
    payload: dict[str, Any] = {}
    for name in kind.options:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in ("since", "until"):
            value = _number_or_text(value)
        payload[name] = value
    return payload


def _number_or_text(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def history_rows(kind: str, data: Any) -> list[dict[str, Any]]:
    """The rows of an answer's data (points, periods or items), nested values as JSON text."""
    rows = data.get(KINDS[kind].rows_key) if isinstance(data, dict) else None
    if not isinstance(rows, list):
        return []
    return [{k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()}
            for row in rows if isinstance(row, dict)]


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def render_csv(rows: list[dict[str, Any]]) -> str:
    """CSV with a header; empty cells for null."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows))
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return buf.getvalue()


def render_jsonl(rows: list[dict[str, Any]]) -> str:
    """One compact JSON object per row."""
    return "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def render_table(kind: str, data: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A title line (what, range, bucket), the rows as aligned columns, or a note that there are none."""
    what = {"fill": f"fill of {data.get('compartment')}", "health": "health", "items": "items",
            "counts": f"items per {data.get('period')} by {data.get('by')}"}[kind]
    span = f" {data['since']} → {data['until']}" if data.get("since") else ""
    bucket = f", one point per {data['bucket_s']:g} s" if isinstance(data.get("bucket_s"), (int, float)) else ""
    lines = [f"{what}{span}{bucket}: {len(rows)} row(s)"]
    if not rows:
        return lines[0].replace(": 0 row(s)", ": nothing recorded")
    columns = _columns(rows)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    if kind == "counts" and isinstance(data.get("totals"), dict):
        lines.append("totals: " + ", ".join(f"{k} {v}" for k, v in data["totals"].items()))
    return "\n".join(lines)
