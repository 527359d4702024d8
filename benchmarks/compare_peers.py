"""Table of a bench_attention.py JSON against the peers of ../shared/PEERS.md (or --peers FILE).

    python3 benchmarks/compare_peers.py benchmarks/results/<run>.json [--bwd] [--same-run]

"best JAX peer" is the max of cuDNN and fa3jax measured in the same run (fa3jax when the run had
``--fa3jax``) and, unless ``--same-run``, PEERS.md's H100 cudnn / fa3jax / pallas figures.
"""

import argparse
import json
import pathlib
import re

ap = argparse.ArgumentParser()
ap.add_argument("result")
ap.add_argument("--peers", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "PEERS.md"))
ap.add_argument("--bwd", action="store_true", help="backward columns instead of forward")
ap.add_argument("--same-run", action="store_true",
                help="compare only with peers measured in the same run (another device than PEERS.md's)")
args = ap.parse_args()

side = 1 if args.bwd else 0
peers = {}
for line in open(args.peers):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 6 or not cells[0].isdigit():
        continue
    key = (int(cells[0]), int(cells[1]), int(cells[2]))
    if key in peers:  # the first (H100) table only
        continue
    vals = []
    for c in cells[3:6]:  # cudnn, fa3jax, pallas
        parts = [p.strip() for p in c.split("/")]
        v = parts[side] if len(parts) > side else ""
        vals.append(float(v) if re.fullmatch(r"[\d.]+", v) else 0.0)
    peers[key] = vals

d = json.load(open(args.result))
tag = "bwd" if args.bwd else "fwd"
has_fa3 = any(f"fa3jax_{tag}_tflops" in r for r in d["rows"])
fa3_hdr = f" fa3jax {tag} (same run) |" if has_fa3 else ""
print(f"| hdim | seq | causal | jax_flash3 {tag} | cuDNN {tag} (same run) | ratio |{fa3_hdr} best JAX peer | vs best |")
print("|---|---|---|---|---|---|---|---|" + ("---|" if has_fa3 else ""))
for r in d["rows"]:
    ours, cud = r.get(f"jf3_{tag}_tflops"), r.get(f"cudnn_{tag}_tflops")
    if ours is None or cud is None:
        continue
    fa3 = r.get(f"fa3jax_{tag}_tflops")
    listed = [] if args.same_run else peers.get((r["hdim"], r["seq"], r["causal"]), [])
    best = max(listed + [cud] + ([fa3] if fa3 else []))
    fa3_cell = (f" {fa3:.0f} |" if fa3 else " — |") if has_fa3 else ""
    print(f"| {r['hdim']} | {r['seq']} | {r['causal']} | {ours:.0f} | {cud:.0f} | {ours / cud:.2f} |{fa3_cell} "
          f"{best:.0f} | {ours / best:.2f} |")
