# Shared by the launchers (sourced, not run): errors, dry-run printing, CONFIG WORKDIR parsing.
# The sourcing script sets `usage` first.

die() { echo "$0: $*" >&2; echo "$usage" >&2; exit 2; }

quote() {  # one word for a shell command line: as it is when safe, else in single quotes
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+~-]+$ ]]; then printf '%s' "$1"; else printf "'%s'" "${1//\'/\'\\\'\'}"; fi
}

show() {  # one line a shell can run again
  local out="" a
  for a in "$@"; do out+="$(quote "$a") "; done
  echo "${out% }"
}

run() { if [[ $dry == 1 ]]; then show "$@"; else "$@"; fi; }

check_config() {  # CONFIG is file.py[:arg] or a configs/ name[:arg]
  local file=${1%%:*}
  [[ -f "$file" || -f "$repo/$file" || -f "$repo/configs/$file.py" ]] ||
    die "config file '$file' does not exist (from CONFIG '$1'; expected file.py[:arg] or a configs/ name)"
}

config_loads() {  # CONFIG [--config.key=value ...]: load it here, with the project's loader, before anything runs
  # (a bad spec, argument or override: one line and exit 2 now, not a failure on the cluster after the copy and
  # install). Run from the folder CONFIG is relative to. PYTHON: the interpreter (default: this checkout's .venv,
  # else python3); SKIP_CONFIG_CHECK=1 skips it (a machine without the project's requirements).
  [[ ${SKIP_CONFIG_CHECK:-0} == 1 ]] && return 0
  local py=${PYTHON:-} err rc=0 me=${launcher:-$0}
  if [[ -z $py ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then py=$repo/.venv/bin/python; else py=python3; fi
  fi
  # this checkout's infinity_jax first; only stderr is kept (stdout is the config as JSON)
  err=$(PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$py" -m infinity_jax config "$@" 2>&1 >/dev/null) || rc=$?
  (( rc == 0 )) && return 0
  err=${err##*$'\n'}  # the one-line error (after any warnings)
  if (( rc == 2 )); then
    echo "$me: ${err#infinity-jax config: error: }" >&2
  else
    echo "$me: cannot check CONFIG '$1' here: '$py -m infinity_jax config' exited $rc ($err); set PYTHON to a" \
         "python with this project's requirements, or SKIP_CONFIG_CHECK=1" >&2
  fi
  exit 2
}

parse_config_workdir() {  # "$@" -> dry, config, workdir, overrides; $1/$2 of die messages: examples
  local config_hint=$1 workdir_hint=$2 a
  shift 2
  dry=${DRY_RUN:-0} overrides=()
  local pos=()
  for a in "$@"; do
    case "$a" in
      --dry-run) dry=1 ;;
      -h|--help) echo "$usage"; exit 0 ;;
      --config.*) overrides+=("$a") ;;
      -*) die "unknown argument '$a' (overrides look like --config.key=value)" ;;
      *) pos+=("$a") ;;
    esac
  done
  [[ ${#pos[@]} -ge 1 ]] || die "missing CONFIG, e.g. $config_hint"
  [[ ${#pos[@]} -ge 2 ]] || die "missing WORKDIR ($workdir_hint)"
  [[ ${#pos[@]} -eq 2 ]] || die "unexpected argument '${pos[2]}' after CONFIG WORKDIR"
  config=${pos[0]} workdir=${pos[1]}
  check_config "$config"
}
