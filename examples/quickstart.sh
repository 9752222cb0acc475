#!/usr/bin/env bash
# Generate a small chest X-ray set with the bundled model, then load it three ways.
set -euo pipefail
cd "$(dirname "$0")/.."
medisyn generate --manifest prompts/mini_chest_xray.csv --n 30 --dry-run
medisyn generate --manifest prompts/mini_chest_xray.csv --n 30 --out /tmp/cxr-synth --overwrite
python examples/load_dataset.py /tmp/cxr-synth
