"""Cross-implementation check: the exported model.conf and policy.csv, evaluated by
pycasbin (PyPI `casbin`) on the request tuples `sekimori policy test --export-casbin`
printed, must give the same allow/deny as sekimori for every test case."""
import json
import pathlib
import sys

import casbin

root = pathlib.Path(sys.argv[1])
enforcers = {}
mismatches = 0
total = 0
for line in (root / "cases.jsonl").read_text(encoding="utf-8").splitlines():
    case = json.loads(line)
    snap = case["snapshot"]
    if snap not in enforcers:
        d = root / str(snap)
        enforcers[snap] = casbin.Enforcer(str(d / "model.conf"), str(d / "policy.csv"))
    got = enforcers[snap].enforce(*case["request"])
    total += 1
    if got != case["allow"]:
        mismatches += 1
        print(f"MISMATCH {case['name']} ({case['location']}): sekimori={case['allow']} pycasbin={got} request={case['request']}")
from importlib.metadata import version
print(f"pycasbin {version('casbin')}: {total - mismatches} of {total} decisions agree across {len(enforcers)} snapshots")
sys.exit(1 if mismatches or total == 0 else 0)
