#!/usr/bin/env bash
# Builds dist/tracecap_<version>_<arch>.deb from this source tree.
#
# The agent lives in its own virtual environment under /opt/tracecap, made with the system Python
# (/usr/bin/python3, 3.11 or newer; the package depends on that exact python3.X, whose stdlib the
# venv uses) and filled from PyPI. /usr/bin/tracecap points into it. The package also ships a
# systemd user unit for all users (enabled for nobody), an example policy that is not in force, and
# maintainer scripts that never enable capture or opt anyone in. See packaging/deb/README.Debian.
#
# Needs: dpkg-deb, python3-venv, network access to PyPI; gcc, python3-dev and linux-libc-dev when a
# dependency (evdev) has no wheel for this machine.
# Environment: TRACECAP_DEB_OUT (output directory, default <repo>/dist), TRACECAP_DEB_PYTHON
# (default /usr/bin/python3), TRACECAP_DEB_COMPRESSION (dpkg-deb -Z: xz, gzip, zstd; default xz).
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=${TRACECAP_DEB_OUT:-$repo/dist}
sys_python=${TRACECAP_DEB_PYTHON:-/usr/bin/python3}
compression=${TRACECAP_DEB_COMPRESSION:-xz}
prefix=/opt/tracecap

die() { echo "build-deb: $*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing; install dpkg-dev (apt-get install dpkg-dev)"
[ -x "$sys_python" ] || die "$sys_python is missing; install python3 (3.11 or newer)"
pyver=$("$sys_python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$sys_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$sys_python is Python $pyver; tracecap needs 3.11 or newer"
python="/usr/bin/python$pyver"
[ -x "$python" ] || python=$(readlink -f "$sys_python")
"$sys_python" -c 'import ensurepip' 2>/dev/null \
  || die "Python's venv support is missing; install python3-venv (apt-get install python3-venv)"

version=$("$sys_python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
          "$repo/pyproject.toml")
arch=$(dpkg --print-architecture)
deb="$out/tracecap_${version}_${arch}.deb"

work=$(mktemp -d "${TMPDIR:-/tmp}/tracecap-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
stage="$work/root"
venv="$stage$prefix"

# 1. A clean copy of the sources, so the build writes nothing into the working tree.
mkdir -p "$work/src"
for item in pyproject.toml README.md LICENSE agent redaction schemas collector packaging; do
  if [ -e "$repo/$item" ]; then cp -a "$repo/$item" "$work/src/"; fi
done
[ -e "$work/src/README.md" ] || echo "tracecap" > "$work/src/README.md"
find "$work/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

# 2. The virtual environment, built in the staging tree, then moved (by rewriting paths) to /opt.
echo "build-deb: virtual environment with $python ($pyver)"
"$python" -m venv "$venv"
PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install -q --no-compile "$work/src"
mkdir -p "$venv/share/tracecap/templates"
cp "$repo"/packaging/templates/* "$venv/share/tracecap/templates/"
find "$venv" -name __pycache__ -type d -prune -exec rm -rf {} +
# pip records where tracecap came from (the temporary source copy): not a place that exists later.
for record in "$venv"/lib/python*/site-packages/tracecap-*.dist-info; do
  rm -f "$record/direct_url.json"
  sed -i '/direct_url\.json/d' "$record/RECORD"
done
# Shebangs, activate scripts, pyvenv.cfg and pip's records name the staging path: point them at /opt.
grep -rlIF "$venv" "$venv" | while IFS= read -r f; do
  sed -i "s|$venv|$prefix|g" "$f"
done
if leftover=$(grep -rlF "$work" "$venv"); then
  die "a path of the build tree is still named in: $leftover"
fi

# 3. Everything around the venv.
install -d "$stage/usr/bin" "$stage/usr/lib/systemd/user" "$stage/etc/tracecap" \
           "$stage/usr/share/doc/tracecap"
ln -s "$prefix/bin/tracecap" "$stage/usr/bin/tracecap"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" - "$stage/usr/lib/systemd/user/tracecap.service" <<'EOF'
import sys
from pathlib import Path
from agent.service import render_systemd_unit
Path(sys.argv[1]).write_text(render_systemd_unit(("/usr/bin/tracecap", "daemon"), {}))
EOF
install -m 0644 "$here/policy.toml.example" "$stage/etc/tracecap/policy.toml.example"
install -m 0644 "$here/deb/README.Debian" "$stage/usr/share/doc/tracecap/README.Debian"
if [ -f "$here/README-install.md" ]; then install -m 0644 "$here/README-install.md" "$stage/usr/share/doc/tracecap/"; fi
cat > "$stage/usr/share/doc/tracecap/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: tracecap

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
 The Python packages in $prefix/lib carry their own licenses in their *.dist-info directories.
EOF

install -d "$stage/DEBIAN"
cp "$here/deb/conffiles" "$stage/DEBIAN/conffiles"
if [ -f "$here/autostart/tracecap-tray.desktop" ]; then
  install -D -m 0644 "$here/autostart/tracecap-tray.desktop" "$stage/etc/xdg/autostart/tracecap-tray.desktop"
  echo /etc/xdg/autostart/tracecap-tray.desktop >> "$stage/DEBIAN/conffiles"
fi
for script in postinst prerm postrm; do
  install -m 0755 "$here/deb/$script" "$stage/DEBIAN/$script"
done
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" \
    -e "s/@PYTHON@/python$pyver/" "$here/deb/control.in" > "$stage/DEBIAN/control"

# 4. Modes: nothing writable by group or others, directories 0755.
chmod -R go-w "$stage"
find "$stage" -type d -exec chmod 0755 {} +

mkdir -p "$out"
dpkg-deb --build --root-owner-group -Z"$compression" "$stage" "$deb" >/dev/null
echo "build-deb: $deb ($(du -h "$deb" | cut -f1), installed $((size / 1024)) MiB)"
