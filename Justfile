# Recipes for the cxr-qtl toolkit. `just --list` shows them.

data := "data"
features := "features"
runs := "runs"
name := "demo"

# Demo sizes (override: `just n_train=48 seeds=2 demo`); chosen so the demo ends in minutes on 2 CPU cores.
n_train := "240"
n_val := "80"
n_test := "120"
n_external := "120"
image_size := "256"
views := "4"
tasks := "8,14,19"
seeds := "5"
epochs := "30"
# A grid over the learning rate, one value per model chosen on validation data by `analysis report`
# (lowest mean validation loss; `--select val-auroc` for the other criterion).
lr := "3e-4,1e-3,3e-3"

# Synthetic data -> features -> every head of the grid -> report. Uses microsoft/resnet-50 when it can
# be fetched, else a random-weight ResNet-50, announced loudly and recorded in every store.
demo:
    #!/usr/bin/env bash
    set -euo pipefail
    cxrfeat synth {{data}} --n-train {{n_train}} --n-val {{n_val}} --n-test {{n_test}} --n-external {{n_external}} --image-size {{image_size}}
    weights=$(cxrfeat weights microsoft/resnet-50 --or-random)
    cxrfeat extract --split train --views {{views}} --weights "$weights" --data-dir {{data}}/nih-cxr-lt --out {{features}}
    cxrfeat extract --split val --weights "$weights" --data-dir {{data}}/nih-cxr-lt --out {{features}}
    cxrfeat extract --split test --weights "$weights" --data-dir {{data}}/nih-cxr-lt --out {{features}}
    cxrfeat extract --split test --dataset mimic-cxr-lt --weights "$weights" --data-dir {{data}}/mimic-cxr-lt --out {{features}}
    heads sweep --tasks {{tasks}} --seeds {{seeds}} --features {{features}} --runs {{runs}} --name {{name}} --max-epochs {{epochs}} --lr {{lr}} --feature-norm standardize
    analysis report --runs {{runs}}/{{name}} --features {{features}} --bench "{{justfile_directory()}}/bench" --out reports/{{name}}
    echo "demo done: open reports/{{name}}/report.md"

# The whole test suite (the one slower end-to-end test included).
test *args:
    python -m pytest -n 2 -q {{args}}

# Time training steps of every back end (the paper's Table III) on this machine.
bench *args:
    heads bench {{args}}

lint:
    ruff check cxrfeat heads analysis tests

# The same build runs in `just test` (tests/test_docs.py); `just docs -d DIR` builds elsewhere.
# Build the docs site (docs/, mkdocs.yml) into site/, strictly: broken links and references fail.
docs *args:
    NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict {{args}}
