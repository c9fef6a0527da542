#!/usr/bin/env bash
# Shared helpers of the launch scripts (sourced, not run): printing or running commands.
#
# DRY_RUN=1 (or --dry-run) prints every command, shell-quoted and prefixed with "+ ", instead of
# running it; the printed lines can be pasted into a shell as they are.

# run CMD ARGS...: runs a command, or prints it in a dry run.
run() {
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

# die MESSAGE: prints to stderr and exits 2 (a usage error).
die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# require NAME VALUE FLAG: dies unless VALUE is non-empty.
require() {
  [[ -n "$2" ]] || die "$1 is not set: pass $3 or set $1"
}
