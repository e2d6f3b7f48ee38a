# Sourced by scripts/test: system programs some tests use when present (the tests that
# need them skip, with the reason, when they are missing). Best effort: only as root with
# apt-get, quiet, and it never fails the run. QUANTSHIFT_NO_SYSTEM_PACKAGES=1 skips it.
# Usage: ensure_system_packages

# "package:program" pairs; a package whose program is on PATH is left alone.
QUANTSHIFT_SYSTEM_PACKAGES=(
  "prometheus:prometheus"   # tests/test_metrics.py: a real Prometheus scrapes /metrics
  "redis-server:redis-server"  # tests/redis_server.py: each test starts its own Redis
)

ensure_system_packages() {
  local pair missing=() log
  [ "${QUANTSHIFT_NO_SYSTEM_PACKAGES:-0}" = "1" ] && return 0
  for pair in "${QUANTSHIFT_SYSTEM_PACKAGES[@]}"; do
    command -v "${pair#*:}" >/dev/null 2>&1 || missing+=("${pair%%:*}")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "quantshift: not installing ${missing[*]} (needs root and apt-get); the tests" \
         "that use it will skip" >&2
    return 0
  fi
  echo "quantshift: installing ${missing[*]} with apt-get" >&2
  log="$(mktemp)"
  # A stale package index is the usual cause of a failed install: update once, retry.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"$log" 2>&1; then
    if ! { apt-get update -qq >>"$log" 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             "${missing[@]}" >>"$log" 2>&1; }; then
      echo "quantshift: could not install ${missing[*]}; the tests that use it will skip" \
           "(apt-get said: $(tail -n 1 "$log"))" >&2
    fi
  fi
  rm -f "$log"
  return 0
}
