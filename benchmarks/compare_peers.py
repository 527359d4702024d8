"""Table of bench_attention.py JSON runs against the peers (same run, and ../shared/PEERS.md).

    python3 benchmarks/compare_peers.py benchmarks/results/<run>.json [more runs...] [--bwd] [--same-run]

"best JAX peer" is the max of cuDNN and fa3jax measured in the same run (fa3jax when the run had
``--fa3jax``) and, unless ``--same-run``, PEERS.md's H100 cudnn / fa3jax / pallas figures. With
several runs (same grid), each cell is the mean over the runs and "vs best" is given as the mean
of the per-run ratios with their min-max, so a point is judged against the peers of its own run.
"""

import argparse
import json
import pathlib
import re
import statistics

ap = argparse.ArgumentParser()
ap.add_argument("result", nargs="+")
ap.add_argument("--peers", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "PEERS.md"))
ap.add_argument("--bwd", action="store_true", help="backward columns instead of forward")
ap.add_argument("--same-run", action="store_true",
                help="compare only with peers measured in the same run (another device than PEERS.md's)")
args = ap.parse_args()

side = 1 if args.bwd else 0
peers = {}
if not args.same_run:
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

tag = "bwd" if args.bwd else "fwd"
points = {}  # (hdim, seq, causal) -> list of (ours, cudnn, fa3 or None, ratio vs best)
for path in args.result:
    for r in json.load(open(path))["rows"]:
        ours, cud = r.get(f"jf3_{tag}_tflops"), r.get(f"cudnn_{tag}_tflops")
        if ours is None or cud is None:
            continue
        key = (r["hdim"], r["seq"], r["causal"])
        fa3 = r.get(f"fa3jax_{tag}_tflops")
        best = max(peers.get(key, []) + [cud] + ([fa3] if fa3 else []))
        points.setdefault(key, []).append((ours, cud, fa3, ours / best, best))

has_fa3 = any(p[2] for runs in points.values() for p in runs)
runs_n = max((len(v) for v in points.values()), default=0)
fa3_hdr = f" fa3jax {tag} |" if has_fa3 else ""
print(f"| hdim | seq | causal | jax_flash3 {tag} | cuDNN {tag} | ours / cuDNN |{fa3_hdr} best JAX peer | "
      f"vs best{' (min-max)' if runs_n > 1 else ''} |")
print("|---|---|---|---|---|---|---|---|" + ("---|" if has_fa3 else ""))
mean = statistics.mean
for key in sorted(points):
    runs = points[key]
    ours, cud = mean(p[0] for p in runs), mean(p[1] for p in runs)
    fa3s = [p[2] for p in runs if p[2]]
    ratios = [p[3] for p in runs]
    best = mean(p[4] for p in runs)
    fa3_cell = (f" {mean(fa3s):.0f} |" if fa3s else " — |") if has_fa3 else ""
    spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(runs) > 1 else ""
    print(f"| {key[0]} | {key[1]} | {key[2]} | {ours:.0f} | {cud:.0f} | {mean(p[0] / p[1] for p in runs):.2f} |"
          f"{fa3_cell} {best:.0f} | {mean(ratios):.2f}{spread} |")
