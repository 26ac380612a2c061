#!/bin/sh
# An installation works: from a DESTDIR install the installed `mop --help`
# runs by its RUNPATH alone, and a program builds and runs through pkg-config
# against the installed libmop (shared: libmop.pc; static: libmop-static.pc,
# with and without --static), as it does from the build tree (uninstalled .pc).
# Usage: check_pkgconfig.sh BUILD_DIR
set -eu
build=$(cd "$1" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/prog.c" <<'C'
#include <libmop/mop.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    mop_model *m = NULL;
    mop_status s = mop_model_load("/nonexistent.gguf", NULL, &m);
    printf("%s %s\n", mop_version(), mop_status_name(s));
    return mop_version_number() == MOP_VERSION_NUMBER && s == MOP_E_IO ? 0 : 1;
}
C
echo "uninstalled:"
PKG_CONFIG_PATH="$build/meson-uninstalled" cc -o "$tmp/u" "$tmp/prog.c" \
  $(PKG_CONFIG_PATH="$build/meson-uninstalled" pkg-config --cflags --libs libmop)
LD_LIBRARY_PATH="$build" "$tmp/u"

echo "installed (DESTDIR):"
meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >/dev/null
pc=$(dirname "$(find "$tmp/root" -name libmop.pc | head -1)")
export PKG_CONFIG_SYSROOT_DIR="$tmp/root" PKG_CONFIG_PATH="$pc"
# Nothing below may lean on the build tree's libraries.
unset LD_LIBRARY_PATH

echo "installed mop --help (its RUNPATH finds the installed libmop.so.0):"
mop=$(find "$tmp/root" -path '*/bin/mop' | head -1)
readelf -d "$mop" | grep -E 'RUNPATH|RPATH'
"$mop" --help >"$tmp/help.txt"
grep -q '^usage: mop ' "$tmp/help.txt" || { echo "unexpected mop --help output"; cat "$tmp/help.txt"; exit 1; }

echo "installed, shared: pkg-config --cflags --libs libmop"
cc -o "$tmp/i" "$tmp/prog.c" $(pkg-config --cflags --libs libmop)
LD_LIBRARY_PATH=$(dirname "$(find "$tmp/root" -name 'libmop.so.0' | head -1)") "$tmp/i"

echo "installed, static: pkg-config --cflags --libs libmop-static"
cc -o "$tmp/s" "$tmp/prog.c" $(pkg-config --cflags --libs libmop-static)
! readelf -d "$tmp/s" | grep -q 'libmop\.so' || { echo "static build needs libmop.so"; exit 1; }
"$tmp/s"

echo "installed, static: pkg-config --static --cflags --libs libmop-static (-static where archives exist)"
cc -o "$tmp/s2" "$tmp/prog.c" $(pkg-config --static --cflags --libs libmop-static)
! readelf -d "$tmp/s2" | grep -q 'libmop\.so' || { echo "static build needs libmop.so"; exit 1; }
"$tmp/s2"
