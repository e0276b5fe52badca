#!/usr/bin/env bash
# Install (with the test extras) and run the whole test suite on the CPU.
NANOGPT_EXTRAS=dev,hf,data,serve,lora,eval source "$(dirname "$0")/setup_env.sh"
# torchao (the fp8 extra) in a folder of its own, which only tests/test_fp8.py puts on the path: where it
# can be imported, transformers imports it too, and on a CPU-only torch it logs warnings on every import
python -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target .venv/fp8-extra "torchao>=0.17"
# the page test drives Debian's chromium; install it once where apt-get can (skipped, with a message, elsewhere)
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
        || echo "note: could not install chromium with apt-get; the browser test will be skipped"
fi
python -m pytest -q "$@"
