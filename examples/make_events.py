"""Writes examples/events.csv: the demo's sample, reproducible (fixed seed, no dependencies).

3,000 events over 7 days; two rows that parse but do not fit the inferred schema (they land in
events_quarantine) and two lines that cannot be parsed (counted as invalid lines). They sit after the first
1,000 rows, so the schema jobsd infers from its sample stays Date / DateTime / Int64 / String / Float64.

    python examples/make_events.py
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

ROWS = 3000
EVENTS = ("view", "view", "view", "add_to_cart", "remove_from_cart", "buy")
# Line numbers (1 = the header) of the deliberate problems.
QUARANTINED = {1501: "user_id", 2201: "price"}
INVALID = {1801: "missing field", 2601: "bad quote"}


def main() -> None:
    rng = random.Random(20240722)
    start = datetime(2024, 7, 15)
    lines = ["date,timestamp,user_id,event,product_id,price"]
    for _ in range(ROWS):
        line_number = len(lines) + 1
        when = start + timedelta(seconds=rng.randrange(7 * 86_400))
        user = rng.randrange(1, 400)
        event = rng.choice(EVENTS)
        product = f"P{rng.randrange(1, 60):03d}"
        price = round(rng.uniform(2, 200), 2)
        fields = [when.strftime("%Y-%m-%d"), when.strftime("%Y-%m-%d %H:%M:%S"), str(user), event, product, str(price)]
        if QUARANTINED.get(line_number) == "user_id":
            fields[2] = "anonymous"
        elif QUARANTINED.get(line_number) == "price":
            fields[5] = "n/a"
        elif INVALID.get(line_number) == "missing field":
            fields = fields[:5]
        elif INVALID.get(line_number) == "bad quote":
            fields[3] = '"view"ed'
        lines.append(",".join(fields))
    Path(__file__).with_name("events.csv").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
