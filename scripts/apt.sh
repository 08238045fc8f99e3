# Sourced by the scripts that install Debian packages on a fresh machine (redis.sh, chromium.sh,
# nginx.sh, image.sh): one way to call apt.
#
#   apt_install PACKAGE...   non-interactive, without recommends (desktop services, printer setup),
#                            waiting for the dpkg lock rather than failing if another install runs
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}
