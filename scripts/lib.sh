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
