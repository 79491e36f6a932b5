# Recipes for the cxr-qtl toolkit. `just --list` shows them.

data := "data"
features := "features"
runs := "runs"
name := "demo"

# Synthetic data -> features -> every head of the grid -> report (CPU-friendly sizes).
demo:
    cxrfeat synth {{data}} --n-train 240 --n-val 80 --n-test 120 --n-external 120 --image-size 256
    cxrfeat extract --split train --weights random --views 4 --data-dir {{data}}/nih-cxr-lt --out {{features}}
    cxrfeat extract --split val --weights random --data-dir {{data}}/nih-cxr-lt --out {{features}}
    cxrfeat extract --split test --weights random --data-dir {{data}}/nih-cxr-lt --out {{features}}
    cxrfeat extract --split test --dataset mimic-cxr-lt --weights random --data-dir {{data}}/mimic-cxr-lt --out {{features}}

# The whole test suite (the one slower end-to-end test included).
test *args:
    python -m pytest -n 2 -q {{args}}

# Time training steps of every back end (the paper's Table III) on this machine.
bench *args:
    heads bench {{args}}

lint:
    ruff check cxrfeat heads analysis tests
