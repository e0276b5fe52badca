#!/usr/bin/env bash
# Install (with the test extras) and run the whole test suite on the CPU.
NANOGPT_EXTRAS=dev,hf,data,serve,fp8 source "$(dirname "$0")/setup_env.sh"
# the page test drives Debian's chromium; install it once where apt-get can (skipped, with a message, elsewhere)
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
        || echo "note: could not install chromium with apt-get; the browser test will be skipped"
fi
python -m pytest -q "$@"
