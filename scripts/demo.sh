#!/usr/bin/env bash
# The demo: build a signed reference bundle from the shipped demo data, then map each of the
# three labs locally, exactly as a maintainer and three lab bioinformaticians would.
set -euo pipefail
OUT=${1:-demo-output}
DATA=data/demo
mkdir -p "$OUT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

echo "== coordinator: signing key and reference bundle"
fedarches-server keygen --out "$OUT/keys" --overwrite
fedarches-server build-reference "$DATA/reference.h5ad" --batch-key batch --labels-key cell_type \
  --signing-key "$OUT/keys/bundle-signing.key" --out "$OUT/reference-bundle" --overwrite --quiet

for lab in lab_a lab_b lab_c; do
  echo "== $lab: local mapping (its cells never leave this process)"
  fedarches-client map "$DATA/$lab.h5ad" --reference "$OUT/reference-bundle" \
    --trust "$OUT/keys/bundle-signing.pub" --lab-name "$lab" --out "$OUT/$lab/annotated.h5ad" \
    --plots-dir "$OUT/$lab/plots" --adapter-out "$OUT/$lab/adapter.npz" \
    --stats-out "$OUT/$lab/label_statistics.json" --quiet
done

python scripts/demo_report.py "$OUT"
