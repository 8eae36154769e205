#!/bin/bash
# The psycopg 3 driver test, with Debian's python3 (python3-psycopg); run by
# tests/integration/run.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
exec /usr/bin/python3 test_psycopg.py
