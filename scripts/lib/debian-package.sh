# Sourced by the provision-*.sh scripts that take a program from a Debian package:
#
#   provision_debian_package NAME PACKAGE OVERRIDE_VAR FIND_FN [--no-service] [--no-recommends]
#
# prints the program's absolute path on stdout and nothing else: the path in $OVERRIDE_VAR when
# set, else what FIND_FN prints, else installs PACKAGE with apt-get (needs root) and asks FIND_FN
# again. Errors are one line on stderr starting with "provision-NAME:" (the tests quote that line
# as their skip reason). --no-service keeps the package from starting its own daemon during the
# install: the tests run their own, on loopback, with their own data.

provision_die() { echo "provision-$PROVISION_NAME: $*" >&2; exit 1; }

provision_debian_package() {
  PROVISION_NAME="$1"
  local package="$2" override_var="$3" find_fn="$4"
  shift 4
  local no_service=0 apt_opts=(-y -q)
  for opt in "$@"; do
    case "$opt" in
      --no-service) no_service=1 ;;
      --no-recommends) apt_opts+=(--no-install-recommends) ;;
      *) provision_die "unknown option $opt" ;;
    esac
  done

  local override="${!override_var:-}"
  if [[ -n "$override" ]]; then
    [[ -x "$override" ]] || provision_die "$override_var=$override is not executable"
    echo "$override"
    return 0
  fi

  local bin
  bin="$("$find_fn")"
  if [[ -n "$bin" ]]; then
    echo "$bin"
    return 0
  fi

  command -v apt-get >/dev/null 2>&1 || provision_die "$package is not installed and there is no apt-get to install it"
  [[ "$(id -u)" == 0 ]] || provision_die "$package is not installed and installing it needs root (apt-get install $package)"

  # Test files provision in parallel: one install at a time, the others wait and then find it done.
  exec 9>"/tmp/.lastwill-provision-$PROVISION_NAME.lock"
  flock 9
  bin="$("$find_fn")"
  if [[ -z "$bin" ]]; then
    echo "provision-$PROVISION_NAME: installing Debian's $package package" >&2
    export DEBIAN_FRONTEND=noninteractive
    local policy=/usr/sbin/policy-rc.d created_policy=0
    if [[ $no_service == 1 && ! -e "$policy" ]]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
    fi
    local ok=1
    apt-get install "${apt_opts[@]}" "$package" >&2 \
      || { apt-get update -q >&2 && apt-get install "${apt_opts[@]}" "$package" >&2; } \
      || ok=0
    [[ $created_policy == 1 ]] && rm -f "$policy"
    [[ $ok == 1 ]] || provision_die "apt-get install $package failed"
    bin="$("$find_fn")"
  fi
  [[ -n "$bin" ]] || provision_die "$package still not found after installing it"
  echo "$bin"
}
