"""Time the synthetic shop generator and print what it wrote, as JSON.

    python benchmarks/generate_shop.py --preset demo --json
    python benchmarks/generate_shop.py --preset scale --json --data-dir /tmp/scale-shop
    python benchmarks/generate_shop.py --preset scale --users 200000 --items 20000 --json   # a partial scale run

The summary of `generate_shop` (counts, funnel ratios, wall seconds per phase) plus peak memory
(max RSS), process CPU seconds and the bytes written. Without `--data-dir` the shop goes to a temporary dir that is removed after.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
from pathlib import Path

from vitrine.paths import DataDir
from vitrine.shop.generate import generate_shop
from vitrine.shop.spec import DEMO, SCALE

PRESETS = {"demo": DEMO, "scale": SCALE}


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--users", type=int, help="override the preset's user count")
    parser.add_argument("--items", type=int, help="override the preset's item count")
    parser.add_argument("--days", type=int, help="override the preset's days")
    parser.add_argument("--seed", type=int, help="override the preset's seed")
    parser.add_argument("--data-dir", type=Path, help="keep the shop here (default: a temporary dir)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()

    overrides = {k: getattr(args, k) for k in ("users", "items", "days", "seed") if getattr(args, k) is not None}
    spec = dataclasses.replace(PRESETS[args.preset], **overrides)
    with tempfile.TemporaryDirectory(prefix="vitrine-shop-") as scratch:
        data = DataDir((args.data_dir or Path(scratch)).resolve())
        summary = generate_shop(data, spec, progress=not args.json)
        written = {
            "events_bytes": _bytes_under(data.incoming / "events"),
            "images_bytes": _bytes_under(data.incoming / "images"),
            "event_files": len(list((data.incoming / "events").glob("*.parquet"))),
        }
    usage = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)  # image worker processes, when used
    peak_mib = usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    # CPU seconds: on a shared machine wall time depends on neighbours; CPU time much less so.
    cpu_s = usage.ru_utime + usage.ru_stime + workers.ru_utime + workers.ru_stime
    result = {
        "preset": args.preset,
        "spec": dataclasses.asdict(spec),
        **summary,
        **written,
        "peak_rss_mib": round(peak_mib, 1),
        "cpu_seconds": round(cpu_s, 1),
    }
    text = json.dumps(result, indent=2, default=str)
    if not args.json:
        print(f"generated the {args.preset} shop in {summary['seconds']:.1f} s", file=sys.stderr)
    print(text)


if __name__ == "__main__":
    main()
