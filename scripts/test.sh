#!/usr/bin/env bash
# Install (with the test extras) and run the whole test suite on the CPU.
NANOGPT_EXTRAS=dev,hf,data source "$(dirname "$0")/setup_env.sh"
python -m pytest -q "$@"
