#!/usr/bin/env bash
# Runs every test suite (unit per service, libs, deploy, e2e). pytest's exit 5 ("collected nothing") is a failure
# here: a test run that ran nothing must never pass.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing the run" >&2
  exit 1
fi
exit "$status"
