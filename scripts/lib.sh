# Shared shell helpers for scripts/.

# apt-get update, retried; a partial failure (a mirror mid-sync for one architecture's
# index) is not fatal: apt uses the indexes it has, and the install that follows says
# clearly if a package really cannot be had.
apt_update() {
  local i
  for i in 1 2 3; do
    if apt-get update -qq; then return 0; fi
    echo "apt-get update failed (try $i of 3)" >&2
    sleep 2
  done
  return 0
}

# The Debian mirror this machine's apt uses (deb822 or one-line sources), so private
# configurations fetch from the same package registry.
debian_mirror() {
  local uri
  uri="$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -v -- '-security' | head -n1)"
  [[ -n "$uri" ]] || uri="$(grep -hs '^deb ' /etc/apt/sources.list 2>/dev/null \
          | grep -v -- '-security' | awk '{for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' | head -n1)"
  echo "${uri:-http://deb.debian.org/debian}"
}

# A private apt configuration under DIR: its own sources, lists and cache, for SUITES and
# ARCHES (comma-separated). The machine's apt sources, dpkg architectures and package
# state are never changed. Sets the array PRIVATE_APT to the options to pass to apt-get.
#   private_apt DIR "bookworm" "amd64,arm64"
private_apt() {
  local dir="$1" suites="$2" arches="$3" mirror suite a
  mirror="$(debian_mirror)"
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/etc/preferences.d"
  : > "$dir/etc/sources.list.new"
  for suite in $suites; do
    echo "deb [arch=$arches signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" \
      >> "$dir/etc/sources.list.new"
  done
  mv "$dir/etc/sources.list.new" "$dir/etc/sources.list"
  PRIVATE_APT=(-o "Dir::Etc::sourcelist=$dir/etc/sources.list" -o "Dir::Etc::sourceparts=-"
               -o "Dir::Etc::preferencesparts=$dir/etc/preferences.d"
               -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache"
               -o "Debug::NoLocking=1" -o "APT::Get::List-Cleanup=0"
               -o "APT::Sandbox::User=root")
  IFS=',' read -ra _arches <<<"$arches"
  PRIVATE_APT+=(-o "APT::Architecture=$(dpkg --print-architecture)" -o "APT::Architectures::=$(dpkg --print-architecture)")
  for a in "${_arches[@]}"; do
    PRIVATE_APT+=(-o "APT::Architectures::=$a")
  done
  # Lists younger than a day are reused: CI and repeated runs do not refetch them.
  if [[ -z "$(find "$dir/lists" -maxdepth 1 -name '*Packages*' -mmin -1440 -print -quit 2>/dev/null)" ]]; then
    local i
    for i in 1 2 3; do
      if apt-get "${PRIVATE_APT[@]}" update -qq; then return 0; fi
      echo "apt-get update ($dir) failed (try $i of 3)" >&2
      sleep 2
    done
  fi
}

# Downloads PACKAGES (name[:arch][=version]) with the private configuration into DEST.
private_download() {
  local dest="$1"; shift
  mkdir -p "$dest"
  (cd "$dest" && apt-get "${PRIVATE_APT[@]}" download -qq "$@")
}

# Re-runs the calling script as root: as it is when already root (machines without sudo),
# through sudo otherwise, keeping the caller's Rust toolchain (rustup and cargo live in the
# caller's home). Call as: as_root "$0" "$@"
as_root() {
  [[ "$(id -u)" == 0 ]] && return 0
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$(basename "$1"): needs root (it starts containerd and mounts binfmt_misc), and sudo is not installed: run it as root." >&2
    exit 1
  fi
  exec sudo env "PATH=$PATH" "HOME=$HOME" \
    "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" \
    ${ARCHWATCH_FIXTURES:+"ARCHWATCH_FIXTURES=$ARCHWATCH_FIXTURES"} \
    ${CI:+"CI=$CI"} "$@"
}
